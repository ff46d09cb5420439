"""Pre-rendered backgrounds: the abdomen (three surgical states), the operating room, colour bars.

Everything expensive (noise, tissue shading, highlights, faces) is painted once per video into
images somewhat larger than the frame; each frame then only warps a window out of one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def fractal_noise(
    rng: np.random.Generator, h: int, w: int, octaves: int = 5, base: int = 4
) -> np.ndarray:
    """Smooth value noise in [0, 1] (float32), octaves of upsampled random grids.

    Args:
        rng: Random generator.
        h: Height in pixels.
        w: Width in pixels.
        octaves: Number of octaves; each halves the feature size and the amplitude.
        base: Grid cells across the shorter side at the coarsest octave.

    Returns:
        An (h, w) float32 array.
    """
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    cells = base
    for _ in range(octaves):
        gh = max(2, int(cells * h / min(h, w)) + 1)
        gw = max(2, int(cells * w / min(h, w)) + 1)
        grid = rng.random((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
        cells *= 2
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(1e-6, hi - lo)


def _soft(mask: np.ndarray, k: int) -> np.ndarray:
    k = max(3, k | 1)
    return cv2.GaussianBlur(mask.astype(np.float32), (k, k), 0)


def _blob(
    h: int, w: int, cx: float, cy: float, rx: float, ry: float, ang: float, wobble: np.ndarray
) -> np.ndarray:
    """An ellipse whose edge is pushed in and out by noise (organs are not ellipses)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = np.cos(ang), np.sin(ang)
    dx, dy = xx - cx, yy - cy
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    r = np.sqrt(u * u + v * v)
    return (r < 1.0 + 0.35 * (wobble - 0.5)).astype(np.float32)


def _paint(
    canvas: np.ndarray,
    alpha: np.ndarray,
    colour: tuple[float, float, float],
    tex: np.ndarray,
    contrast: float,
) -> None:
    """Blend a textured colour into the canvas where alpha > 0 (float32 BGR canvas)."""
    shade = (1.0 - contrast / 2) + contrast * tex
    layer = np.stack([shade * colour[0], shade * colour[1], shade * colour[2]], axis=-1)
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += a * layer


@dataclass
class Backdrops:
    """The images a video's frames are cut from."""

    abdomen: list[np.ndarray]  # 0: gallbladder in place, 1: clipped and cut, 2: gallbladder removed
    operating_room: np.ndarray
    face_boxes: list[tuple[float, float, float, float]]  # in operating_room pixels
    colour_bars: np.ndarray
    smoke: np.ndarray  # uint8 density, twice the frame height so it can drift up


def _vessels(
    canvas: np.ndarray,
    rng: np.random.Generator,
    n: int,
    colour: tuple[int, int, int],
    width: tuple[int, int],
    region: tuple[float, float, float, float],
) -> None:
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = region
    layer = np.zeros((h, w), np.uint8)
    for _ in range(n):
        p = np.array([rng.uniform(x0, x1) * w, rng.uniform(y0, y1) * h])
        ang = rng.uniform(0, 2 * np.pi)
        pts = [p.copy()]
        for _ in range(int(rng.integers(6, 14))):
            ang += rng.normal(0, 0.35)
            p = p + 25 * np.array([np.cos(ang), np.sin(ang)]) * (w / 1280)
            pts.append(p.copy())
        cv2.polylines(layer, [np.int32(pts)], False, 255, int(rng.integers(*width)), cv2.LINE_AA)
    a = _soft(layer / 255.0, 5) * 0.75
    for ch in range(3):
        canvas[..., ch] = canvas[..., ch] * (1 - a) + colour[ch] * a


def build_abdomen(rng: np.random.Generator, h: int, w: int) -> list[np.ndarray]:
    """Paint the three states of the surgical field (BGR uint8, h x w).

    Args:
        rng: Random generator (seeded by the caller).
        h: Height of the backdrop.
        w: Width of the backdrop.

    Returns:
        Three images: gallbladder attached; clipped and cut; gallbladder removed (liver bed).
    """
    n = lambda o=5, b=4: fractal_noise(rng, h, w, o, b)  # noqa: E731
    fine = n(6, 24)
    canvas = np.empty((h, w, 3), np.float32)
    # Peritoneum and connective tissue: pink-red background with a fibrous texture.
    canvas[:] = (100, 105, 190)
    _paint(canvas, np.ones((h, w), np.float32), (105, 110, 195), 0.6 * n(6, 8) + 0.4 * fine, 0.6)
    # Whitish strands of connective tissue over everything below the liver.
    _vessels(canvas, rng, 10, (185, 190, 215), (6, 14), (0.0, 0.35, 1.0, 1.0))
    # Fat (omentum) in the lower field: yellow lobules.
    fat_alpha = np.zeros((h, w), np.float32)
    lob = n(4, 45)
    fat_region = _soft(
        (np.mgrid[0:h, 0:w][0] > h * (0.64 + 0.2 * (n(3, 3) - 0.5))).astype(np.float32), 61
    )
    fat_alpha = fat_region * _soft(np.clip((lob - 0.2) * 4, 0, 1), 5) * (0.5 + 0.5 * n(3, 4))
    _paint(canvas, fat_alpha, (105, 195, 232), 0.5 * lob + 0.5 * n(5, 12), 0.35)
    _vessels(canvas, rng, 6, (40, 40, 140), (2, 5), (0.0, 0.55, 1.0, 1.0))
    # Liver: dark red-brown, smooth and glossy, the upper part of the view.
    liver_edge = h * (0.42 + 0.12 * (n(3, 2) - 0.5))
    liver = _soft((np.mgrid[0:h, 0:w][0] < liver_edge).astype(np.float32), 31)
    _paint(canvas, liver, (38, 36, 115), 0.7 * n(5, 6) + 0.3 * fine, 0.5)
    _vessels(canvas, rng, 6, (70, 40, 90), (1, 3), (0.0, 0.0, 1.0, 0.35))
    base = canvas.copy()
    # Gallbladder under the liver edge: pale green-grey, tense and shiny, with its duct.
    gb_cx, gb_cy = w * rng.uniform(0.45, 0.6), h * rng.uniform(0.42, 0.5)
    gb = _soft(_blob(h, w, gb_cx, gb_cy, w * 0.14, h * 0.085, rng.uniform(-0.5, -0.2), n(3, 6)), 21)
    _paint(canvas, gb, (175, 165, 205), 0.6 * n(5, 5) + 0.4 * fine, 0.45)
    gb_box = (gb_cx / w - 0.12, gb_cy / h - 0.07, gb_cx / w + 0.12, gb_cy / h + 0.07)
    _vessels(canvas, rng, 4, (70, 60, 175), (1, 3), gb_box)
    duct_layer = np.zeros((h, w), np.uint8)
    duct_pts = np.int32(
        [
            [gb_cx - w * 0.12, gb_cy + h * 0.06],
            [gb_cx - w * 0.2, gb_cy + h * 0.16],
            [gb_cx - w * 0.24, gb_cy + h * 0.3],
        ]
    )
    cv2.polylines(duct_layer, [duct_pts], False, 255, max(6, w // 90), cv2.LINE_AA)
    duct = _soft(duct_layer / 255.0, 9)
    _paint(canvas, duct, (150, 175, 200), fine, 0.3)
    art_layer = np.zeros((h, w), np.uint8)
    cv2.polylines(
        art_layer, [duct_pts + np.int32([w * 0.035, 0])], False, 255, max(3, w // 200), cv2.LINE_AA
    )
    _paint(canvas, _soft(art_layer / 255.0, 5), (50, 50, 170), fine, 0.3)
    attached = canvas.copy()
    # After clipping and cutting: metal clips across the duct and artery.
    clipped = attached.copy()
    along = (duct_pts[1] - duct_pts[0]).astype(np.float32)
    along /= max(1e-6, float(np.hypot(*along)))
    across = np.array([-along[1], along[0]])
    half = w / 75
    for frac in (0.3, 0.45, 0.6):
        c = duct_pts[0] + frac * (duct_pts[1] - duct_pts[0])
        quad = np.array(
            [
                c - across * half - along * 2.5,
                c + across * half - along * 2.5,
                c + across * half + along * 2.5,
                c - across * half + along * 2.5,
            ]
        )
        cv2.fillPoly(clipped, [np.int32(np.round(quad))], (185, 190, 198), cv2.LINE_AA)
        cv2.line(
            clipped,
            tuple(np.int32(c - across * half)),
            tuple(np.int32(c + across * half)),
            (235, 238, 240),
            1,
            cv2.LINE_AA,
        )
    # Gallbladder removed: the liver bed, raw and coagulated.
    removed = base.copy()
    bed = _soft(_blob(h, w, gb_cx, gb_cy - h * 0.04, w * 0.15, h * 0.07, -0.3, n(3, 6)), 25)
    _paint(removed, bed, (40, 50, 140), 0.5 * fine + 0.5 * n(4, 20), 0.9)
    burn = (n(4, 40) > 0.78).astype(np.float32) * bed
    _paint(removed, _soft(burn, 7), (30, 40, 60), fine, 0.4)
    out = []
    # Wet highlights: a few broad glossy sheens and scattered sharp glints on liver and bladder.
    wet = np.clip(liver + gb, 0, 1)
    sheen = _soft(np.clip((n(3, 12) - 0.76) * 8, 0, 1), 11) * 170
    glint = _soft((n(6, 50) > 0.86).astype(np.float32), 3) * 230
    spec = (sheen + glint) * wet
    shade = 0.6 + 0.6 * n(2, 3)
    for img in (attached, clipped, removed):
        img = img * shade[..., None] + spec[..., None]
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _face(
    img: np.ndarray, cx: int, cy: int, r: int, skin: tuple[int, int, int], rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """A cartoon face with a surgical cap; returns its box (x1, y1, x2, y2)."""
    cv2.ellipse(img, (cx, cy), (r, int(r * 1.25)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    cap = (int(rng.integers(120, 200)), int(rng.integers(120, 160)), int(rng.integers(40, 90)))
    cv2.ellipse(
        img,
        (cx, cy - int(r * 0.55)),
        (int(r * 1.08), int(r * 0.8)),
        0,
        180,
        360,
        cap,
        -1,
        cv2.LINE_AA,
    )
    for sx in (-1, 1):
        e = (cx + sx * int(r * 0.38), cy + int(r * 0.05))
        cv2.ellipse(
            img, e, (int(r * 0.17), int(r * 0.1)), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA
        )
        cv2.circle(img, e, max(2, int(r * 0.07)), (40, 30, 20), -1, cv2.LINE_AA)
        cv2.line(
            img,
            (e[0] - int(r * 0.18), e[1] - int(r * 0.22)),
            (e[0] + int(r * 0.18), e[1] - int(r * 0.25)),
            (40, 40, 60),
            max(2, r // 12),
            cv2.LINE_AA,
        )
    cv2.line(
        img,
        (cx, cy + int(r * 0.05)),
        (cx - int(r * 0.08), cy + int(r * 0.4)),
        tuple(int(c * 0.8) for c in skin),
        max(2, r // 14),
        cv2.LINE_AA,
    )
    cv2.ellipse(
        img,
        (cx, cy + int(r * 0.7)),
        (int(r * 0.3), int(r * 0.1)),
        0,
        0,
        180,
        (60, 60, 150),
        max(2, r // 12),
        cv2.LINE_AA,
    )
    return (cx - r, cy - int(r * 1.25) - int(r * 0.25), cx + r, cy + int(r * 1.25))


def build_operating_room(
    rng: np.random.Generator, h: int, w: int
) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """Paint an operating room with staff (cartoon faces), drapes, lamps and a monitor.

    Args:
        rng: Random generator.
        h: Height of the backdrop.
        w: Width of the backdrop.

    Returns:
        The image (BGR uint8) and the face boxes in its pixels.
    """
    img = np.empty((h, w, 3), np.uint8)
    wall = (fractal_noise(rng, h, w, 3, 3) * 25 + 150).astype(np.uint8)
    img[..., 0] = wall
    img[..., 1] = wall
    img[..., 2] = (wall * 0.85).astype(np.uint8)
    cv2.rectangle(img, (0, int(h * 0.72)), (w, h), (110, 120, 115), -1)
    # Green-blue drapes over the table, lamps, a monitor showing a dark picture.
    cv2.rectangle(img, (int(w * 0.25), int(h * 0.6)), (int(w * 0.8), h), (120, 130, 60), -1)
    for _ in range(2):
        c = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.05, 0.2) * h))
        cv2.circle(img, c, int(h * 0.09), (200, 200, 200), -1, cv2.LINE_AA)
        cv2.circle(img, c, int(h * 0.06), (250, 250, 255), -1, cv2.LINE_AA)
    cv2.rectangle(
        img, (int(w * 0.82), int(h * 0.15)), (int(w * 0.97), int(h * 0.38)), (30, 30, 30), -1
    )
    cv2.rectangle(
        img, (int(w * 0.835), int(h * 0.17)), (int(w * 0.955), int(h * 0.36)), (40, 50, 110), -1
    )
    faces = []
    skins = [(150, 180, 225), (110, 150, 200), (70, 100, 150), (160, 190, 235)]
    xs = np.linspace(0.12, 0.78, 4) + rng.uniform(-0.04, 0.04, 4)
    for i, fx in enumerate(xs):
        cx, cy, r = int(fx * w), int(rng.uniform(0.36, 0.46) * h), int(h * rng.uniform(0.07, 0.09))
        gown = (int(rng.integers(110, 170)), int(rng.integers(110, 150)), int(rng.integers(40, 80)))
        cv2.ellipse(
            img,
            (cx, cy + int(r * 3.2)),
            (int(r * 1.9), int(r * 2.2)),
            0,
            180,
            360,
            gown,
            -1,
            cv2.LINE_AA,
        )
        cv2.rectangle(img, (cx - int(r * 1.9), cy + int(r * 3.2)), (cx + int(r * 1.9), h), gown, -1)
        faces.append(_face(img, cx, cy, r, skins[i % len(skins)], rng))
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return img, faces


def build_colour_bars(h: int, w: int) -> np.ndarray:
    """SMPTE-like colour bars (what many recorders show before the camera signal)."""
    img = np.zeros((h, w, 3), np.uint8)
    bars = [
        (192, 192, 192),
        (0, 192, 192),
        (192, 192, 0),
        (0, 192, 0),
        (192, 0, 192),
        (0, 0, 192),
        (192, 0, 0),
    ]
    bw = w / len(bars)
    for i, c in enumerate(bars):
        cv2.rectangle(img, (int(i * bw), 0), (int((i + 1) * bw), int(h * 0.67)), c, -1)
    low = [
        (192, 0, 0),
        (0, 0, 0),
        (192, 0, 192),
        (0, 0, 0),
        (192, 192, 0),
        (0, 0, 0),
        (192, 192, 192),
    ]
    for i, c in enumerate(low):
        cv2.rectangle(img, (int(i * bw), int(h * 0.67)), (int((i + 1) * bw), int(h * 0.75)), c, -1)
    cv2.rectangle(img, (0, int(h * 0.75)), (int(w * 0.18), h), (106, 76, 0), -1)
    cv2.rectangle(img, (int(w * 0.18), int(h * 0.75)), (int(w * 0.36), h), (255, 255, 255), -1)
    cv2.rectangle(img, (int(w * 0.36), int(h * 0.75)), (int(w * 0.54), h), (134, 0, 59), -1)
    return img


def build_backdrops(seed: int, width: int, height: int) -> Backdrops:
    """Paint every backdrop of one video.

    Args:
        seed: Random seed of the video.
        width: Frame width.
        height: Frame height.

    Returns:
        The backdrops, abdomen and operating room about 1.6 times the frame size so the camera
        can pan and zoom inside them.
    """
    rng = np.random.default_rng([seed, 2])
    bw, bh = int(width * 1.6), int(height * 1.6)
    abdomen = build_abdomen(rng, bh, bw)
    room, faces = build_operating_room(rng, bh, bw)
    smoke = (fractal_noise(rng, 2 * height, width, 4, 3) * 255).astype(np.uint8)
    return Backdrops(abdomen, room, faces, build_colour_bars(height, width), smoke)
