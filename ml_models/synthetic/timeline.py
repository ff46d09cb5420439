"""What happens when in a synthetic case: segments, phases, instrument visits, smoke, camera jerks.

The whole timeline is drawn up front from the seed (a few hundred small records even for a long
case), so rendering can stream frame by frame and any frame can be rendered without the others.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ml_models.formats.cholec80 import INSTRUMENT_CLASSES

REFERENCE_PATH = Path(__file__).with_name("cholec80_reference.json")

MAX_CONCURRENT_INSTRUMENTS = 3
# Hook and bipolar coagulate tissue, which is what makes surgical smoke.
SMOKE_MAKERS = frozenset({INSTRUMENT_CLASSES.index("hook"), INSTRUMENT_CLASSES.index("bipolar")})


@lru_cache(maxsize=1)
def reference_table() -> dict:
    """The committed Cholec80 aggregate statistics (see ``build_reference.py``)."""
    return json.loads(REFERENCE_PATH.read_text())


@dataclass(frozen=True)
class Segment:
    """A stretch of video of one kind: surgery, out_of_body, black or colour_bars."""

    kind: str
    start: int  # first frame
    end: int  # one past the last frame


@dataclass(frozen=True)
class Visit:
    """One instrument entering the view, working, and leaving: one track."""

    track_id: int
    class_id: int
    start: int
    end: int
    port_angle: float  # direction (radians, screen coordinates) the instrument comes from
    seed: int


@dataclass(frozen=True)
class Interval:
    """A timed happening (smoke puff, fast camera move) in frames, end exclusive."""

    start: int
    end: int
    seed: int = 0


@dataclass
class Timeline:
    """Everything the renderer needs to know about time, in frames."""

    n_frames: int
    fps: int
    segments: list[Segment]
    phases: list[Segment]  # kind = str(phase id)
    visits: list[Visit]
    smoke: list[Interval]
    camera_jerks: list[Interval]
    phase_of_frame: np.ndarray = field(repr=False)  # int8 per frame; tiny next to the video

    def segment_at(self, frame: int) -> Segment:
        """The segment a frame belongs to."""
        for s in self.segments:
            if s.start <= frame < s.end:
                return s
        return self.segments[-1]


# Where instruments come in from (screen angle of the trocar, radians; 0 = from the right).
_PORTS = {
    0: [(-2.4, 0.35), (-0.9, 0.3), (2.6, 0.3)],  # grasper: assistant ports, upper left/right
    1: [(-0.5, 0.35)],
    2: [(-0.45, 0.3)],
    3: [(-0.5, 0.3)],
    4: [(-0.5, 0.3)],
    5: [(-0.2, 0.35), (-1.2, 0.3)],
    6: [(2.9, 0.25)],  # the specimen bag is pulled in from the left
}


def _scaled(frames_total: int, minimum: int, fraction: float, cap_s: float, fps: int) -> int:
    return max(minimum, min(int(cap_s * fps), int(frames_total * fraction)))


def build_timeline(n_frames: int, fps: int, seed: int) -> Timeline:
    """Draw the timeline of a synthetic case.

    Args:
        n_frames: Length of the video in frames.
        fps: Frame rate.
        seed: Random seed; the same seed always gives the same timeline.

    Returns:
        The timeline.
    """
    rng = np.random.default_rng([seed, 1])
    ref = reference_table()
    segments: list[Segment] = []
    # A recorder typically starts on colour bars, then black, then the scope is still in the room.
    bars = _scaled(n_frames, 1, 0.03, 3.0, fps)
    black_a = _scaled(n_frames, 1, 0.015, 1.0, fps)
    oob_a = _scaled(n_frames, 2, 0.06, 12.0, fps)
    oob_b = _scaled(n_frames, 2, 0.05, 10.0, fps)
    black_b = _scaled(n_frames, 1, 0.015, 1.0, fps)
    t = 0
    for kind, n in (("colour_bars", bars), ("black", black_a), ("out_of_body", oob_a)):
        segments.append(Segment(kind, t, t + n))
        t += n
    surgery_start, surgery_end = t, n_frames - oob_b - black_b
    # Phases cover the whole video (Cholec80 labels every frame); extras belong to the first and
    # last phase. Durations are log-normal around the real medians, scaled to the length asked for.
    raw = np.array([math.exp(rng.normal(p["log_mean"], p["log_std"])) for p in ref["phases"]])
    surgery = surgery_end - surgery_start
    lengths = np.maximum(1, np.floor(raw / raw.sum() * surgery)).astype(int)
    lengths[int(np.argmax(lengths))] += surgery - int(lengths.sum())
    phases: list[Segment] = []
    p_start = 0
    for pid in range(len(lengths)):
        end = surgery_start + int(lengths[: pid + 1].sum())
        if pid == len(lengths) - 1:
            end = n_frames
        phases.append(Segment(str(pid), p_start, end))
        p_start = end
    # The scope comes out once to be cleaned, mid gallbladder dissection, when there is time.
    inner: list[Segment] = []
    if n_frames >= 3 * 60 * fps:
        gd = phases[3]
        clean = min(int(8 * fps), max(2, n_frames // 50))
        c0 = (gd.start + gd.end) // 2
        half_s = max(1, fps // 2)
        inner = [
            Segment("surgery", surgery_start, c0),
            Segment("black", c0, c0 + half_s),
            Segment("out_of_body", c0 + half_s, c0 + half_s + clean),
            Segment("black", c0 + half_s + clean, c0 + 2 * half_s + clean),
            Segment("surgery", c0 + 2 * half_s + clean, surgery_end),
        ]
    else:
        inner = [Segment("surgery", surgery_start, surgery_end)]
    segments.extend(inner)
    segments.append(Segment("out_of_body", surgery_end, surgery_end + oob_b))
    segments.append(Segment("black", surgery_end + oob_b, n_frames))
    segments = [s for s in segments if s.end > s.start]

    phase_of_frame = np.zeros(n_frames, np.int8)
    for ph in phases:
        phase_of_frame[ph.start : ph.end] = int(ph.kind)

    # Instrument presence follows a two-state process per class whose stationary presence and
    # dwell time match the per-phase Cholec80 statistics, with time scaled to the video length.
    time_scale = max(0.02, n_frames / fps / ref["median_video_s"])
    step = max(1, fps // 2)
    visits: list[Visit] = []
    active: dict[int, tuple[int, float, int]] = {}  # class -> (start frame, angle, seed)
    track_id = 0
    in_surgery = np.zeros(n_frames, bool)
    for s in segments:
        if s.kind == "surgery":
            in_surgery[s.start : s.end] = True

    def close(c: int, f: int) -> None:
        nonlocal track_id
        st, ang, sd = active.pop(c)
        if f - st >= max(2, fps // 2):
            track_id += 1
            visits.append(Visit(track_id, c, st, f, ang, sd))

    for f in range(0, n_frames, step):
        if not in_surgery[f]:
            for c in list(active):
                close(c, f)
            continue
        prow = ref["phases"][int(phase_of_frame[f])]
        for c, name in enumerate(INSTRUMENT_CLASSES):
            presence = prow["tool_presence"][name]
            dwell_s = max(2.0, prow["tool_mean_dwell_s"][name] * time_scale)
            p_off = min(1.0, step / fps / dwell_s)
            if c in active:
                if rng.random() < p_off or presence == 0:
                    close(c, f)
            elif presence > 0 and len(active) < MAX_CONCURRENT_INSTRUMENTS:
                p_on = min(1.0, presence / max(1e-3, 1 - presence) * p_off)
                if rng.random() < p_on:
                    mu, sd = _PORTS[c][int(rng.integers(len(_PORTS[c])))]
                    active[c] = (f, float(rng.normal(mu, sd)), int(rng.integers(1 << 30)))
    for c in list(active):
        close(c, min(n_frames, int(np.flatnonzero(in_surgery)[-1]) + 1))
    visits.sort(key=lambda v: (v.start, v.class_id))
    visits = [
        Visit(i + 1, v.class_id, v.start, v.end, v.port_angle, v.seed) for i, v in enumerate(visits)
    ]

    smoke: list[Interval] = []
    for v in visits:
        if v.class_id not in SMOKE_MAKERS:
            continue
        f = v.start + fps
        while f < v.end - fps:
            if rng.random() < 0.12:
                n = int(rng.uniform(1.5, 4.0) * fps)
                smoke.append(Interval(f, min(v.end, f + n), int(rng.integers(1 << 30))))
                f += n + fps
            f += fps
    smoke = _merge(smoke)
    jerks: list[Interval] = []
    for s in segments:
        if s.kind != "surgery":
            continue
        f = s.start + fps
        while f < s.end - fps:
            if rng.random() < 0.03:
                n = int(rng.uniform(0.4, 0.9) * fps)
                jerks.append(Interval(f, f + n, int(rng.integers(1 << 30))))
                f += n + 2 * fps
            f += fps
    return Timeline(n_frames, fps, segments, phases, visits, smoke, jerks, phase_of_frame)


def _merge(items: list[Interval]) -> list[Interval]:
    items = sorted(items, key=lambda i: i.start)
    out: list[Interval] = []
    for it in items:
        if out and it.start <= out[-1].end:
            out[-1] = Interval(out[-1].start, max(out[-1].end, it.end), out[-1].seed)
        else:
            out.append(it)
    return out
