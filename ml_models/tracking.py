"""Instrument tracking with ultralytics' trackers (ByteTrack, BoT-SORT) over stored detections.

Tracking runs on the detections table rather than on the video, so it needs no second inference
pass and can be re-run with other settings in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ml_models.errors import InputError
from ml_models.tables import INSTRUMENT_USAGE, TRACKS, table_from_rows
from ml_models.ultra import ultralytics_offline

TRACKERS = ("bytetrack", "botsort")


def _tracker(name: str, frame_rate: float) -> Any:
    ultralytics_offline()
    from ultralytics.trackers.bot_sort import BOTSORT
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.utils import YAML, IterableSimpleNamespace
    from ultralytics.utils.checks import check_yaml

    if name not in TRACKERS:
        raise InputError(f"tracker {name!r} is unknown; use one of {', '.join(TRACKERS)}.")
    cfg = IterableSimpleNamespace(**YAML.load(check_yaml(f"{name}.yaml")))
    # Instruments leave and re-enter the view for seconds; keep lost tracks about 4 s.
    cfg.track_buffer = max(int(cfg.track_buffer), int(round(4 * frame_rate)))
    if name == "botsort":
        cfg.gmc_method = "none"  # camera-motion compensation needs the frames; we track from tables
        cfg.with_reid = False
        return BOTSORT(cfg)
    return BYTETracker(cfg)


def track_detections(
    detections: pa.Table,
    frame_size: tuple[int, int],
    sample_fps: float,
    tracker: str = "bytetrack",
) -> pa.Table:
    """Assign track ids to detections, frame by frame in time order.

    Args:
        detections: The detections table (DESIGN.md schema).
        frame_size: (width, height) of the frames the boxes are in.
        sample_fps: Rate at which frames were sampled (the tracker's frame rate).
        tracker: ``bytetrack`` or ``botsort``.

    Returns:
        The tracks table: every detection the tracker confirmed, with ``track_id``.
    """
    from ultralytics.engine.results import Boxes

    trk = _tracker(tracker, sample_fps)
    if detections.num_rows == 0:
        return TRACKS.empty_table()
    df = detections.to_pandas()
    frames = np.sort(df["frame_index"].unique())
    w, h = frame_size
    out_rows: list[dict[str, Any]] = []
    by_frame = dict(tuple(df.groupby("frame_index", sort=True)))
    for frame_index in frames:
        rows = by_frame[frame_index]
        data = rows[["x1", "y1", "x2", "y2", "confidence", "class_id"]].to_numpy(np.float32)
        boxes = Boxes(data, (h, w))
        result = trk.update(boxes)
        for *_box, track_id, _score, _cls, idx in result:
            source = rows.iloc[int(idx)].to_dict()
            # Keep the detector's box (the tracker's is Kalman-smoothed) so tables agree.
            source["track_id"] = int(track_id)
            out_rows.append(source)
    for row in out_rows:
        if isinstance(row.get("mask"), np.ndarray):
            row["mask"] = row["mask"].tolist()
    return table_from_rows(TRACKS, out_rows)


def usage_intervals(tracks: pa.Table, sample_fps: float, max_gap_s: float = 2.0) -> pa.Table:
    """Per-instrument usage intervals: each track's visible stretches, gaps under ``max_gap_s``
    bridged (a tool hidden behind tissue for a moment is still in use)."""
    if tracks.num_rows == 0:
        return INSTRUMENT_USAGE.empty_table()
    df = tracks.to_pandas().sort_values(["track_id", "t_s"])
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
