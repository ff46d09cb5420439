"""Instrument tracking with ultralytics' trackers (ByteTrack, BoT-SORT) over stored detections.

Tracking runs on the detections table rather than on the video, so it needs no second inference
pass and can be re-run with other settings in seconds. A stored detections file is tracked one
record batch at a time (:func:`track_detections_to_parquet`): memory does not grow with the case.

The online tracker is followed by one offline pass over the whole case (:func:`split_tracks`):
ultralytics' trackers match boxes whatever their class and keep a lost track for seconds, so an
instrument that leaves and another that enters near the same place can share an id. A track is
cut where the detector's class changes for good or where it went unseen for a while.

Before the tracker, each frame keeps one box per instrument (:func:`suppress_duplicates`): the
detector's NMS is per class at IoU 0.7, so a long instrument can also come out as a box on its
tip nested in the box on the whole, or as the same box under a second class, and each such
duplicate would start a track of its own. After the split, a detection the online tracker did
not report (it reports a new track only from its second sample) joins the track beside it in
time (:func:`backfill_tracks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ml_models.errors import InputError
from ml_models.metrics.tracking import box_intersection_matrix, box_iou_matrix
from ml_models.tables import (
    INSTRUMENT_USAGE,
    ROW_GROUP_ROWS,
    TRACKS,
    RowGroupWriter,
    frame_size_metadata,
    table_from_rows,
)
from ml_models.ultra import ultralytics_offline

TRACKERS = ("bytetrack", "botsort")
# The offline pass's two settings, chosen on validation cases (synthetic seeds 2101-2102) and
# only then scored on the held-out seed 2001 (BENCHMARKS.md, "Tracking: offline split"):
# a track unseen for longer than SPLIT_GAP_S resumes as a new track, and a different class that
# the detector keeps for at least SPLIT_MIN_CLASS_S starts a new track (shorter runs are class
# flicker of the same instrument). SPLIT_GAP_S was 2 s until it was chosen again for the
# third-stage detector on thirteen cases (2101-2108, 2001-2005; BENCHMARKS.md, "Tracking: the
# offline gap and score fusion, again"): with the backfill in place, 0.8-1.5 s tracked best.
SPLIT_GAP_S = 1.0
SPLIT_MIN_CLASS_S = 1.0
# The online tracker's own settings, chosen on the same validation cases with the passes
# below in place (BENCHMARKS.md, "Tracking: the tracker's buffer and new-track confidence"): a
# lost track is kept TRACK_BUFFER_S (it was 30 samples, 6 s at 5 fps; the offline split cuts
# sooner anyway), and only a detection of at least NEW_TRACK_CONFIDENCE starts a track (it was
# 0.25, the detector's floor, so a single doubtful box started one). Weaker boxes still
# continue tracks. FUSE_SCORE off matches a track to a box by overlap alone: on (as ultralytics
# ships it), the overlap is scaled by the box's confidence, so a weak box of a tracked instrument
# can fall under the match threshold and the track is lost. Chosen with SPLIT_GAP_S on the same
# thirteen cases, where it added little (IDF1 +0.004 over the gap alone).
TRACK_BUFFER_S = 2.0
NEW_TRACK_CONFIDENCE = 0.4
FUSE_SCORE = False
# Duplicate boxes dropped before tracking, whatever their class: a box overlapping a more
# confident one at IoU above DUPLICATE_IOU, or nested with it (more than DUPLICATE_INSIDE of the
# smaller box's area inside the other). Chosen on the same validation cases (BENCHMARKS.md,
# "Tracking: one box per instrument"); nesting is what matters (IoU alone: validation HOTA
# 0.602, with nesting 0.637).
DUPLICATE_IOU = 0.6
DUPLICATE_INSIDE = 0.9
# A detection the tracker did not report joins a track that has a box at the next or the previous
# sample overlapping it at IoU >= BACKFILL_IOU, repeated up to BACKFILL_S away from the track's
# own rows. Chosen on the same validation cases (BENCHMARKS.md, "Tracking: detections the tracker
# did not report"): validation HOTA rose as the IoU fell from 0.5 (0.650) to 0.1 (0.670) and
# barely below; 0.6 s or more of growth gave the same.
BACKFILL_IOU = 0.1
BACKFILL_S = 1.0


def _tracker(name: str, frame_rate: float) -> Any:
    ultralytics_offline()
    from ultralytics.trackers.bot_sort import BOTSORT
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.utils import YAML, IterableSimpleNamespace
    from ultralytics.utils.checks import check_yaml

    if name not in TRACKERS:
        raise InputError(f"tracker {name!r} is unknown; use one of {', '.join(TRACKERS)}.")
    cfg = IterableSimpleNamespace(**YAML.load(check_yaml(f"{name}.yaml")))
    # The trackers count lost time in updates, one per sampled frame with detections (their
    # own frame rate stays at 30, so the buffer is in samples).
    cfg.track_buffer = max(1, int(round(TRACK_BUFFER_S * frame_rate)))
    cfg.new_track_thresh = NEW_TRACK_CONFIDENCE
    cfg.fuse_score = FUSE_SCORE
    if name == "botsort":
        cfg.gmc_method = "none"  # camera-motion compensation needs the frames; we track from tables
        cfg.with_reid = False
        return BOTSORT(cfg)
    return BYTETracker(cfg)


def suppress_duplicates(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou: float = DUPLICATE_IOU,
    inside: float = DUPLICATE_INSIDE,
) -> np.ndarray:
    """Rows of one frame's boxes to keep: one box per instrument, whatever the class.

    Greedy from the most confident box: a box is dropped when it overlaps a kept box at IoU
    above ``iou``, or when more than ``inside`` of the smaller one's area lies inside the other
    (a part of an instrument detected again within the box on the whole).

    Args:
        boxes: ``(n, 4)`` array of ``x1, y1, x2, y2``.
        scores: ``(n,)`` confidences.
        iou: IoU above which the less confident box is a duplicate.
        inside: Share of the smaller box's area inside the other above which it is one.

    Returns:
        Indices of the kept rows, ascending (the frame's row order is kept).
    """
    n = len(boxes)
    if n < 2:
        return np.arange(n)
    b = np.asarray(boxes, np.float64)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    inter = box_intersection_matrix(b, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = inter / (area[:, None] + area[None, :] - inter)
        # The share of the smaller box inside the larger: a tip box in a less confident box on
        # the whole instrument is a duplicate too (validation HOTA 0.637 against 0.632 when
        # only the less confident box's own share counts).
        covered = inter / np.minimum(area[:, None], area[None, :])
    duplicate = (np.nan_to_num(overlap) > iou) | (np.nan_to_num(covered) > inside)
    keep: list[int] = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if not any(duplicate[i, k] for k in keep):
            keep.append(int(i))
    return np.sort(np.array(keep, np.int64))


# The columns the tracker reads, in the order ultralytics' ``Boxes`` takes them.
_BOX_COLUMNS = ["x1", "y1", "x2", "y2", "confidence", "class_id"]
# What usage intervals need: everything but the polygons, which are most of a tracks table.
USAGE_COLUMNS = ["case_id", "track_id", "class_id", "class_name", "t_s", "confidence"]
# An instrument unseen for up to this long is still in use (hidden behind tissue, out of view for
# a moment). Within a track, usage_intervals bridges such gaps; tracks are cut after SPLIT_GAP_S,
# so across tracks of one class the case analysis bridges them with the same figure.
USAGE_GAP_S = 2.0


def _frames(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Regroup record batches in time order into one table per frame.

    A reader's batches need not end on a frame border, so the last frame of a batch waits until
    the next batch shows whether it goes on.
    """
    carry: list[pa.Table] = []
    last = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        index = table.column("frame_index").to_numpy()
        if last is not None and index[0] < last or np.any(np.diff(index) < 0):
            raise InputError(
                "the detections are not in time order; write them with detect_video(sink=...) "
                "or pass the table to track_detections."
            )
        starts = np.flatnonzero(np.diff(index)) + 1
        bounds = [0, *starts.tolist(), len(index)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            piece = table.slice(a, b - a)
            if carry and index[a] != last:
                yield pa.concat_tables(carry)
                carry = []
            carry.append(piece)
            last = index[a]
    if carry:
        yield pa.concat_tables(carry)


def _track_frames(
    frames: Iterable[pa.Table], frame_size: tuple[int, int], trk: Any
) -> Iterator[pa.Table]:
    """Each frame's detections after :func:`suppress_duplicates`, with the online tracker's
    ``track_id``: 0 where the tracker did not report the detection (the offline pass may still
    give it a track)."""
    from ultralytics.engine.results import Boxes

    w, h = frame_size
    for rows in frames:
        data = np.column_stack([rows.column(c).to_numpy().astype(np.float32) for c in _BOX_COLUMNS])
        keep = suppress_duplicates(data[:, :4], data[:, 4])
        if len(keep) < len(data):
            rows, data = rows.take(pa.array(keep)), data[keep]
        result = trk.update(Boxes(data, (h, w)))
        ids = np.zeros(len(data), np.int64)
        if len(result):
            # The detector's boxes are kept (the tracker's are Kalman-smoothed): tables agree.
            ids[result[:, -1].astype(np.int64)] = result[:, 4].astype(np.int64)
        yield rows.append_column("track_id", pa.array(ids))


# What the offline pass reads of the whole case (about 56 bytes a row).
_OFFLINE_COLUMNS = ["track_id", "t_s", "class_id", "x1", "y1", "x2", "y2"]


def _offline_ids(online: pa.Table, sample_fps: float) -> np.ndarray:
    """Final track ids from the online ones (:data:`_OFFLINE_COLUMNS`): 0 for no track."""
    online_ids = online.column("track_id").to_numpy()
    t_s = online.column("t_s").to_numpy()
    reported = online_ids > 0
    pieces = np.zeros(len(online_ids), np.int64)
    pieces[reported] = split_tracks(
        online_ids[reported],
        t_s[reported],
        online.column("class_id").to_numpy()[reported],
        sample_fps,
    )
    boxes = np.column_stack([online.column(c).to_numpy() for c in ("x1", "y1", "x2", "y2")])
    return backfill_tracks(pieces, t_s, boxes, sample_fps)


def track_detections(
    detections: pa.Table,
    frame_size: tuple[int, int],
    sample_fps: float,
    tracker: str = "bytetrack",
) -> pa.Table:
    """Assign track ids to detections, frame by frame in time order, in memory.

    For whole cases use :func:`track_detections_to_parquet`, which streams (same rows).

    Args:
        detections: The detections table (DESIGN.md schema), in any row order.
        frame_size: (width, height) of the frames the boxes are in.
        sample_fps: Rate at which frames were sampled (the tracker's frame rate).
        tracker: ``bytetrack`` or ``botsort``.

    Returns:
        The tracks table: the detections kept by :func:`suppress_duplicates` that the
        tracker confirmed or :func:`backfill_tracks` placed, with ``track_id`` after the
        offline pass (:func:`split_tracks`, then the backfill).
    """
    trk = _tracker(tracker, sample_fps)  # an unknown tracker is refused even with no detections
    if detections.num_rows == 0:
        return TRACKS.empty_table()
    # Stable sort: rows of one frame keep their order, which decides the tracker's matches.
    ordered = detections.take(pc.sort_indices(detections, [("frame_index", "ascending")]))
    tables = list(_track_frames(_frames(ordered.to_batches()), frame_size, trk))
    if not tables:
        return TRACKS.empty_table()
    online = pa.concat_tables(tables).cast(TRACKS)
    return _with_ids(online, _offline_ids(online, sample_fps))


def _with_ids(table: pa.Table, ids: np.ndarray) -> pa.Table:
    """The rows that have a track (id > 0), with their final ids."""
    table = table.set_column(table.schema.get_field_index("track_id"), "track_id", pa.array(ids))
    return table.filter(pa.array(ids > 0))


@dataclass(frozen=True)
class TrackingRun:
    """What a streamed tracking pass wrote."""

    rows: int
    tracks: int


def track_detections_to_parquet(
    detections: str | Path,
    sink: str | Path,
    frame_size: tuple[int, int],
    sample_fps: float,
    tracker: str = "bytetrack",
) -> TrackingRun:
    """:func:`track_detections` over a detections parquet file, streamed to a tracks file.

    Reads one record batch at a time and writes tracks as they are confirmed, so memory stays
    flat in video length. The file must be in time order, as
    :func:`ml_models.detector.detect_video` (with a sink) and the chunk merge write it.

    Args:
        detections: A detections parquet file, rows in time order.
        sink: The tracks parquet file to write (complete only when this returns).
        frame_size: (width, height) of the frames the boxes are in.
        sample_fps: Rate at which frames were sampled (the tracker's frame rate).
        tracker: ``bytetrack`` or ``botsort``.

    Returns:
        Rows written and distinct track ids.
    """
    trk = _tracker(tracker, sample_fps)
    sink = Path(sink)
    online = sink.with_name(sink.name + ".online")
    try:
        source = pq.ParquetFile(str(detections))
        with RowGroupWriter(online, TRACKS) as writer:
            frames = _frames(source.iter_batches(batch_size=ROW_GROUP_ROWS))
            for table in _track_frames(frames, frame_size, trk):
                writer.write(table)
        # The offline pass needs seven small columns of the whole case, then rewrites the file
        # batch by batch with the new ids.
        first = pq.ParquetFile(str(online))
        ids = _offline_ids(first.read(columns=_OFFLINE_COLUMNS), sample_fps)
        at = 0
        with RowGroupWriter(sink, TRACKS.with_metadata(frame_size_metadata(frame_size))) as final:
            for batch in first.iter_batches(batch_size=ROW_GROUP_ROWS):
                table = pa.Table.from_batches([batch])
                final.write(_with_ids(table, ids[at : at + table.num_rows]))
                at += table.num_rows
    finally:
        online.unlink(missing_ok=True)
    return TrackingRun(rows=final.rows, tracks=len(np.unique(ids[ids > 0])))


def split_tracks(
    track_ids: np.ndarray,
    t_s: np.ndarray,
    class_ids: np.ndarray,
    sample_fps: float,
    max_gap_s: float = SPLIT_GAP_S,
    min_class_s: float = SPLIT_MIN_CLASS_S,
) -> np.ndarray:
    """New track ids for an online tracker's rows, cut where one id covers two instruments.

    A track is cut where it went unseen for more than ``max_gap_s`` and where the detector's
    class changes to one it then keeps for at least ``min_class_s``; a shorter run of another
    class is flicker and stays with the track. New ids count from 1 in order of first
    appearance, so they are stable for a given detections table.

    Args:
        track_ids: The online tracker's id of each row.
        t_s: Each row's time in seconds.
        class_ids: Each row's detected class.
        sample_fps: Rate the frames were sampled at (turns ``min_class_s`` into samples).
        max_gap_s: Longest time unseen that still continues a track.
        min_class_s: Shortest run of a new class that starts a new track.

    Returns:
        The new id of each row, in the rows' order.
    """
    n = len(track_ids)
    pieces = np.zeros(n, np.int64)
    if n == 0:
        return pieces
    min_run = max(1, int(round(min_class_s * sample_fps)))
    order = np.lexsort((t_s, track_ids))  # by track, then time
    bounds = np.flatnonzero(np.diff(track_ids[order])) + 1
    piece = 0
    for rows in np.split(order, bounds):
        cls, ts = class_ids[rows], t_s[rows]
        # Runs of one class. Only a run of at least min_run samples can start a new track; a
        # shorter one is flicker. The track starts as the class of its first long run.
        starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
        lengths = np.diff(np.r_[starts, len(cls)])
        long_runs = starts[lengths >= min_run]
        current = cls[long_runs[0]] if len(long_runs) else cls[0]
        cut = np.zeros(len(rows), bool)
        for start in long_runs:
            if cls[start] != current:
                cut[start] = True
                current = cls[start]
        cut[1:] |= np.diff(ts) > max_gap_s
        cut[0] = True
        pieces[rows] = piece + np.cumsum(cut)
        piece += int(cut.sum())
    return _number_by_first_sight(pieces, np.asarray(t_s))


def backfill_tracks(
    ids: np.ndarray,
    t_s: np.ndarray,
    boxes: np.ndarray,
    sample_fps: float,
    min_iou: float = BACKFILL_IOU,
    max_s: float = BACKFILL_S,
) -> np.ndarray:
    """Give detections without a track (id 0) to the track beside them in time.

    The online tracker reports a new track only once a second sample confirms it, so the first
    sample of every instrument's appearance is lost, and so is a detection it matched to no
    track that sample. A detection without a track joins the track that has a box at the
    previous or the next sample (and none at its own) overlapping it at IoU >= ``min_iou``, the
    best overlap winning; one track takes at most one detection per sample. Repeated, so a
    track grows up to ``max_s`` beyond its own rows. A detection next to no track stays
    without one: the tracker's confirmation is what keeps a single false box out.

    Args:
        ids: Track id per row, 0 for none.
        t_s: Each row's time in seconds.
        boxes: ``(n, 4)`` boxes, ``x1, y1, x2, y2``.
        sample_fps: Rate the frames were sampled at (neighbouring samples are 1 / fps apart).
        min_iou: Smallest overlap with the neighbouring box of the track.
        max_s: How far from its own rows a track may grow.

    Returns:
        The new id of each row (0 where still none), numbered 1.. in order of first sight.
    """
    ids = np.asarray(ids, np.int64).copy()
    k = np.rint(np.asarray(t_s) * sample_fps).astype(np.int64)
    order = np.argsort(k, kind="stable")
    sorted_k = k[order]

    def rows_at(sample: int) -> np.ndarray:
        a, b = np.searchsorted(sorted_k, [sample, sample + 1])
        return order[a:b]

    for _ in range(max(1, int(round(max_s * sample_fps)))):
        claims: dict[tuple[int, int], tuple[float, int]] = {}
        for row in np.flatnonzero(ids == 0):
            sample = int(k[row])
            here = set(ids[rows_at(sample)].tolist())
            near = np.r_[rows_at(sample - 1), rows_at(sample + 1)]
            near = near[(ids[near] > 0) & ~np.isin(ids[near], list(here))]
            if len(near) == 0:
                continue
            overlaps = box_iou_matrix(boxes[row : row + 1], boxes[near])[0]
            best_at = int(np.argmax(overlaps))  # the first of equal overlaps, as before
            best, best_id = float(overlaps[best_at]), int(ids[near[best_at]])
            if best < min_iou:
                continue
            key = (best_id, sample)
            if key not in claims or claims[key][0] < best:
                claims[key] = (best, int(row))
        if not claims:
            break
        for (track, _), (_, row) in claims.items():
            ids[row] = track
    return _number_by_first_sight(ids, np.asarray(t_s))


def _number_by_first_sight(ids: np.ndarray, t_s: np.ndarray) -> np.ndarray:
    """Ids renumbered 1.. by each track's first row in time (ties: the lower old id); 0 stays."""
    out = np.zeros(len(ids), np.int64)
    tracked = ids > 0
    if not tracked.any():
        return out
    old, inverse = np.unique(ids[tracked], return_inverse=True)
    first = np.full(len(old), np.inf)
    np.minimum.at(first, inverse, t_s[tracked])
    rank = np.empty(len(old), np.int64)
    rank[np.lexsort((old, first))] = np.arange(len(old))
    out[tracked] = rank[inverse] + 1
    return out


def usage_intervals(
    tracks: pa.Table, sample_fps: float, max_gap_s: float = USAGE_GAP_S
) -> pa.Table:
    """Per-instrument usage intervals: each track's visible stretches, gaps under ``max_gap_s``
    bridged (a tool hidden behind tissue for a moment is still in use).

    One row per stretch of one track. Gaps between two tracks of the same class are bridged
    later, per class, by the case analysis (``ml_models.analysis.build_analysis``).

    ``tracks`` needs only :data:`USAGE_COLUMNS`; read a stored tracks file with
    ``pq.read_table(path, columns=USAGE_COLUMNS)`` to leave the polygons on disk.
    """
    if tracks.num_rows == 0:
        return INSTRUMENT_USAGE.empty_table()
    df = tracks.select(USAGE_COLUMNS).to_pandas().sort_values(["track_id", "t_s"])
    step = 1.0 / sample_fps
    rows = []
    for track_id, g in df.groupby("track_id", sort=True):
        times = g["t_s"].to_numpy()
        conf = g["confidence"].to_numpy()
        cls = int(g["class_id"].mode().iloc[0])
        name = g.loc[g["class_id"] == cls, "class_name"].iloc[0]
        start = 0
        for i in range(1, len(times) + 1):
            if i == len(times) or times[i] - times[i - 1] > max_gap_s:
                rows.append(
                    {
                        "case_id": g["case_id"].iloc[0],
                        "track_id": int(track_id),
                        "class_id": cls,
                        "class_name": name,
                        "start_s": float(times[start]),
                        "end_s": float(times[i - 1] + step),
                        "detections": int(i - start),
                        "mean_confidence": float(conf[start:i].mean()),
                    }
                )
                start = i
    return table_from_rows(INSTRUMENT_USAGE, rows)


def tracker_config_path(name: str) -> Path:
    """Path of ultralytics' shipped tracker yaml (for model cards and logs)."""
    ultralytics_offline()
    from ultralytics.utils.checks import check_yaml

    return Path(check_yaml(f"{name}.yaml"))
