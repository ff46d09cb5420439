"""Video events: black frames, colour bars, scene cuts, out-of-body frames, burned-in text.

Stretches of the upload that could not be decoded (``decode_gap``) come from the normaliser
(:class:`ml_models.video.TolerantDecoder`) and are turned into events here.

Each detector turns sampled frames into intervals with a score. Black frames and colour bars are
simple image statistics; scene cuts come from PySceneDetect's content detector; out-of-body frames
from a small CNN (:mod:`ml_models.frames`) trained on synthetic operating-room scenes against
in-body frames; burned-in text from strokes that stay put while the scene moves.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import torch

from ml_models.frames import FrameCNN, load_bundle, predict_proba, prepare
from ml_models.tables import EVENTS, table_from_rows
from ml_models.video import VideoSource, open_video, sample_frames

EVENT_KINDS = (
    "black",
    "colour_bars",
    "scene_cut",
    "out_of_body",
    "burned_in_text",
    "decode_gap",
)


@dataclass(frozen=True)
class Event:
    """One interval of one kind."""

    kind: str
    start_s: float
    end_s: float
    score: float
    detail: str = ""


def _black_from_p99(p99: float) -> float:
    return float(np.clip((40.0 - p99) / 25.0, 0.0, 1.0))


def black_score(bgr: np.ndarray) -> float:
    """1.0 for a black frame; falls to 0 as the brightest 1% of pixels lights up."""
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return _black_from_p99(float(np.percentile(gray, 99)))


# 8-bit planar/semi-planar formats whose first plane is the luma (Y) plane.
_LUMA_FIRST = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21"}
)


def frame_black_score(frame: av.VideoFrame, step: int = 4) -> float:
    """:func:`black_score` of a decoded frame, read off its luma plane (no colour conversion).

    Every ``step``-th pixel of the Y plane is enough for a 99th percentile; limited-range
    ("TV") luma is mapped onto 0-255 so the score matches the BGR one.
    """
    name = frame.format.name
    if name not in _LUMA_FIRST:
        gray = frame.reformat(format="gray").to_ndarray()[::step, ::step]
        return _black_from_p99(float(np.percentile(gray, 99)))
    plane = frame.planes[0]
    y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    p99 = float(np.percentile(y[: frame.height : step, : frame.width : step], 99))
    full_range = name.startswith("yuvj") or frame.color_range == 2  # AVCOL_RANGE_JPEG
    return _black_from_p99(p99 if full_range else (p99 - 16.0) * 255.0 / 219.0)


class BlackRuns:
    """Black stretches tested on every decoded frame, so short ones and exact edges are kept.

    At the 2 frames per second the other detectors sample, a black stretch shorter than half a
    second (the flash of black while the scope is pulled out to be cleaned) falls between
    samples or is reported up to half a second off; the luma statistic is cheap enough to run on
    every frame while it is decoded anyway. Memory stays flat: only the open run is kept.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.events: list[Event] = []
        self._start: float | None = None
        self._sum = 0.0
        self._count = 0
        self._last_t: float | None = None
        self._frame_s = 1.0 / 25.0

    def add(self, frame: av.VideoFrame) -> None:
        """Account for one decoded frame (frames in presentation order)."""
        t = float(frame.time or 0.0)
        if self._last_t is not None and t > self._last_t:
            self._frame_s = t - self._last_t
        self._last_t = t
        score = frame_black_score(frame)
        if score >= self.threshold:
            if self._start is None:
                self._start, self._sum, self._count = t, 0.0, 0
            self._sum += score
            self._count += 1
        elif self._start is not None:
            self._close(t)

    def _close(self, end_s: float) -> None:
        self.events.append(Event("black", self._start, end_s, self._sum / self._count))
        self._start = None

    def finish(self) -> list[Event]:
        """Close a run still open at the end of the video; every black event, in time order."""
        if self._start is not None and self._last_t is not None:
            self._close(self._last_t + self._frame_s)
        return self.events


def colour_bars_score(bgr: np.ndarray) -> float:
    """How much the frame looks like test-pattern colour bars (uniform, distinct vertical bands).

    Looks at the top two thirds (SMPTE patterns change below) split into seven columns: each
    column must be flat, and neighbouring columns must differ strongly in colour.
    """
    h, w = bgr.shape[:2]
    top = bgr[: int(h * 0.6)].astype(np.float32)
    bands = np.array_split(top, 7, axis=1)
    inner = [b[:, b.shape[1] // 6 : -max(1, b.shape[1] // 6)] for b in bands]
    stds = np.array([b.reshape(-1, 3).std(axis=0).mean() for b in inner])
    means = np.array([b.reshape(-1, 3).mean(axis=0) for b in inner])
    flat = float((stds < 12).mean())
    steps = np.linalg.norm(np.diff(means, axis=0), axis=1)
    distinct = float((steps > 40).mean())
    saturation = float(np.mean(means.max(axis=1) - means.min(axis=1)) > 60)
    return flat * distinct * (0.5 + 0.5 * saturation)


class TextPersistence:
    """Finds burned-in text: thin high-contrast strokes, in lines, that persist across frames.

    Tissue texture and specular highlights also give strong edges, but they move with the camera;
    an overlay stays in the same pixels, so a map of text-like pixels averaged over a window of
    frames keeps the overlay and loses the scene.

    Every kernel and limit is in pixels of an *analysis level*, not of the video: the frame is
    looked at whole and halved again while the half keeps at least ``min_level_height`` lines,
    and a video under twice that is also looked at doubled (480 lines: 480 and 240; 1080: 1080,
    540 and 270; 240: 480 and 240), because its letters are only a few pixels tall. A line of
    text 6 to about 30 pixels tall at some level is found there, so the same detector finds a
    recorder's overlay at 240p, 480p or 1080p whatever its font size, and boxes found at several
    levels are merged in video pixels.
    """

    def __init__(
        self, window: int = 8, persistence: float = 0.7, min_level_height: int = 200
    ) -> None:
        self.window = window
        self.persistence = persistence
        self.min_level_height = min_level_height
        self.maps: list[list[np.ndarray]] = []  # per level, the last ``window`` text-like maps
        self._shape: tuple[int, int] | None = None
        self.scores: list[float] = []  # the last update's box scores, in its boxes' order

    @staticmethod
    def strokes(bgr: np.ndarray) -> np.ndarray:
        """Binary map of thin high-contrast strokes (letters' outlines among them)."""
        gray = bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        grad = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        return (grad > 90).astype(np.uint8)

    @staticmethod
    def text_like(strokes: np.ndarray) -> np.ndarray:
        """Strokes joined into words and lines."""
        return cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, np.ones((3, 9), np.uint8))

    @staticmethod
    def letters(gray: np.ndarray, box: tuple[int, int, int, int]) -> int:
        """How many separate glyph-sized marks of ink the box holds, in either polarity.

        Ink is what stands out from the local background by more than 60 grey levels (white
        top-hat for light letters, black-hat for dark ones, with a kernel as tall as the line),
        so outlined letters whose edges touch still count one by one. A mark counts when it is
        at least 3 pixels and an eighth of the box tall (not a speck) and at most one and a half
        box heights wide (a letter, or a short word whose small letters run together; not an
        edge). The box may hold several lines, so its height is only an upper bound on a
        letter's.
        """
        x1, y1, x2, y2 = box
        h = y2 - y1
        pad = max(2, h // 2)
        ry1, rx1 = max(0, y1 - pad), max(0, x1 - pad)
        roi = gray[ry1 : y2 + pad, rx1 : x2 + pad]
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (h | 1, h | 1))
        best = 0
        for op in (cv2.MORPH_TOPHAT, cv2.MORPH_BLACKHAT):
            ink = (cv2.morphologyEx(roi, op, k) > 60).astype(np.uint8)
            ink = ink[y1 - ry1 : y2 - ry1, x1 - rx1 : x2 - rx1]
            n, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
            marks = stats[1:][
                (stats[1:, cv2.CC_STAT_HEIGHT] >= max(3, h // 8))
                & (stats[1:, cv2.CC_STAT_WIDTH] <= 1.5 * h)
            ]
            if len(marks) < 3:
                continue
            # Letters sit on a shared baseline; specular glints and vessels do not line up.
            bottoms = marks[:, cv2.CC_STAT_TOP] + marks[:, cv2.CC_STAT_HEIGHT]
            tol = max(1.0, 0.15 * float(np.median(marks[:, cv2.CC_STAT_HEIGHT])))
            peers = (np.abs(bottoms[:, None] - bottoms[None, :]) <= tol).sum(axis=1) - 1
            best = max(best, int((peers >= 2).sum()))
        return best

    def _levels(self, shape: tuple[int, int]) -> list[float]:
        h = shape[0]
        scales = [1.0]
        while h * scales[0] < 2 * self.min_level_height:  # small video: small letters, look closer
            scales.insert(0, scales[0] * 2)
        while h * scales[-1] / 2 >= self.min_level_height:
            scales.append(scales[-1] / 2)
        return scales

    def update(self, bgr: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Add a frame; return the text boxes (x1, y1, x2, y2) persistent over the window.

        Each box's score is in :attr:`scores`: how many letters it holds against the number
        that makes it text, 0.5 at exactly that many and 1.0 at twice as many or more.
        """
        h, w = bgr.shape[:2]
        if self._shape != (h, w):  # first frame, or the size changed: start again
            self._shape = (h, w)
            self._scales = self._levels((h, w))
            self.maps = [[] for _ in self._scales]
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        boxes: list[tuple[int, int, int, int]] = []
        scores: list[float] = []
        for scale, maps in zip(self._scales, self.maps, strict=True):
            level = gray
            if scale != 1.0:
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
                level = cv2.resize(gray, size, interpolation=interpolation)
            maps.append(self.text_like(self.strokes(level)))
            if len(maps) > self.window:
                maps.pop(0)
            if len(maps) < min(3, self.window):
                continue
            fx, fy = w / level.shape[1], h / level.shape[0]
            for (x1, y1, x2, y2), score in self._level_boxes(level, maps):
                boxes.append(
                    (int(x1 * fx), int(y1 * fy), int(np.ceil(x2 * fx)), int(np.ceil(y2 * fy)))
                )
                scores.append(score)
        merged, self.scores = _merge_boxes(boxes, scores)
        return merged

    def _level_boxes(
        self, gray: np.ndarray, maps: list[np.ndarray]
    ) -> list[tuple[tuple[int, int, int, int], float]]:
        """Text boxes of one analysis level, in that level's pixels, with their scores."""
        persistent = (np.mean(maps, axis=0) >= self.persistence).astype(np.uint8)
        persistent = cv2.dilate(persistent, np.ones((3, 7), np.uint8))
        n, _, stats, _ = cv2.connectedComponentsWithStats(persistent, connectivity=8)
        h, w = gray.shape[:2]
        boxes = []
        for i in range(1, n):
            x, y, bw, bh, area = stats[i]
            # A line of text is short and wide; a still instrument edge is rarely both.
            if not (6 <= bh <= 0.12 * h and bw >= max(24, 3 * bh) and bw <= 0.8 * w):
                continue
            if area < 0.3 * bw * bh:  # arcs (the endoscope's circular border) are sparse boxes
                continue
            # Text is many separate letters; a still instrument edge or highlight is a few blobs.
            box = (int(x), int(y), int(x + bw), int(y + bh))
            needed = max(4, bw // (2 * bh))
            letters = self.letters(gray, box)
            if letters < needed:
                continue
            boxes.append((box, min(1.0, letters / (2 * needed))))
        return boxes


def _merge_boxes(
    boxes: list[tuple[int, int, int, int]], scores: list[float]
) -> tuple[list[tuple[int, int, int, int]], list[float]]:
    """Union boxes that overlap (the same line seen at two levels) until none do; a union
    keeps the best score of its parts."""
    merged = sorted(zip(boxes, scores, strict=True))
    changed = True
    while changed:
        changed = False
        out: list[tuple[tuple[int, int, int, int], float]] = []
        for b, score in merged:
            for j, (o, best) in enumerate(out):
                if b[0] <= o[2] and o[0] <= b[2] and b[1] <= o[3] and o[1] <= b[3]:
                    union = (min(b[0], o[0]), min(b[1], o[1]), max(b[2], o[2]), max(b[3], o[3]))
                    out[j] = (union, max(score, best))
                    changed = True
                    break
            else:
                out.append((b, score))
        merged = out
    return [b for b, _ in merged], [score for _, score in merged]


def _intervals(
    kind: str, times: np.ndarray, scores: np.ndarray, step: float, threshold: float = 0.5
) -> list[Event]:
    """Runs of samples scoring at or above ``threshold`` -> events (end = last sample + step)."""
    events = []
    start = None
    for i, s in enumerate(scores):
        if s >= threshold and start is None:
            start = i
        if (s < threshold or i == len(scores) - 1) and start is not None:
            end = i if s < threshold else i + 1
            events.append(
                Event(kind, float(times[start]), float(times[end - 1] + step),
                      float(np.mean(scores[start:end])))
            )  # fmt: skip
            start = None
    return events


class SceneCuts:
    """Hard cuts found by PySceneDetect's ContentDetector, fed from a decode that is already
    running (every picture, in presentation order), so finding cuts costs no decode of its own.

    The pictures reach the detector as PySceneDetect's ``SceneManager`` prepares them (BGR,
    downscaled by its automatic factor with linear interpolation, positions from the
    presentation time relative to the stream's start), so the cuts are the ones it finds reading
    the file itself (a test holds the two to the same list).

    A cut's score is the detector's content change at it against the threshold: 0.5 at the
    threshold, 1.0 at twice it or more (a hard cut between unrelated scenes), so a cut between
    two similar views, the likelier false alarm, scores low.
    """

    def __init__(self, stream: av.VideoStream, threshold: float = 27.0) -> None:
        from scenedetect import ContentDetector
        from scenedetect.common import FrameTimecode, Timecode
        from scenedetect.scene_manager import compute_downscale_factor

        self._timecode = lambda pts, tb: FrameTimecode(
            timecode=Timecode(pts=pts, time_base=tb), fps=self.rate
        )
        self.detector = ContentDetector(threshold=threshold, min_scene_len=5)
        self.rate = Fraction(stream.guessed_rate or stream.average_rate or 25)
        self.factor = compute_downscale_factor(stream.codec_context.width)
        self.start_pts = stream.start_time or 0
        self.stream_time_base = stream.time_base
        self.cuts: list = []
        self.last = None
        self.threshold = threshold
        # Content change per recent picture, keyed by its time: a cut is reported up to the
        # flash filter's buffer behind the picture that caused it, so only that many are kept.
        self._recent: OrderedDict[float, float] = OrderedDict()
        self._change: dict[float, float] = {}

    def add(self, frame: av.VideoFrame) -> None:
        """Account for one decoded picture."""
        if frame.pts is None or not frame.time_base:
            return
        img = frame.to_ndarray(format="bgr24")
        if self.factor > 1.0:
            h, w = img.shape[:2]
            size = (max(1, round(w / self.factor)), max(1, round(h / self.factor)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        start = self.start_pts
        if start and self.stream_time_base != frame.time_base:
            start = int(start * Fraction(self.stream_time_base) / Fraction(frame.time_base))
        self.last = self._timecode(frame.pts - start, Fraction(frame.time_base))
        found = self.detector.process_frame(self.last, img)
        # PySceneDetect keeps a picture's content change only in this attribute (a stats
        # manager would keep every picture's for the whole video); absent, cuts score 1.0.
        change = getattr(self.detector, "_frame_score", None)
        if change is not None:
            self._recent[self.last.seconds] = float(change)
            while len(self._recent) > self.detector.event_buffer_length + 2:
                self._recent.popitem(last=False)
        self._keep(found)

    def _keep(self, cuts: list) -> None:
        for cut in cuts:
            # The picture's own change; failing that, the largest recent one (the one that
            # made the filter report the cut).
            fallback = max(self._recent.values(), default=2 * self.threshold)
            self._change[cut.seconds] = self._recent.get(cut.seconds, fallback)
        self.cuts += cuts

    def finish(self) -> list[Event]:
        """Every cut (one frame long), in time order."""
        if self.last is not None:
            self._keep(self.detector.post_process(self.last))
        frame_s = 1.0 / float(self.rate)
        return [
            Event("scene_cut", cut.seconds, cut.seconds + frame_s, self.score(cut.seconds))
            for cut in sorted(set(self.cuts))
        ]

    def score(self, t_s: float) -> float:
        """The score of a cut at ``t_s`` (see the class)."""
        change = self._change.get(t_s, 2 * self.threshold)
        return round(min(1.0, change / (2 * self.threshold)), 4)


def scene_cuts(video: VideoSource, threshold: float = 27.0) -> list[Event]:
    """Hard cuts of a whole video (:class:`SceneCuts` over one decode of it)."""
    with open_video(video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        cuts = SceneCuts(stream, threshold)
        for frame in container.decode(stream):
            cuts.add(frame)
    return cuts.finish()


# Probability above which a frame is out-of-body. Calibrated on frames no model was trained on:
# the real in-body Cholec80 frames of cholec80-tools-yolo and CholecInstanceSeg score at most
# 0.864 with the default model (a view through the trocar, grey and tissue-free, is the hardest),
# synthetic operating-room frames at least 0.999; 0.95 sits between them (logit 2.9, between
# 1.9 and 6.9). A model file may carry its own calibrated threshold.
OUT_OF_BODY_THRESHOLD = 0.95


@dataclass
class OutOfBodyClassifier:
    """A FrameCNN with two classes: 0 in-body, 1 out-of-body."""

    model: FrameCNN
    threshold: float = OUT_OF_BODY_THRESHOLD

    def save(self, path: str | Path) -> None:
        """Write the weights (and the decision threshold) with a marker of what they are."""
        torch.save(
            {
                "kind": "surg-out-of-body",
                "state": self.model.state_dict(),
                "threshold": float(self.threshold),
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> OutOfBodyClassifier:
        """Read weights written by :meth:`save`."""
        blob = load_bundle(
            path, "surg-out-of-body", "out-of-body model", "`surg train out-of-body`"
        )
        model = FrameCNN(2)
        model.load_state_dict(blob["state"])
        model.eval()
        return cls(model, float(blob.get("threshold", OUT_OF_BODY_THRESHOLD)))

    def scores(
        self, prepared: np.ndarray, black: np.ndarray | None = None, bars: np.ndarray | None = None
    ) -> np.ndarray:
        """Probability of out-of-body per prepared frame.

        Black frames and test patterns (given their scores) are events of their own, not
        operating-room scenes, so they score 0 here.
        """
        if not len(prepared):
            return np.zeros(0)
        p = predict_proba(self.model, prepared)[:, 1]
        for other in (black, bars):
            if other is not None:
                p = np.where(np.asarray(other) >= 0.5, 0.0, p)
        return p


class OutOfBodyScores:
    """Out-of-body scores of sampled frames, computed a batch at a time while the video is
    decoded: only one batch of prepared frames is held (27 kB each), not the whole case's
    (100 MB at 2 fps for 30 minutes, twice that while stacked). The batches are
    :func:`ml_models.frames.predict_proba`'s own, so the scores are those of one whole pass."""

    def __init__(self, model: OutOfBodyClassifier | None, batch_size: int = 256) -> None:
        self.model = model
        self.batch_size = batch_size
        self._pending: tuple[list, list, list] = ([], [], [])
        self._scores: list[np.ndarray] = []

    def add(self, bgr: np.ndarray, black: float, bars: float) -> None:
        """Account for one sampled frame (with its black and colour-bar scores)."""
        if self.model is None:
            return
        for held, value in zip(self._pending, (prepare(bgr), black, bars), strict=True):
            held.append(value)
        if len(self._pending[0]) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        images, black, bars = self._pending
        if images:
            self._scores.append(
                self.model.scores(np.stack(images), np.asarray(black), np.asarray(bars))
            )
        self._pending = ([], [], [])

    def finish(self) -> np.ndarray:
        """Every frame's score, in the order added (empty without a model)."""
        self._flush()
        return np.concatenate(self._scores) if self._scores else np.zeros(0)


@dataclass
class EventScan:
    """Everything one pass over the sampled frames found."""

    events: list[Event] = field(default_factory=list)
    frames: int = 0


def scan_video(
    video: VideoSource,
    out_of_body: OutOfBodyClassifier | None,
    sample_fps: float = 2.0,
    cut_threshold: float = 27.0,
) -> EventScan:
    """Find every event kind in a video in one decode: every picture for black runs and scene
    cuts, ``sample_fps`` of them for colour bars, out-of-body scenes and burned-in text."""
    times, bars = [], []
    oob_scores = OutOfBodyScores(out_of_body)
    text = TextPersistence(window=max(3, int(4 * sample_fps)))
    text_hits: list[tuple[float, list[tuple[int, int, int, int]], list[float]]] = []
    black_runs = BlackRuns()
    with open_video(video) as container:
        cuts = SceneCuts(container.streams.video[0], cut_threshold)

    def every_frame(frame: av.VideoFrame) -> None:
        # Black runs and cuts need every picture: both ride on the sampling pass's decode.
        black_runs.add(frame)
        cuts.add(frame)

    for frame in sample_frames(video, sample_fps, every_frame=every_frame):
        times.append(frame.t_s)
        bars.append(colour_bars_score(frame.bgr))
        oob_scores.add(frame.bgr, black_score(frame.bgr), bars[-1])
        text_hits.append((frame.t_s, text.update(frame.bgr), text.scores))
    t = np.asarray(times)
    step = 1.0 / sample_fps
    scan = EventScan(frames=len(times))
    scan.events += black_runs.finish()
    scan.events += _intervals("colour_bars", t, np.asarray(bars), step)
    oob = oob_scores.finish()
    if out_of_body is not None and len(oob):
        scan.events += _intervals("out_of_body", t, oob, step, out_of_body.threshold)
    scan.events += _text_events(text_hits, step, text.window)
    scan.events += cuts.finish()
    scan.events.sort(key=lambda e: (e.start_s, e.kind))
    return scan


def _text_events(
    hits: list[tuple[float, list[tuple[int, int, int, int]], list[float]]],
    step: float,
    window: int,
) -> list[Event]:
    """Text boxes over time -> one event per overlay and stretch of frames showing it, scored
    by the mean over those frames of the overlay's best box score (:meth:`TextPersistence.update`).

    Boxes are grouped by place first (boxes that touch, within half a line's height, are one
    overlay), so a second overlay elsewhere, or a stray detection over tissue, gets its own box
    instead of stretching one union box across the picture. The persistence window makes text
    visible only after ``window`` frames; each interval is extended back by that much so
    redaction starts on the overlay's first frame.
    """
    times = np.asarray([t for t, _, _ in hits])
    placed = [
        (i, b, score)
        for i, (_, boxes, scores) in enumerate(hits)
        for b, score in zip(boxes, scores, strict=True)
    ]
    groups = _touching_groups([b for _, b, _ in placed])
    events = []
    for members in groups:
        frames: dict[int, list[tuple[int, int, int, int]]] = {}
        strength = np.zeros(len(hits))  # every box scores at least 0.5: a box is a hit
        for k in members:
            i, b, score = placed[k]
            frames.setdefault(i, []).append(b)
            strength[i] = max(strength[i], score)
        for ev in _intervals("burned_in_text", times, strength, step):
            inside = [
                b for i, boxes in frames.items() if ev.start_s <= times[i] < ev.end_s for b in boxes
            ]
            union = [
                min(b[0] for b in inside), min(b[1] for b in inside),
                max(b[2] for b in inside), max(b[3] for b in inside),
            ]  # fmt: skip
            start = max(0.0, ev.start_s - window * step)
            events.append(
                Event("burned_in_text", start, ev.end_s, ev.score, json.dumps({"box": union}))
            )
    events.sort(key=lambda e: e.start_s)
    return events


def _touching_groups(boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """Indices of ``boxes`` grouped so that boxes closer than half a line's height share a group.

    A fixed overlay gives the same few boxes frame after frame, so the distinct boxes are
    compared (not every pair of detections).
    """
    unique = sorted(set(boxes))
    parent = list(range(len(unique)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, p in enumerate(unique):
        for b in range(a + 1, len(unique)):
            q = unique[b]
            gap = min(p[3] - p[1], q[3] - q[1]) / 2
            if (
                p[0] - gap <= q[2] and q[0] - gap <= p[2]
                and p[1] - gap <= q[3] and q[1] - gap <= p[3]
            ):  # fmt: skip
                parent[root(a)] = root(b)
    index = {b: n for n, b in enumerate(unique)}
    groups: dict[int, list[int]] = {}
    for k, b in enumerate(boxes):
        groups.setdefault(root(index[b]), []).append(k)
    return list(groups.values())


def decode_gap_events(gaps: Iterable[dict]) -> list[Event]:
    """Damaged stretches of the upload (``DecodeGap`` as dicts) -> ``decode_gap`` events.

    The normalised video repeats the last good picture over a gap, so the frame detectors see a
    frozen scene there; the event says the pictures were lost, with the damaged packet count.
    """
    return [
        Event(
            "decode_gap",
            float(g["start_s"]),
            float(g["end_s"]),
            1.0,
            json.dumps({"packets": int(g["packets"])}),
        )
        for g in gaps
    ]


def events_table(events: Iterable[Event], case_id: str) -> pa.Table:
    """Events -> the events table of DESIGN.md."""
    return table_from_rows(
        EVENTS,
        [
            {
                "case_id": case_id,
                "kind": e.kind,
                "start_s": round(e.start_s, 3),
                "end_s": round(e.end_s, 3),
                "score": e.score,
                "detail": e.detail,
            }
            for e in events
        ],
    )
