"""Detections and tracks streamed through parquet files equal the in-memory tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_models import tracking
from ml_models.errors import InputError
from ml_models.tables import DETECTIONS, TRACKS, RowGroupWriter, table_from_rows
from ml_models.tracking import (
    USAGE_COLUMNS,
    track_detections,
    track_detections_to_parquet,
    usage_intervals,
)
from surg_assets.models import default_weights_file

FPS = 5.0


def _tracks_as_before_streaming(detections: pa.Table, frame_size: tuple[int, int]) -> pa.Table:
    """The whole-table tracker as it was before streaming (pandas groupby, a row dict per
    detection), with each frame's duplicates suppressed first and the offline pass after: the
    reference the streamed path must reproduce row for row."""
    from ultralytics.engine.results import Boxes

    trk = tracking._tracker("bytetrack", FPS)
    df = detections.to_pandas()
    w, h = frame_size
    out: list[dict[str, Any]] = []
    for _, rows in df.groupby("frame_index", sort=True):
        data = rows[["x1", "y1", "x2", "y2", "confidence", "class_id"]].to_numpy(np.float32)
        keep = tracking.suppress_duplicates(data[:, :4], data[:, 4])
        rows, data = rows.iloc[keep], data[keep]
        reported = {int(r[-1]): int(r[4]) for r in trk.update(Boxes(data, (h, w)))}
        for i in range(len(rows)):
            row = rows.iloc[i].to_dict()
            row["track_id"] = reported.get(i, 0)
            if isinstance(row.get("mask"), np.ndarray):
                row["mask"] = row["mask"].tolist()
            out.append(row)
    online = table_from_rows(TRACKS, out)
    ids = tracking._offline_ids(online, FPS)
    assert (ids[online.column("track_id").to_numpy() == 0] > 0).any()  # the backfill had work
    online = online.set_column(online.schema.get_field_index("track_id"), "track_id", pa.array(ids))
    return online.filter(pa.array(ids > 0))


@pytest.fixture(scope="module")
def detected(synthetic_case: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shipped detector over the synthetic case, once in memory and once to a file."""
    from ml_models.detector import detect_video, load_model

    video = synthetic_case / "video.mp4"
    model = load_model(default_weights_file("instrument_detector"))
    table, run = detect_video(model, video, "c1", "v", sample_fps=FPS)
    sink = tmp_path_factory.mktemp("streamed") / "detections.parquet"
    empty, streamed_run = detect_video(model, video, "c1", "v", sample_fps=FPS, sink=sink)
    assert empty.num_rows == 0
    return {"table": table, "run": run, "file": sink, "streamed_run": streamed_run}


def test_detections_streamed_to_parquet_equal_the_in_memory_table(
    detected: dict[str, Any],
) -> None:
    table, streamed = detected["table"], pq.read_table(detected["file"])
    assert table.num_rows > 20  # the shipped weights find instruments in the lab's video
    assert streamed.schema.equals(DETECTIONS) and streamed.equals(table)
    assert detected["streamed_run"].frame_times == detected["run"].frame_times
    assert detected["streamed_run"].per_class == detected["run"].per_class


def test_streamed_tracks_equal_the_whole_table_tracker_of_before(
    detected: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, size = detected["table"], (426, 240)
    reference = _tracks_as_before_streaming(table, size)
    assert reference.num_rows > 20
    assert track_detections(table, size, FPS).equals(reference)
    # Row groups and reader batches of 5 rows split frames between them: a frame must still
    # reach the tracker whole.
    small_groups = tmp_path / "small-groups.parquet"
    pq.write_table(table, small_groups, row_group_size=5)
    monkeypatch.setattr(tracking, "ROW_GROUP_ROWS", 5)
    sink = tmp_path / "tracks.parquet"
    run = track_detections_to_parquet(small_groups, sink, size, FPS)
    streamed = pq.read_table(sink)
    assert streamed.schema.equals(TRACKS) and streamed.equals(reference)
    assert run.rows == reference.num_rows
    assert run.tracks == len(set(reference.column("track_id").to_pylist()))
    light = pq.read_table(sink, columns=USAGE_COLUMNS)
    assert usage_intervals(light, FPS).equals(usage_intervals(reference, FPS))


def test_the_table_tracker_takes_frames_in_any_order(detected: dict[str, Any]) -> None:
    table = detected["table"]
    frames = table.column("frame_index").to_numpy()
    # Frames last to first, each frame's rows in their order (which the tracker's matching sees).
    backwards = table.take(np.lexsort((np.arange(len(frames)), -frames)))
    assert track_detections(backwards, (426, 240), FPS).equals(
        _tracks_as_before_streaming(table, (426, 240))
    )


def test_a_detections_file_out_of_time_order_is_refused(
    detected: dict[str, Any], tmp_path: Path
) -> None:
    table = detected["table"]
    backwards = tmp_path / "backwards.parquet"
    pq.write_table(table.take(np.arange(table.num_rows)[::-1]), backwards)
    with pytest.raises(InputError, match="not in time order"):
        track_detections_to_parquet(backwards, tmp_path / "t.parquet", (426, 240), FPS)


def test_an_empty_detections_file_gives_an_empty_tracks_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    with RowGroupWriter(empty, DETECTIONS):
        pass
    run = track_detections_to_parquet(empty, tmp_path / "t.parquet", (426, 240), FPS)
    assert run.rows == 0 and pq.read_table(tmp_path / "t.parquet").schema.equals(TRACKS)
