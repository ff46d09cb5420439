"""Scale-out of one case: detection fanned out over chunks equals one whole-video pass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from ml_models.chunking import ChunkDetections, merge_chunks, plan_chunks
from ml_models.tables import DETECTIONS, table_from_rows
from resources.settings import load_settings
from surg_assets.assets.ingest import raw_video, transcoded_video
from surg_assets.assets.perception import instrument_detections, instrument_tracks, read_table
from surg_assets.intake import ingest_file
from surg_assets.settings import build_resources, video_limits_from_env
from surg_assets.step_io import STEP_OUTPUTS_PREFIX


@pytest.fixture(scope="module")
def long_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """75 s of the lab's laparoscopy: three chunks of 0.5 min (30 s, 30 s, 15 s)."""
    from ml_models.synthetic import generate

    folder = tmp_path_factory.mktemp("long-case")
    generate(folder, minutes=1.25, seed=11, size=(426, 240))
    return folder / "video.mp4"


def _detect(instance: dg.DagsterInstance, resources: dict, case_id: str, minutes: float):
    return dg.materialize(
        [instrument_detections, instrument_tracks],
        instance=instance,
        resources=resources,
        partition_key=case_id,
        run_config={"ops": {"instrument_detections": {"config": {"chunk_minutes": minutes}}}},
    )


def test_chunked_detection_equals_a_whole_pass_and_tracks_alike(
    surg_home: Path, long_case: Path
) -> None:
    resources = build_resources(load_settings())
    # Lake chunks and reads of 64 kB, so that this short video spans many of them, as a long
    # case spans many of the default 1 MiB / 4 MiB.
    store = resources["blob_store"] = type(resources["blob_store"])(
        **{**resources["blob_store"].model_dump(), "encryption_chunk_bytes": 65_536,
           "range_block_bytes": 65_536}
    )  # fmt: skip
    case_id = ingest_file(long_case, store, resources["catalog"], video_limits_from_env()).case_id
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("cases", [case_id])
        dg.materialize(
            [raw_video, transcoded_video],
            instance=instance,
            resources=resources,
            partition_key=case_id,
        )
        whole = _detect(instance, resources, case_id, 0)
        whole_detections = read_table(store, case_id, "detections.parquet")
        whole_tracks = read_table(store, case_id, "tracks.parquet")
        chunked = _detect(instance, resources, case_id, 0.5)
        chunked_detections = read_table(store, case_id, "detections.parquet")
        chunked_tracks = read_table(store, case_id, "tracks.parquet")

    def steps(result: dg.ExecuteInProcessResult) -> list[str]:
        return sorted(e.step_key for e in result.get_step_success_events() if "chunk" in e.step_key)

    assert steps(whole) == [
        "instrument_detections.detect_instrument_chunk[chunk_0000]",
        "instrument_detections.merge_detection_chunks",
        "instrument_detections.plan_detection_chunks",
    ]
    assert [s for s in steps(chunked) if "detect_instrument_chunk" in s] == [
        f"instrument_detections.detect_instrument_chunk[chunk_000{i}]" for i in range(3)
    ]
    assert whole_detections.num_rows > 100  # the default detector sees the lab's instruments
    assert chunked_detections.equals(whole_detections)
    assert chunked_tracks.equals(whole_tracks)
    n_tracks = {
        r.asset_materializations_for_node("instrument_tracks")[0].metadata["tracks"].value
        for r in (whole, chunked)
    }
    assert len(n_tracks) == 1 and n_tracks.pop() > 0

    meta = chunked.asset_materializations_for_node("instrument_detections")[0].metadata
    whole_meta = whole.asset_materializations_for_node("instrument_detections")[0].metadata
    assert meta["chunks"].value == 3 and whole_meta["chunks"].value == 1
    assert meta["frames"].value == whole_meta["frames"].value == 375  # 75 s at 5 frames/s
    assert meta["rows"].value == whole_detections.num_rows
    # Two borders, 2 s each side at 5 frames/s: 40 frames detected twice, identically.
    assert meta["overlap_frames"].value == 40
    assert meta["overlap_mismatches"].value == 0
    assert meta["model_version"].value == "instrument_detector:v1"
    # Each chunk read its own stretch of the video by range, not a whole copy: between them
    # the three read it about once (their overlaps, keyframes and the index twice), where whole
    # copies would read it three times.
    assert 1.0 <= whole_meta["video_read_fraction"].value < 1.05  # one pass, each block once
    assert 1.0 <= meta["video_read_fraction"].value < 1.5
    # The chunks travelled through the blob store and are gone once merged.
    assert store.list_prefix(STEP_OUTPUTS_PREFIX) == []


def test_chunk_plan_covers_the_video_with_overlapping_reads() -> None:
    chunks = plan_chunks(75.0, 30.0, overlap_s=2.0)
    assert [(c.start_s, c.end_s) for c in chunks] == [(0, 30), (30, 60), (60, None)]
    assert [(c.read_start_s, c.read_end_s) for c in chunks] == [(0, 32), (28, 62), (58, None)]
    # A frame on a border belongs to exactly one chunk.
    for t in (0.0, 29.8, 30.0, 59.99, 60.0, 74.8, 9999.0):
        assert sum(c.owns(t) for c in chunks) == 1, t
    assert len(plan_chunks(75.0, 0)) == len(plan_chunks(None, 30.0)) == 1
    assert len(plan_chunks(60.0, 30.0)) == 2  # an exact multiple makes no empty last chunk


def _two_chunks() -> list[ChunkDetections]:
    """Two chunks of 2 s overlapping by 0.4 s, in the wrong order; they disagree on the overlap."""
    left_chunk, right_chunk = plan_chunks(4.0, 2.0, overlap_s=0.4)

    def rows(times: list[float], x1: float) -> list[dict]:
        return [
            {"case_id": "c1", "frame_index": round(t * 25), "t_s": t, "class_id": 0,
             "class_name": "grasper", "confidence": 0.9, "x1": x1, "y1": 1.0, "x2": 9.0,
             "y2": 9.0, "mask": None, "model_version": "v"}
            for t in times
        ]  # fmt: skip

    left = [0.0, 0.8, 1.6, 2.0]
    right = [1.6, 2.0, 2.4, 3.2]
    return [
        ChunkDetections(right_chunk, table_from_rows(DETECTIONS, rows(right, 2.0)), right),
        ChunkDetections(left_chunk, table_from_rows(DETECTIONS, rows(left, 1.0)), left),
    ]


def test_merge_keeps_each_frame_once_and_reports_overlap_disagreement() -> None:
    parts = _two_chunks()
    merged = merge_chunks(parts)
    assert merged.table.column("t_s").to_pylist() == [0.0, 0.8, 1.6, 2.0, 2.4, 3.2]
    assert merged.table.column("x1").to_pylist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    assert merged.frames == 6 and merged.rows == 6 and merged.per_class == {"grasper": 6}
    assert (merged.overlap_frames, merged.overlap_mismatches) == (2, 2)
    with pytest.raises(ValueError, match="missing"):
        merge_chunks([ChunkDetections(parts[0].chunk, DETECTIONS.empty_table(), [])])


def test_chunks_merged_from_files_into_a_file_equal_the_merge_in_memory(tmp_path: Path) -> None:
    parts = _two_chunks()
    files = []
    for i, part in enumerate(parts):
        path = tmp_path / f"chunk{i}.parquet"
        pq.write_table(part.table, path, row_group_size=1)  # a reader batch per row
        files.append(replace(part, table=None, file=str(path)))
    merged = merge_chunks(files, sink=tmp_path / "merged.parquet")
    assert merged.table.num_rows == 0
    assert pq.read_table(tmp_path / "merged.parquet").equals(merge_chunks(parts).table)
    assert (merged.frames, merged.rows, merged.per_class) == (6, 6, {"grasper": 6})
    assert (merged.overlap_frames, merged.overlap_mismatches) == (2, 2)


def test_the_sampling_rate_travels_with_the_detections_where_timestamps_would_misread_it(
    tmp_path: Path,
) -> None:
    import av
    import numpy as np

    from ml_models.chunking import detections_sample_fps
    from ml_models.video import sample_frames

    # A 24 fps film-rate video: 5 fps picks every 4.8th frame, so the steps between sampled
    # frames are 4 and 5 frames long.
    video = tmp_path / "film.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(48):
            picture = np.full((64, 64, 3), i * 5, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode())
    times = [f.t_s for f in sample_frames(video, 5.0)]
    assert len(times) == 10  # 5 a second over 2 s: the rate is 5 on average

    (chunk,) = plan_chunks(2.0, 0)
    rows = [
        {"case_id": "c1", "frame_index": round(t * 24), "t_s": t, "class_id": 0,
         "class_name": "grasper", "confidence": 0.9, "x1": 1.0, "y1": 1.0, "x2": 9.0,
         "y2": 9.0, "mask": None, "model_version": "v"}
        for t in times
    ]  # fmt: skip
    part = ChunkDetections(chunk, table_from_rows(DETECTIONS, rows), times)
    merge_chunks([part], sink=tmp_path / "detections.parquet", sample_fps=5.0)
    assert detections_sample_fps(tmp_path / "detections.parquet", default=1.0) == 5.0
    # A file without the rate (written before it was kept) falls back to the timestamps,
    # which read the shortest step: 6 fps here, the error the metadata exists to avoid.
    merge_chunks([part], sink=tmp_path / "old.parquet")
    assert detections_sample_fps(tmp_path / "old.parquet", default=1.0) == 6.0
    pq.write_table(DETECTIONS.empty_table(), tmp_path / "empty.parquet")
    assert detections_sample_fps(tmp_path / "empty.parquet", default=2.5) == 2.5
