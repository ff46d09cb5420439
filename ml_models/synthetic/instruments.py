"""The seven Cholec80 instruments as drawable shapes, and how they move.

An instrument is a list of primitives (polygons, thick lines, discs) in screen pixels. The same
list is drawn twice: in colour into the frame, and as one instance id into a label map, so the
masks and boxes of the ground truth are exactly the pixels the viewer sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ml_models.synthetic.timeline import Visit

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Prim:
    """One drawing primitive: ``poly`` (pts), ``line`` (pts[0]->pts[1], width) or ``disc``."""

    kind: str
    pts: np.ndarray  # int32 (N, 2)
    colour: Colour
    width: int = 0
    in_mask: bool = True  # details painted on top (holes, glints) do not change the outline


def _rot(v: np.ndarray, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _quad(p: np.ndarray, q: np.ndarray, w0: float, w1: float) -> np.ndarray:
    """A tapered bar from p to q, width w0 at p and w1 at q."""
    d = q - p
    n = np.array([-d[1], d[0]]) / max(1e-6, float(np.hypot(*d)))
    return np.int32(np.round([p + n * w0 / 2, q + n * w1 / 2, q - n * w1 / 2, p - n * w0 / 2]))


# Shaft colour, shaft width (px at 854 wide), tip metal colour.
_STYLE: dict[int, tuple[Colour, float, Colour]] = {
    0: ((48, 46, 44), 34, (165, 168, 172)),  # grasper: black shaft, steel jaws
    1: ((120, 80, 45), 32, (215, 215, 220)),  # bipolar: blue insulation, white tips
    2: ((40, 40, 42), 30, (175, 178, 182)),  # hook: black shaft, bare metal hook
    3: ((45, 44, 42), 32, (150, 175, 190)),  # scissors: curved gold-steel blades
    4: ((155, 155, 160), 38, (175, 178, 185)),  # clipper: metal shaft, wide jaws
    5: ((175, 175, 180), 26, (190, 190, 195)),  # irrigator: plain metal tube
    6: ((205, 210, 212), 4, (225, 228, 228)),  # specimen bag: white plastic
}


def instrument_prims(
    class_id: int, port: np.ndarray, tip: np.ndarray, opening: float, scale: float, t: float
) -> list[Prim]:
    """Shape of one instrument whose shaft runs from the trocar (port) to the tip.

    Args:
        class_id: Cholec80 class id 0-6.
        port: Trocar position in screen pixels (outside the frame).
        tip: Where the shaft ends and the working tip begins, screen pixels.
        opening: Jaw opening in [0, 1].
        scale: Frame width / 854.
        t: Time in seconds (animates the specimen bag's wobble).

    Returns:
        Primitives in drawing order.
    """
    shaft_c, shaft_w, metal = _STYLE[class_id]
    d = tip - port
    d = d / max(1e-6, float(np.hypot(*d)))
    n = np.array([-d[1], d[0]])
    sw = shaft_w * scale
    prims: list[Prim] = []
    if class_id == 6:
        # A white pouch on a drawstring, crumpled: a wobbly polygon with fold lines.
        prims.append(Prim("line", np.int32([port, tip]), (200, 200, 200), max(2, int(4 * scale))))
        ang = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        rad = 1 + 0.12 * np.sin(3 * ang + t * 0.7) + 0.08 * np.sin(5 * ang + 1.3)
        rx, ry = 80 * scale, 58 * scale
        centre = tip + d * rx * 0.9
        local = np.stack([rx * rad * np.cos(ang), ry * rad * np.sin(ang)], 1)
        pts = centre + local[:, :1] * d + local[:, 1:] * n
        prims.append(Prim("poly", np.int32(np.round(pts)), shaft_c))
        for k in (-0.5, 0.0, 0.45):
            a = centre + n * ry * k - d * rx * 0.6
            b = centre + n * ry * (k + 0.15) + d * rx * 0.6
            prims.append(
                Prim("line", np.int32([a, b]), (170, 175, 178), max(1, int(2 * scale)), False)
            )
        return prims
    prims.append(Prim("poly", _quad(port, tip, sw, sw), shaft_c))
    # Cylindrical shading: a lighter band and a glint along the shaft.
    light = tuple(min(255, int(c * 1.6 + 25)) for c in shaft_c)
    prims.append(
        Prim(
            "poly",
            _quad(port + n * sw * 0.18, tip + n * sw * 0.18, sw * 0.28, sw * 0.28),
            light,
            0,
            False,
        )
    )
    prims.append(
        Prim(
            "line",
            np.int32([port + n * sw * 0.22, tip + n * sw * 0.22]),
            (235, 235, 240),
            max(1, int(2 * scale)),
            False,
        )
    )
    if class_id in (1,):
        # Bipolar: a white ring where the insulation ends.
        prims.append(
            Prim("poly", _quad(tip - d * 10 * scale, tip, sw * 1.02, sw * 1.02), (220, 220, 225))
        )
    if class_id == 0:
        for sgn in (-1, 1):
            a = 0.12 + 0.45 * opening
            j = _rot(d, sgn * a)
            base = tip + n * sgn * sw * 0.22
            prims.append(
                Prim("poly", _quad(base, base + j * 62 * scale, 13 * scale, 7 * scale), metal)
            )
            c = base + j * 32 * scale
            prims.append(Prim("disc", np.int32([c]), (60, 60, 65), max(2, int(3.5 * scale)), False))
    elif class_id == 1:
        for sgn in (-1, 1):
            j = _rot(d, sgn * (0.05 + 0.18 * opening))
            base = tip + n * sgn * sw * 0.2
            prims.append(
                Prim("poly", _quad(base, base + j * 52 * scale, 8 * scale, 4 * scale), metal)
            )
    elif class_id == 2:
        rod_end = tip + d * 42 * scale
        prims.append(Prim("line", np.int32([tip, rod_end]), metal, max(3, int(8 * scale))))
        prims.append(
            Prim(
                "line", np.int32([rod_end, rod_end + n * 20 * scale]), metal, max(3, int(7 * scale))
            )
        )
    elif class_id == 3:
        for sgn in (-1, 1):
            a = sgn * (0.04 + 0.3 * opening)
            mid = tip + _rot(d, a) * 28 * scale
            end = mid + _rot(d, a + 0.25) * 28 * scale
            prims.append(Prim("poly", _quad(tip, mid, 12 * scale, 9 * scale), metal))
            prims.append(Prim("poly", _quad(mid, end, 9 * scale, 3 * scale), metal))
    elif class_id == 4:
        for sgn in (-1, 1):
            j = _rot(d, sgn * (0.03 + 0.12 * opening))
            base = tip + n * sgn * sw * 0.25
            prims.append(
                Prim("poly", _quad(base, base + j * 48 * scale, 17 * scale, 13 * scale), metal)
            )
        c = tip + d * 30 * scale
        prims.append(
            Prim(
                "poly",
                _quad(c - n * 10 * scale, c + n * 10 * scale, 7 * scale, 7 * scale),
                (40, 150, 205),
                0,
                False,
            )
        )
    elif class_id == 5:
        prims.append(Prim("disc", np.int32([tip]), shaft_c, max(2, int(sw / 2))))
        for k in (1, 2, 3):
            prims.append(
                Prim(
                    "disc",
                    np.int32([tip - d * k * 16 * scale]),
                    (50, 50, 55),
                    max(2, int(3 * scale)),
                    False,
                )
            )
    return prims


def draw(img: np.ndarray, prims: list[Prim], value: int | None = None) -> None:
    """Draw primitives into an image (their colours) or a label map (one value, outline only).

    Args:
        img: BGR uint8 frame, or a 2-D uint8 label map when ``value`` is given.
        prims: Primitives from :func:`instrument_prims`.
        value: Instance value for a label map; None draws in colour.
    """
    for p in prims:
        if value is not None and not p.in_mask:
            continue
        col = p.colour if value is None else value
        aa = cv2.LINE_AA if value is None else cv2.LINE_8
        if p.kind == "poly":
            cv2.fillPoly(img, [p.pts], col, aa)
        elif p.kind == "line":
            cv2.line(img, tuple(map(int, p.pts[0])), tuple(map(int, p.pts[1])), col, p.width, aa)
        else:
            cv2.circle(img, tuple(map(int, p.pts[0])), p.width, col, -1, aa)


def _smooth(s: float) -> float:
    s = min(1.0, max(0.0, s))
    return s * s * (3 - 2 * s)


class Motion:
    """Smooth trajectory of one visit: enter from the port, wander, leave the way it came."""

    def __init__(self, visit: Visit, fps: int, width: int, height: int) -> None:
        rng = np.random.default_rng(visit.seed)
        self.visit = visit
        self.fps = fps
        centre = np.array([width / 2, height / 2])
        diag = math.hypot(width, height)
        self.dir = np.array([math.cos(visit.port_angle), math.sin(visit.port_angle)])
        self.port = centre + self.dir * diag * 1.1
        self.outside = centre + self.dir * diag * 0.62
        self.work = centre + np.array(
            [rng.uniform(-0.18, 0.18) * width, rng.uniform(-0.15, 0.2) * height]
        )
        # Keep the working tip short of the far side so the instrument does not cross the view.
        self.work -= self.dir * 0.05 * width
        self.amp = np.array([rng.uniform(0.04, 0.12) * width, rng.uniform(0.03, 0.1) * height])
        self.freq = rng.uniform(0.04, 0.25, 4)
        self.phase = rng.uniform(0, 2 * np.pi, 5)
        self.grip = rng.uniform(0.2, 0.8)
        n = visit.end - visit.start
        self.ramp = max(1, min(int(0.8 * fps), n // 4))

    def at(self, frame: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Port, tip and jaw opening at a frame of the visit."""
        t = frame / self.fps
        f, ph = self.freq, self.phase
        wander = (
            self.work
            + self.amp
            * np.array(
                [
                    math.sin(2 * math.pi * f[0] * t + ph[0])
                    + 0.4 * math.sin(2 * math.pi * f[2] * t + ph[2]),
                    math.sin(2 * math.pi * f[1] * t + ph[1])
                    + 0.4 * math.sin(2 * math.pi * f[3] * t + ph[3]),
                ]
            )
            / 1.4
        )
        k_in = _smooth((frame - self.visit.start) / self.ramp)
        k_out = _smooth((self.visit.end - 1 - frame) / self.ramp)
        k = min(k_in, k_out)
        tip = self.outside + (wander - self.outside) * k
        opening = 0.5 + 0.5 * math.sin(2 * math.pi * 0.35 * t + ph[4])
        return self.port, tip, float(opening * self.grip + (1 - self.grip) * 0.2)
