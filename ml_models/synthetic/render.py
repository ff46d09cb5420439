"""Render a synthetic case frame by frame, with the ground truth of every frame.

:class:`SyntheticCase` is deterministic by seed and random-access: frame ``i`` depends only on the
seed, the size, the length and ``i``, never on the frames before it, so rendering streams with
flat memory and a test can render frame 1000 without rendering the first 999.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import cv2
import numpy as np

from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, PHASES
from ml_models.synthetic.instruments import Motion, draw, instrument_prims
from ml_models.synthetic.scene import build_backdrops
from ml_models.synthetic.timeline import build_timeline

# Instances smaller than this many visible pixels are not labelled: nobody could annotate them.
MIN_VISIBLE_PIXELS = 60

_FIRST = ["JANE", "JOHN", "MARIA", "AHMED", "LI", "SOFIA", "PIERRE", "ANNA", "KENJI", "OLGA"]
_LAST = ["DOE", "MUSTERMANN", "DUPONT", "ROSSI", "SMITH", "NOVAK", "TANAKA", "GARCIA", "SILVA"]


@dataclass
class InstrumentTruth:
    """One labelled instrument instance in one frame (pixels of the frame)."""

    track_id: int
    class_id: int
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 with x2 = x1 + width (pixel edges)
    visibility: float  # visible pixels / drawn pixels (occlusion by other tools, the FOV edge)
    polygon: list[tuple[int, int]] | None = None  # outline of the largest visible part

    @property
    def class_name(self) -> str:
        """Cholec80 class name."""
        return INSTRUMENT_CLASSES[self.class_id]


@dataclass
class FrameTruth:
    """Everything true about one frame."""

    frame_index: int
    t_s: float
    phase_id: int
    segment: str  # surgery, out_of_body, black, colour_bars
    instruments: list[InstrumentTruth] = field(default_factory=list)
    faces: list[tuple[int, int, int, int]] = field(default_factory=list)
    text_boxes: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)
    smoke: bool = False
    motion_blur: bool = False

    def to_json(self) -> dict:
        """JSON-serialisable form (one line of ``ground_truth.jsonl``)."""
        return {
            "frame_index": self.frame_index,
            "t_s": round(self.t_s, 4),
            "phase_id": self.phase_id,
            "phase": PHASES[self.phase_id],
            "segment": self.segment,
            "smoke": self.smoke,
            "motion_blur": self.motion_blur,
            "instruments": [
                {
                    "track_id": i.track_id,
                    "class_id": i.class_id,
                    "class_name": i.class_name,
                    "box": list(i.box),
                    "visibility": round(i.visibility, 4),
                    **({"polygon": [list(p) for p in i.polygon]} if i.polygon else {}),
                }
                for i in self.instruments
            ],
            "faces": [list(b) for b in self.faces],
            "text_boxes": [{"role": r, "box": list(b)} for r, b in self.text_boxes],
        }


def _fov_gain(w: int, h: int, vignette: float, radius: float, dx: float) -> np.ndarray:
    """Multiplicative light map: the endoscope's circular field of view, black outside.

    Args:
        w: Frame width.
        h: Frame height.
        vignette: How much darker the rim is than the centre (0..1).
        radius: Circle radius as a fraction of the width (Cholec80 scopes: about 0.36-0.5).
        dx: Horizontal offset of the circle's centre as a fraction of the width.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(xx - w * (0.5 + dx), yy - h / 2) / (radius * w)
    inside = np.clip((1.0 - r) / 0.03, 0, 1)
    gain = (1.0 - vignette * np.clip(r, 0, 1) ** 2.2) * inside
    g = np.clip(gain * 255, 0, 255).astype(np.uint8)
    return cv2.merge([g, g, g])


class SyntheticCase:
    """A synthetic laparoscopic cholecystectomy, rendered on demand.

    Args:
        seconds: Length of the video in seconds.
        seed: Random seed; equal seeds give identical frames and labels.
        size: Frame (width, height); both even.
        fps: Frames per second (integer).
    """

    def __init__(
        self, seconds: float, seed: int, size: tuple[int, int] = (854, 480), fps: int = 25
    ) -> None:
        self.width, self.height = size
        self.fps = int(fps)
        self.seed = int(seed)
        self.n_frames = max(1, int(round(seconds * self.fps)))
        self.scale = self.width / 854
        self.timeline = build_timeline(self.n_frames, self.fps, self.seed)
        self.backdrops = build_backdrops(self.seed, self.width, self.height)
        # Scopes and recorders differ: some show a circle narrower than the frame, some fill it.
        fov = np.random.default_rng([self.seed, 4])
        radius, dx = float(fov.uniform(0.37, 0.55)), float(fov.uniform(-0.03, 0.03))
        self._gain_in = _fov_gain(self.width, self.height, 0.5, radius, dx)
        self._gain_out = _fov_gain(self.width, self.height, 0.3, radius, dx)
        # Four-channel images take OpenCV's vectorised warp path: about twice as fast as BGR.
        self._abdomen_bgra = [cv2.cvtColor(a, cv2.COLOR_BGR2BGRA) for a in self.backdrops.abdomen]
        self._fov255 = np.where(self._gain_out[..., 0] > 0, 255, 0).astype(np.uint8)
        self._labels = np.zeros((self.height, self.width), np.uint8)
        self._scratch = np.zeros((self.height, self.width), np.uint8)
        self._motions = {
            v.track_id: Motion(v, self.fps, self.width, self.height) for v in self.timeline.visits
        }
        rng = np.random.default_rng([self.seed, 3])
        self.patient_name = f"{_LAST[rng.integers(len(_LAST))]}^{_FIRST[rng.integers(len(_FIRST))]}"
        self.patient_id = f"{int(rng.integers(10**7, 10**8))}"
        y, m, d = int(rng.integers(1935, 2005)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        self.birth_date = f"{y}-{m:02d}-{d:02d}"
        self.start_time = datetime(2024, 1, 1, 7, 30) + timedelta(
            days=int(rng.integers(0, 700)), minutes=int(rng.integers(0, 600))
        )
        self._cam = rng.uniform(0, 2 * np.pi, 8)
        self._cam_f = rng.uniform(0.01, 0.05, 4)
        # Visits sorted by start let each frame find its active visits without scanning them all.
        self._visits = sorted(self.timeline.visits, key=lambda v: v.start)
        self._smoke = {s.start: s for s in self.timeline.smoke}

    # -- camera -----------------------------------------------------------------------------
    def _camera(self, frame: int, room: bool) -> tuple[np.ndarray, float, np.ndarray]:
        """Affine map (output -> backdrop), zoom, and screen velocity (px/frame) for blur."""
        bh, bw = self.backdrops.abdomen[0].shape[:2]
        t = frame / self.fps
        p, f = self._cam, self._cam_f
        speed = 2.5 if room else 1.0
        zoom = 1.12 + 0.12 * math.sin(2 * math.pi * f[2] * t + p[2])
        max_dx = (bw - self.width / zoom) / 2 * 0.85
        max_dy = (bh - self.height / zoom) / 2 * 0.85
        ox = math.sin(2 * math.pi * f[0] * speed * t + p[0]) * 0.7 + 0.3 * math.sin(
            2 * math.pi * 0.11 * t + p[4]
        )
        oy = math.sin(2 * math.pi * f[1] * speed * t + p[1]) * 0.7 + 0.3 * math.sin(
            2 * math.pi * 0.07 * t + p[5]
        )
        jx = jy = 0.0
        for j in self.timeline.camera_jerks:
            if j.start <= frame < j.end:
                s = (frame - j.start) / (j.end - j.start)
                ang = (j.seed % 360) * math.pi / 180
                jx, jy = (
                    0.35 * math.sin(math.pi * s) * math.cos(ang),
                    0.35 * math.sin(math.pi * s) * math.sin(ang),
                )
                break
        cx = bw / 2 + max_dx * max(-1.0, min(1.0, ox * 0.8 + jx))
        cy = bh / 2 + max_dy * max(-1.0, min(1.0, oy * 0.8 + jy))
        th = 0.06 * math.sin(2 * math.pi * f[3] * t + p[3])
        c, s = math.cos(th) / zoom, math.sin(th) / zoom
        w2, h2 = self.width / 2, self.height / 2
        m = np.array([[c, -s, cx - (c * w2 - s * h2)], [s, c, cy - (s * w2 + c * h2)]], np.float32)
        return m, zoom, np.array([cx, cy])

    def _velocity(self, frame: int, room: bool) -> np.ndarray:
        if frame == 0:
            return np.zeros(2)
        (_, z, a), (_, _, b) = self._camera(frame, room), self._camera(frame - 1, room)
        return (a - b) * z

    # -- frames -----------------------------------------------------------------------------
    def render(self, frame: int, polygons: bool = False) -> tuple[np.ndarray, FrameTruth]:
        """Render one frame.

        Args:
            frame: Frame index, 0-based.
            polygons: Also trace instance outlines (slower; done for sampled frames).

        Returns:
            The BGR uint8 frame and its ground truth.
        """
        tl = self.timeline
        seg = tl.segment_at(frame).kind
        phase = int(tl.phase_of_frame[frame])
        truth = FrameTruth(frame, frame / self.fps, phase, seg)
        w, h = self.width, self.height
        if seg == "colour_bars":
            return self.backdrops.colour_bars.copy(), truth
        if seg == "black":
            img = np.zeros((h, w, 3), np.uint8)
        elif seg == "out_of_body":
            img = self._render_room(frame, truth)
        else:
            img = self._render_abdomen(frame, truth, polygons)
        self._overlay(img, frame, truth)
        return img, truth

    def _render_room(self, frame: int, truth: FrameTruth) -> np.ndarray:
        m, _, _ = self._camera(frame, room=True)
        img = cv2.warpAffine(
            self.backdrops.operating_room,
            m,
            (self.width, self.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
        v = self._velocity(frame, room=True)
        k = int(min(21, abs(v[0]) * 0.8)), int(min(21, abs(v[1]) * 0.8))
        if max(k) >= 3:
            img = cv2.blur(img, (max(1, k[0]), max(1, k[1])))
        img = cv2.multiply(img, self._gain_out, scale=1 / 255)
        full = np.vstack([m, [0, 0, 1]])
        inv = np.linalg.inv(full)[:2]
        for x1, y1, x2, y2 in self.backdrops.face_boxes:
            corners = (
                np.array([[x1, y1, 1], [x2, y1, 1], [x1, y2, 1], [x2, y2, 1]], np.float64) @ inv.T
            )
            bx1, by1 = np.floor(corners.min(0)).astype(int)
            bx2, by2 = np.ceil(corners.max(0)).astype(int)
            area = max(1, (bx2 - bx1) * (by2 - by1))
            cx1, cy1, cx2, cy2 = (
                max(0, bx1),
                max(0, by1),
                min(self.width, bx2),
                min(self.height, by2),
            )
            if cx2 > cx1 and cy2 > cy1 and (cx2 - cx1) * (cy2 - cy1) >= 0.3 * area:
                truth.faces.append((int(cx1), int(cy1), int(cx2), int(cy2)))
        return img

    def _render_abdomen(self, frame: int, truth: FrameTruth, polygons: bool) -> np.ndarray:
        tl = self.timeline
        phase = truth.phase_id
        # Scene state follows the operation: clips from clipping-and-cutting on, an empty
        # gallbladder bed once the gallbladder is detached (packaging and later).
        state = 0 if phase < 2 else (1 if phase < 4 else 2)
        if phase == 2:
            ph = tl.phases[2]
            state = 1 if frame >= (ph.start + ph.end) // 2 else 0
        m, _, _ = self._camera(frame, room=False)
        img = cv2.warpAffine(
            self._abdomen_bgra[state],
            m,
            (self.width, self.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        active = [v for v in self._visits if v.start <= frame < v.end]
        labels = self._labels
        labels[:] = 0
        shapes = []
        for k, v in enumerate(active, start=1):
            port, tip, opening = self._motions[v.track_id].at(frame)
            prims = instrument_prims(v.class_id, port, tip, opening, self.scale, frame / self.fps)
            # Soft shadow of the instrument on the tissue (the light sits at the camera).
            shadow = [p for p in prims if p.in_mask]
            self._shadow(img, shadow)
            draw(img, prims)
            draw(labels, prims, k)
            shapes.append((k, v, prims))
        smoke = self._smoke_at(frame)
        if smoke is not None:
            img = self._apply_smoke(img, frame, smoke)
            truth.smoke = True
        v = self._velocity(frame, room=False)
        k = int(min(25, abs(v[0]) * 0.9)), int(min(25, abs(v[1]) * 0.9))
        if max(k) >= 3:
            img = cv2.blur(img, (max(1, k[0]), max(1, k[1])))
            truth.motion_blur = True
        img = cv2.multiply(img, self._gain_in, scale=1 / 255)
        for k, v, prims in shapes:
            # Work inside the instrument's bounding rectangle: full-frame passes per instrument
            # would cost more than all the drawing.
            pts = np.concatenate([p.pts for p in prims])
            pad = max(p.width for p in prims) + 2
            x0, y0 = max(0, int(pts[:, 0].min()) - pad), max(0, int(pts[:, 1].min()) - pad)
            x1 = min(self.width, int(pts[:, 0].max()) + pad + 1)
            y1 = min(self.height, int(pts[:, 1].max()) + pad + 1)
            if x1 <= x0 or y1 <= y0:
                continue
            scratch = self._scratch
            draw(scratch, prims, 1)
            drawn = cv2.countNonZero(scratch[y0:y1, x0:x1])
            scratch[y0:y1, x0:x1] = 0
            visible = cv2.bitwise_and(
                cv2.compare(labels[y0:y1, x0:x1], k, cv2.CMP_EQ), self._fov255[y0:y1, x0:x1]
            )
            n_vis = cv2.countNonZero(visible)
            if n_vis < MIN_VISIBLE_PIXELS * self.scale**2:
                continue
            bx, by, bw, bh = cv2.boundingRect(visible)
            box = (x0 + bx, y0 + by, x0 + bx + bw, y0 + by + bh)
            poly = None
            if polygons:
                contours, _ = cv2.findContours(
                    visible, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0)
                )
                big = cv2.approxPolyDP(max(contours, key=cv2.contourArea), 1.0, True)
                if len(big) >= 3:
                    poly = [(int(x), int(y)) for x, y in big[:, 0, :]]
            truth.instruments.append(
                InstrumentTruth(v.track_id, v.class_id, box, n_vis / max(1, drawn), poly)
            )
        return img

    def _shadow(self, img: np.ndarray, prims: list) -> None:
        off = np.int32([int(9 * self.scale), int(12 * self.scale)])
        pts = np.concatenate([p.pts for p in prims if p.kind == "poly"]) + off if prims else None
        if pts is None or len(pts) < 3:
            return
        x, y, bw, bh = cv2.boundingRect(pts)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + bw), min(self.height, y + bh)
        if x1 <= x0 or y1 <= y0:
            return
        roi = img[y0:y1, x0:x1]
        mask = np.zeros(roi.shape[:2], np.uint8)
        for p in prims:
            if p.kind == "poly":
                cv2.fillPoly(mask, [p.pts + off - [x0, y0]], 255)
        mask = cv2.blur(mask, (9, 9))
        inv = cv2.merge([255 - (mask >> 1)] * 3)
        img[y0:y1, x0:x1] = cv2.multiply(roi, inv, scale=1 / 255)

    def _smoke_at(self, frame: int):
        for s in self.timeline.smoke:
            if s.start <= frame < s.end:
                return s
        return None

    def _apply_smoke(self, img: np.ndarray, frame: int, s) -> np.ndarray:
        u = (frame - s.start) / max(1, s.end - s.start)
        a = 0.75 * math.sin(math.pi * u) ** 0.6
        drift = int((frame - s.start) * 2 * self.scale) % self.height
        k = cv2.convertScaleAbs(self.backdrops.smoke[drift : drift + self.height], alpha=a)
        k3 = cv2.merge([k, k, k])
        keep = cv2.multiply(img, cv2.bitwise_not(k3), scale=1 / 255)
        return cv2.add(keep, cv2.multiply(np.full_like(img, 215), k3, scale=1 / 255))

    def _overlay(self, img: np.ndarray, frame: int, truth: FrameTruth) -> None:
        """Burn in the recorder's patient overlay (fake name, id, birth date, clock)."""
        now = self.start_time + timedelta(seconds=frame / self.fps)
        lines = [
            ("patient_name", self.patient_name),
            ("patient_id", f"ID {self.patient_id}  DOB {self.birth_date}"),
            ("datetime", now.strftime("%Y-%m-%d %H:%M:%S")),
        ]
        fs = 0.45 * self.scale
        th = max(1, int(round(self.scale)))
        x, y = int(12 * self.scale), int(8 * self.scale)
        for role, text in lines:
            (tw, tht), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs, th)
            y += tht + base + int(4 * self.scale)
            # Outline by offset copies: a thicker stroke would also advance glyphs further.
            for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                cv2.putText(
                    img,
                    text,
                    (x + dx, y + dy),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    fs,
                    (0, 0, 0),
                    th,
                    cv2.LINE_AA,
                )
            cv2.putText(
                img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, fs, (235, 235, 235), th, cv2.LINE_AA
            )
            truth.text_boxes.append((role, (x - 2, y - tht - 2, x + tw + 2, y + base + 2)))

    def frames(self, polygons_every: int = 0) -> Iterator[tuple[np.ndarray, FrameTruth]]:
        """Render every frame in order.

        Args:
            polygons_every: Trace instance polygons on every Nth frame (0: never).

        Yields:
            (frame, truth) pairs.
        """
        for i in range(self.n_frames):
            yield self.render(i, polygons=bool(polygons_every) and i % polygons_every == 0)
