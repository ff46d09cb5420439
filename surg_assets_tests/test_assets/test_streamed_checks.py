"""The detections and tracks checks stream their file: same verdicts, one batch in memory."""

from __future__ import annotations

import math
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_models.formats.cholec80 import INSTRUMENT_CLASSES
from ml_models.tables import (
    DETECTIONS,
    INSTRUMENT_USAGE,
    TRACKS,
    RowGroupWriter,
    frame_size_metadata,
)
from resources.settings import load_settings
from surg_assets import checks
from surg_assets.assets.perception import (
    instrument_detections,
    instrument_tracks,
    metadata_key,
    write_table,
)
from surg_assets.checks import (
    POLYGON_IN_FRAME,
    POLYGON_SHAPE,
    detection_expectations,
    detections_meet_contract,
    run_suite,
    tracks_meet_contract,
    validate_detection_file,
)
from surg_assets.partitions import cases
from surg_assets.settings import build_resources

WIDTH, HEIGHT, DURATION_S = 854, 480, 600.0
CASE = "c00000000000000a1"
# A valid outline: a square in the frame, flattened x, y pairs as results_to_rows writes them.
SQUARE = [100.0, 100.0, 200.0, 100.0, 200.0, 200.0, 100.0, 200.0]


def _detections(frames: int, per_frame: int = 3, points: int = 60, seed: int = 0) -> pa.Table:
    """A realistic tracks table (drop ``track_id`` for detections): boxes, outlines, ~10% null."""
    rng = np.random.default_rng(seed)
    n = frames * per_frame
    frame_index = np.repeat(np.arange(frames) * 5, per_frame)  # 25 fps video sampled at 5 fps
    class_id = rng.integers(0, len(INSTRUMENT_CLASSES), n).astype(np.int16)
    w, h = rng.uniform(20, 300, n), rng.uniform(20, 200, n)
    x1, y1 = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    xs = (x1 + w / 2)[:, None] + (w / 2)[:, None] * np.cos(angles)
    ys = (y1 + h / 2)[:, None] + (h / 2)[:, None] * np.sin(angles)
    coords = np.stack([xs, ys], axis=2).reshape(-1).astype(np.float32).round(1)
    # Null outlines keep their span of values: readers must skip it, not misread it.
    mask = pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * 2 * points),
        pa.array(coords),
        mask=pa.array(rng.random(n) < 0.1),
    )
    columns = {
        "case_id": [CASE] * n,
        "frame_index": frame_index,
        "t_s": frame_index / 25.0,
        "class_id": class_id,
        "class_name": [INSTRUMENT_CLASSES[c] for c in class_id],
        "confidence": rng.uniform(0.25, 1.0, n).astype(np.float32),
        "x1": x1.astype(np.float32),
        "y1": y1.astype(np.float32),
        "x2": (x1 + w).astype(np.float32),
        "y2": (y1 + h).astype(np.float32),
        "mask": mask,
        "model_version": ["instrument_detector:v1"] * n,
        "track_id": rng.integers(1, 40, n),
    }
    return pa.table(columns, schema=TRACKS)


def _as_detections(table: pa.Table) -> pa.Table:
    return table.drop_columns(["track_id"]).cast(DETECTIONS)


def _with(table: pa.Table, column: str, rows: dict[int, object]) -> pa.Table:
    """``table`` with some cells of ``column`` replaced."""
    field = table.schema.field(column)
    values = table[column].to_pylist()
    for row, value in rows.items():
        values[row] = value
    return table.set_column(
        table.schema.get_field_index(column), field, pa.array(values, field.type)
    )


def _without_row(table: pa.Table, row: int) -> pa.Table:
    return pa.concat_tables([table.slice(0, row), table.slice(row + 1)])


def _write(path: Path, table: pa.Table, rows_per_group: int) -> Path:
    """Write ``table`` as the pipeline does, with small row groups so a file has many."""
    with RowGroupWriter(path, table.schema, rows_per_group) as writer:
        for batch in table.to_batches(max_chunksize=rows_per_group):
            writer.write(pa.Table.from_batches([batch]))
    return path


def _check(path: Path, tracks: bool = False, batch_rows: int = 32) -> dg.AssetCheckResult:
    return validate_detection_file(path, DURATION_S, WIDTH, HEIGHT, tracks, batch_rows)


def _failures(result: dg.AssetCheckResult) -> dict[str, str]:
    """Expectation label -> 'N unexpected' (or 'failed') from a check's description."""
    if result.passed:
        return {}
    return dict(part.rsplit(": ", 1) for part in (result.description or "").split("; "))


LATE_ROW = 175  # of 180 rows written in groups of 32: the sixth and last batch


@pytest.mark.parametrize(
    ("column", "value", "expectation"),
    [
        ("x2", WIDTH + 50.0, "expect_column_values_to_be_between(x2)"),
        ("class_id", len(INSTRUMENT_CLASSES), "expect_column_values_to_be_in_set(class_id)"),
        ("mask", SQUARE[:-1], POLYGON_SHAPE),
        ("mask", SQUARE[:4], POLYGON_SHAPE),
        ("mask", [], POLYGON_SHAPE),
        # 600 is a fine x in an 854-wide frame but no y in a 480-high one: parity matters.
        ("mask", SQUARE[:5] + [600.0] + SQUARE[6:], POLYGON_IN_FRAME),
        ("mask", [900.0] + SQUARE[1:], POLYGON_IN_FRAME),
        ("mask", SQUARE[:2] + [-3.0] + SQUARE[3:], POLYGON_IN_FRAME),
        ("mask", SQUARE[:3] + [float("nan")] + SQUARE[4:], POLYGON_IN_FRAME),
    ],
    ids=[
        "box-outside", "unknown-class", "odd-count", "two-points", "empty-polygon",
        "y-outside", "x-outside", "x-negative", "nan-coordinate",
    ],
)  # fmt: skip
def test_a_bad_row_in_the_last_batch_fails_the_check(
    tmp_path: Path, column: str, value: object, expectation: str
) -> None:
    table = _as_detections(_detections(60))
    bad = _with(table, column, {LATE_ROW: value})
    path = _write(tmp_path / "bad.parquet", bad, rows_per_group=32)
    assert pq.ParquetFile(path).metadata.num_row_groups == 6

    result = _check(path)

    assert not result.passed
    assert _failures(result) == {expectation: "1 unexpected"}
    assert result.metadata["rows"].value == 180
    assert result.metadata["batches"].value == 6
    clean = _check(_write(tmp_path / "clean.parquet", _without_row(bad, LATE_ROW), 32))
    assert clean.passed, clean.description
    assert clean.metadata["rows"].value == 179


def test_unexpected_rows_are_summed_over_batches(tmp_path: Path) -> None:
    table = _detections(60)
    table = _with(table, "class_id", {5: 99, 170: 99})
    table = _with(table, "mask", {40: SQUARE[:5] + [481.5] + SQUARE[6:], 150: [900.0] + SQUARE[1:]})
    table = _with(table, "track_id", {100: 0})

    result = _check(_write(tmp_path / "tracks.parquet", table, rows_per_group=32), tracks=True)

    assert _failures(result) == {
        "expect_column_values_to_be_in_set(class_id)": "2 unexpected",
        "expect_column_values_to_be_between(track_id)": "1 unexpected",
        POLYGON_IN_FRAME: "2 unexpected",
    }


def _whole_table(path: Path, tracks: bool) -> dg.AssetCheckResult:
    """The check as it was: the whole file in pandas, outlines included, one GE validation."""
    df = pq.read_table(path).to_pandas()
    expectations = detection_expectations(DURATION_S, WIDTH, HEIGHT, tracks)
    return run_suite(df, "tracks" if tracks else "detections", expectations)


@pytest.mark.parametrize("tracks", [False, True], ids=["detections", "tracks"])
def test_streamed_and_whole_table_validation_agree(tmp_path: Path, tracks: bool) -> None:
    table = _detections(400, seed=7)  # 1200 rows: five batches of 256
    table = table if tracks else _as_detections(table)
    x1 = table["x1"].to_pylist()
    variants = {
        "clean": table,
        "corrupt": _with(
            _with(
                _with(
                    _with(table, "confidence", {3: 1.5, 800: -0.1, 1190: 2.0}),
                    "x2",
                    {10: x1[10] - 1.0, 1100: x1[1100]},  # not right of x1
                ),
                "frame_index",
                {700: None},  # a null turns that batch's ints into floats in pandas
            ),
            "class_name",
            {0: "scalpel", 255: "scalpel", 256: "scalpel"},  # either side of a batch boundary
        ),
        "no-frame-index": table.drop_columns(["frame_index"]),
        "no-mask": table.drop_columns(["mask"]),
    }
    for name, variant in variants.items():
        path = _write(tmp_path / f"{name}.parquet", variant, rows_per_group=100)
        whole, streamed = _whole_table(path, tracks), _check(path, tracks, batch_rows=256)
        assert streamed.passed == whole.passed, name
        assert _failures(streamed) == _failures(whole), name
        assert streamed.metadata["rows"].value == whole.metadata["rows"].value == 1200
        assert streamed.metadata["batches"].value == 5
    assert _failures(_check(tmp_path / "corrupt.parquet", tracks, 256)) == {
        "expect_column_values_to_be_between(confidence)": "3 unexpected",
        "expect_column_pair_values_a_to_be_greater_than_b(x2)": "2 unexpected",
        "expect_column_values_to_not_be_null(frame_index)": "1 unexpected",
        "expect_column_values_to_be_in_set(class_name)": "3 unexpected",
    }


def test_the_check_never_holds_more_than_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, batch_rows = 3000, 256
    table = _with(_as_detections(_detections(rows // 3)), "mask", {rows - 2: SQUARE[:-1]})
    path = _write(tmp_path / "detections.parquet", table, rows_per_group=100)
    assert pq.ParquetFile(path).metadata.num_row_groups == 30

    arrow_rows: list[int] = []
    frames: list[tuple[int, list[str]]] = []
    iter_batches, validate_frames = pq.ParquetFile.iter_batches, checks.validate_frames

    def recorded_batches(self: pq.ParquetFile, *args: object, **kwargs: object):
        for batch in iter_batches(self, *args, **kwargs):
            arrow_rows.append(batch.num_rows)
            yield batch

    def recorded_frames(stream, name: str, expectations: list) -> checks.SuiteTally:
        def frames_seen():
            for df in stream:
                frames.append((len(df), list(df.columns)))
                yield df

        return validate_frames(frames_seen(), name, expectations)

    def whole_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the check read the whole table")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recorded_batches)
    monkeypatch.setattr(pq.ParquetFile, "read", whole_read)
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", whole_read)
    monkeypatch.setattr(pq, "read_table", whole_read)
    monkeypatch.setattr(checks, "validate_frames", recorded_frames)

    result = _check(path, batch_rows=batch_rows)

    # The outline in the last batch is still seen, though no outline ever reaches pandas.
    assert _failures(result) == {POLYGON_SHAPE: "1 unexpected"}
    assert len(frames) == len(arrow_rows) == math.ceil(rows / batch_rows)
    assert max(arrow_rows) <= batch_rows and sum(arrow_rows) == rows
    assert max(n for n, _ in frames) <= batch_rows and sum(n for n, _ in frames) == rows
    assert all("mask" not in columns for _, columns in frames)


def test_an_empty_table_passes_and_one_without_columns_fails(tmp_path: Path) -> None:
    empty = _check(_write(tmp_path / "empty.parquet", DETECTIONS.empty_table(), 32))
    assert empty.passed and empty.metadata["rows"].value == 0
    no_columns = pa.table({"frame_index": pa.array([], pa.int64())})
    result = _check(_write(tmp_path / "bare.parquet", no_columns, 32))
    assert not result.passed
    assert _failures(result)["expect_column_to_exist(mask)"] == "failed"
    assert _failures(result)["expect_column_to_exist(x1)"] == "failed"


def test_boxes_are_judged_in_the_frame_the_file_says_they_were_detected_on(
    tmp_path: Path,
) -> None:
    """A file records its frame size; the size the case's settings imply now is the fallback."""
    wide = _with(_as_detections(_detections(8)), "x2", {3: WIDTH + 50.0})
    plain = _write(tmp_path / "plain.parquet", wide, 32)
    assert "expect_column_values_to_be_between(x2)" in _failures(_check(plain))
    # Detected on a 1280 x 720 frame: the same box is inside it.
    larger = wide.replace_schema_metadata(frame_size_metadata((1280, 720)))
    assert _check(_write(tmp_path / "larger.parquet", larger, 32)).passed
    # Detected on a smaller frame than the case would imply now: boxes past it fail.
    smaller = _as_detections(_detections(8)).replace_schema_metadata(
        frame_size_metadata((320, 180))
    )
    assert "expect_column_values_to_be_between(x2)" in _failures(
        _check(_write(tmp_path / "smaller.parquet", smaller, 32))
    )


@pytest.mark.parametrize(
    ("asset", "check", "tracks", "column", "value", "expectation"),
    [
        (
            instrument_detections, detections_meet_contract, False, "mask",
            SQUARE[:5] + [600.0] + SQUARE[6:], POLYGON_IN_FRAME,
        ),
        (
            instrument_tracks, tracks_meet_contract, True, "track_id", 0,
            "expect_column_values_to_be_between(track_id)",
        ),
    ],
    ids=["detections", "tracks"],
)  # fmt: skip
def test_the_dagster_check_reads_the_encrypted_lake_in_batches(
    surg_home: Path,
    tmp_path: Path,
    asset: dg.AssetsDefinition,
    check: dg.AssetChecksDefinition,
    tracks: bool,
    column: str,
    value: object,
    expectation: str,
) -> None:
    resources = build_resources(load_settings())
    store, catalog = resources["blob_store"], resources["catalog"]
    name = "tracks.parquet" if tracks else "detections.parquet"
    table = _detections(1700, points=16)  # 5100 rows: three batches of the default size
    table = table if tracks else _as_detections(table)
    good, bad = "c00000000000000b1", "c00000000000000b2"
    for case_id, rows in ((good, table), (bad, _with(table, column, {5050: value}))):
        catalog.ensure_case(case_id, duration_s=DURATION_S, width=WIDTH, height=HEIGHT)
        store.put_file(
            metadata_key(case_id, name), _write(tmp_path / f"{case_id}.parquet", rows, 2048)
        )
        if tracks:  # the usage table instrument_tracks writes beside the tracks
            write_table(store, case_id, "instrument_usage.parquet", INSTRUMENT_USAGE.empty_table())

    # The real check, on a stand-in for the asset whose output the test stored above.
    @dg.asset(key=asset.key, partitions_def=cases)
    def stored() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    verdicts, succeeded = {}, {}
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("cases", [good, bad])
        for case_id in (good, bad):
            run = dg.materialize(
                [stored, check],
                partition_key=case_id,
                instance=instance,
                resources={"blob_store": store, "catalog": catalog},
                raise_on_error=False,
            )
            [verdicts[case_id]] = run.get_asset_check_evaluations()
            succeeded[case_id] = run.success
    assert succeeded == {good: True, bad: False}  # the check is blocking
    assert verdicts[good].passed, verdicts[good].description
    assert verdicts[good].metadata["rows"].value == 5100
    assert verdicts[good].metadata["batches"].value == 3
    assert not verdicts[bad].passed
    assert verdicts[bad].description == f"{expectation}: 1 unexpected"
