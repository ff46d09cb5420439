"""The whole case pipeline on a synthetic laparoscopy, and the table contracts' GE suites."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from ml_models.tables import (
    DETECTIONS,
    EVENTS,
    FRAME_SIZE_KEY,
    INSTRUMENT_USAGE,
    PHASES,
    TRACKS,
    frame_size_of,
)
from ml_models.video import inspect_layout, video_frame_size
from resources.settings import load_settings
from surg_assets.assets.ingest import processed_video_key
from surg_assets.assets.perception import (
    DetectionConfig,
    EventsConfig,
    PhaseConfig,
    TrackingConfig,
    metadata_key,
    read_table,
    write_table,
)
from surg_assets.checks import (
    detection_expectations,
    event_expectations,
    phase_columns,
    phase_expectations,
    run_suite,
)
from surg_assets.definitions import defs
from surg_assets.intake import ingest_file
from surg_assets.settings import build_resources, video_limits_from_env


def _register(resources: dict, tiny_models: dict[str, Path]) -> None:
    for name, path in tiny_models.items():
        resources["registry"].register(
            name, {"weights.pt": path}, card={"test": True}, status="Approved", decided_by="test"
        )


def test_analyze_case_produces_every_table_and_passes_its_checks(
    surg_home: Path, synthetic_case: Path, tiny_models: dict[str, Path]
) -> None:
    resources = build_resources(load_settings())
    _register(resources, tiny_models)
    outcome = ingest_file(
        synthetic_case / "video.mp4",
        resources["blob_store"],
        resources["catalog"],
        video_limits_from_env(),
    )
    case_id = outcome.case_id
    job = defs().resolve_job_def("analyze_case")
    store = resources["blob_store"]
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("cases", [case_id])
        # The one-epoch test detector is unsure of everything: a low confidence floor gives
        # the detection and track checks real rows to judge.
        result = job.execute_in_process(
            run_config={"ops": {"instrument_detections": {"config": {"confidence": 0.01}}}},
            partition_key=case_id,
            instance=instance,
        )
        assert result.success
        # A video under two minutes is an excerpt: read causally, no whole-case prior.
        [phases] = result.asset_materializations_for_node("phase_timeline")
        assert phases.metadata["decoding"].value == "causal argmax"
        assert phases.metadata["device"].value == "cpu"  # no GPU here: "auto" is the CPU
        causal = read_table(store, case_id, "phase_probabilities.parquet").to_pandas()
        # Taken as a whole case, the same video is read by the offline temporal model.
        whole = job.execute_in_process(
            run_config={"ops": {"phase_timeline": {"config": {"whole_case_min_s": 10.0}}}},
            partition_key=case_id,
            instance=instance,
            asset_selection=[dg.AssetKey("phase_timeline")],
        )
        [rerun] = whole.asset_materializations_for_node("phase_timeline")
        assert rerun.metadata["decoding"].value == "whole case: offline TCN, training prior"
        offline = read_table(store, case_id, "phase_probabilities.parquet").to_pandas()
        assert len(offline) == len(causal)
        assert not np.allclose(offline.probability, causal.probability)
        # A wrong setting stops the step before any model loads, naming the setting; the
        # events table written above is left as it was.
        events_before = store.get_bytes(metadata_key(case_id, "events.parquet"))
        bad = job.execute_in_process(
            run_config={"ops": {"video_events": {"config": {"sample_fps": 0}}}},
            partition_key=case_id,
            instance=instance,
            asset_selection=[dg.AssetKey("video_events")],
            raise_on_error=False,
        )
        assert not bad.success
        (failure,) = [e for e in bad.all_events if e.event_type_value == "STEP_FAILURE"]
        said = failure.step_failure_data.error.cause.message
        assert "sample_fps" in said and "greater than 0" in said
        assert store.get_bytes(metadata_key(case_id, "events.parquet")) == events_before
        # Detections written before their frame size was kept with them: the tracker reads it
        # from the video's header instead, and the tracks come out the same.
        kept = store.get_bytes(metadata_key(case_id, "detections.parquet"))
        tracks_before = read_table(store, case_id, "tracks.parquet")
        older = read_table(store, case_id, "detections.parquet")
        meta = {k: v for k, v in (older.schema.metadata or {}).items() if k != FRAME_SIZE_KEY}
        write_table(store, case_id, "detections.parquet", older.replace_schema_metadata(meta))
        assert job.execute_in_process(
            partition_key=case_id,
            instance=instance,
            asset_selection=[dg.AssetKey("instrument_tracks")],
        ).success
        assert read_table(store, case_id, "tracks.parquet").equals(tracks_before)
        with store.open_ranged(processed_video_key(case_id)) as video:
            size = video_frame_size(video)
        with store.local_copy(metadata_key(case_id, "tracks.parquet")) as path:
            assert frame_size_of(path) == size == (426, 240)
        store.put_bytes(metadata_key(case_id, "detections.parquet"), kept)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {
        "transcoded_video_meets_contract": True,
        "detections_meet_contract": True,
        "tracks_meet_contract": True,
        "phases_meet_contract": True,
        "events_meet_contract": True,
        "deidentified_video_is_clean": True,
        "analysis_meets_contract": True,
        "report_is_valid_and_grounded": True,
    }
    for name, schema in [
        ("detections.parquet", DETECTIONS),
        ("tracks.parquet", TRACKS),
        ("phases.parquet", PHASES),
        ("events.parquet", EVENTS),
    ]:
        assert read_table(store, case_id, name).schema.equals(schema), name
    phases = read_table(store, case_id, "phases.parquet").to_pandas()
    assert phases.start_s.iloc[0] == 0 and phases.end_s.iloc[-1] == pytest.approx(24, abs=1.5)
    assert set(phases.model_version) == {"phase_model:v1"}
    # Detections and tracks keep the frame their boxes are pixels of: the transcoded video's.
    with store.local_copy(processed_video_key(case_id)) as video:
        layout = inspect_layout(video)
    for name in ("detections.parquet", "tracks.parquet"):
        with store.local_copy(metadata_key(case_id, name)) as path:
            assert frame_size_of(path) == (layout.width, layout.height), name
    detections = read_table(store, case_id, "detections.parquet").to_pandas()
    # The checks above judged real rows, not an empty table.
    assert len(detections) > 0
    assert set(detections.model_version) == {"instrument_detector:v1"}
    meta = result.asset_materializations_for_node("instrument_detections")[0].metadata
    assert meta["model_version"].value == "instrument_detector:v1"
    assert meta["frames"].value == 120  # 24 s at 5 frames per second
    # Run at the size the tiny detector was trained at, not the defaults' 320 px.
    assert meta["imgsz"].value == 160
    # What the Dagster UI shows for each perception asset: rows, the model behind it, how long
    # it took, and a preview of the table.
    versions = {
        "instrument_detections": "instrument_detector:v1",
        "instrument_tracks": "instrument_detector:v1",
        "phase_timeline": "phase_model:v1",
        "video_events": "out_of_body_model:v1",
    }
    for node, version in versions.items():
        # phases.parquet was last written by the whole-case run above.
        [shown] = (whole if node == "phase_timeline" else result).asset_materializations_for_node(
            node
        )
        m = shown.metadata
        table = read_table(store, case_id, m["key"].value.rsplit("/", 1)[-1])
        assert m["rows"].value == table.num_rows, node
        assert m["seconds"].value > 0, node
        assert isinstance(m["preview"], dg.MarkdownMetadataValue), node
        assert m["model_version"].value == version, node
    tracks_meta = result.asset_materializations_for_node("instrument_tracks")[0].metadata
    assert tracks_meta["sample_fps"].value == 5.0
    events = read_table(store, case_id, "events.parquet").to_pandas()
    assert {"colour_bars", "black", "scene_cut"} <= set(events.kind)
    # The blocking checks read the stored tables: corrupted, they fail, naming what broke.
    corrupted = _corrupted_tables_fail_their_checks(resources, case_id)
    assert corrupted == {
        "tracks_meet_contract": [
            "instrument_usage: expect_column_pair_values_a_to_be_greater_than_b(end_s)",
            "instrument_usage: expect_column_values_to_be_in_set(class_name)",
        ],
        "phases_meet_contract": [
            "expect_column_max_to_be_between(end_s)",
            "expect_column_to_be_of_type(confidence: float)",
            "phase_probabilities: expect_column_values_to_be_between(second_total)",
        ],
        "events_meet_contract": ["expect_column_values_to_be_between(end_s)"],
    }


def _corrupted_tables_fail_their_checks(resources: dict, case_id: str) -> dict[str, list[str]]:
    """Corrupt the stored tables of a finished case, run the blocking checks on them and
    return each failed check's failed expectations."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from surg_assets.assets.perception import (
        instrument_tracks,
        phase_timeline,
        video_events,
        write_table,
    )
    from surg_assets.checks import events_meet_contract, phases_meet_contract, tracks_meet_contract
    from surg_assets.partitions import cases

    store = resources["blob_store"]

    def corrupt(name: str, change) -> None:
        write_table(store, case_id, name, change(read_table(store, case_id, name)))

    def set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
        return table.set_column(table.schema.get_field_index(name), name, values)

    # A timeline that stops half-way, with float64 confidences; probabilities halved.
    corrupt("phases.parquet", lambda t: set_column(
        set_column(t, "end_s", pc.min_element_wise(t["end_s"], 10.0)),
        "confidence", t["confidence"].cast(pa.float64()),
    ).filter(pc.less(t["start_s"], 10.0)))  # fmt: skip
    corrupt("phase_probabilities.parquet", lambda t: set_column(
        t, "probability", pc.multiply(t["probability"], pa.scalar(0.5, pa.float32()))
    ))  # fmt: skip
    usage = pa.Table.from_pylist(
        [{"case_id": case_id, "track_id": 1, "class_id": 0, "class_name": "scalpel",
          "start_s": 5.0, "end_s": 4.0, "detections": 3, "mean_confidence": 0.5}],
        schema=INSTRUMENT_USAGE,
    )  # fmt: skip
    write_table(store, case_id, "instrument_usage.parquet", usage)
    corrupt("events.parquet", lambda t: set_column(
        t, "end_s", pc.add(t["end_s"], 1000.0)
    ))  # fmt: skip
    # The real checks through Dagster, each on a stand-in for its asset (the asset itself would
    # write the tables again).
    verdicts = {}
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("cases", [case_id])
        for asset, check in (
            (instrument_tracks, tracks_meet_contract),
            (phase_timeline, phases_meet_contract),
            (video_events, events_meet_contract),
        ):

            @dg.asset(key=asset.key, partitions_def=cases)
            def stored() -> dg.MaterializeResult:
                return dg.MaterializeResult()

            run = dg.materialize(
                [stored, check],
                partition_key=case_id,
                instance=instance,
                resources={"blob_store": store, "catalog": resources["catalog"]},
                raise_on_error=False,
            )
            [verdicts[asset.key.path[-1]]] = run.get_asset_check_evaluations()
            assert run.success == verdicts[asset.key.path[-1]].passed  # blocking
    return {
        # "label: 3 unexpected" or "label: failed", joined by "; "
        v.check_name: sorted(part.rsplit(": ", 1)[0] for part in v.description.split("; "))
        for v in verdicts.values()
        if not v.passed
    }


def _ok_detections() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case_id": ["c1", "c1"], "frame_index": [0, 5], "t_s": [0.0, 0.2],
            "class_id": [0, 2], "class_name": ["grasper", "hook"], "confidence": [0.9, 0.5],
            "x1": [10.0, 100.0], "y1": [10.0, 50.0], "x2": [60.0, 150.0], "y2": [80.0, 90.0],
            "mask": [None, None], "model_version": ["v", "v"], "track_id": [1, 2],
        }
    )  # fmt: skip


@pytest.mark.parametrize(
    ("corrupt", "column"),
    [
        (lambda d: d.assign(confidence=[0.9, 1.7]), "confidence"),
        (lambda d: d.assign(x2=[5.0, 150.0]), "x2"),
        (lambda d: d.assign(class_name=["grasper", "scalpel"]), "class_name"),
        (lambda d: d.assign(t_s=[0.0, 99.0]), "t_s"),
        (lambda d: d.drop(columns=["frame_index"]), "frame_index"),
        (lambda d: d.assign(track_id=[1, None]), "track_id"),
    ],
)
def test_corrupted_detections_fail_the_suite(corrupt, column: str) -> None:
    assert run_suite(_ok_detections(), "tracks", detection_expectations(10, 854, 480, True)).passed
    result = run_suite(
        corrupt(_ok_detections()), "tracks", detection_expectations(10, 854, 480, True)
    )
    assert not result.passed
    assert column in result.description


def test_phase_gaps_overruns_flickers_and_misnamed_phases_fail_the_suite() -> None:
    vocabulary = {0: "A", 1: "B", 2: "C"}
    good = pd.DataFrame(
        {"case_id": "c", "phase_id": [0, 1], "phase_name": ["A", "B"], "start_s": [0.0, 10.0],
         "end_s": [10.0, 30.0], "confidence": [0.8, 0.9], "model_version": "v"}
    )  # fmt: skip

    def failed(df: pd.DataFrame, duration: float = 30, min_segment_s: float = 10) -> str:
        expectations = phase_expectations(duration, min_segment_s)
        result = run_suite(phase_columns(df, vocabulary), "phases", expectations)
        return "" if result.passed else result.description

    assert failed(good) == ""
    assert "gap_s" in failed(good.assign(start_s=[0.0, 12.0]))
    assert "end_s" in failed(good, duration=20)
    # A 1-second flicker where the smoothing allows 10 s, and an id under another phase's name.
    flicker = good.assign(start_s=[0.0, 29.0], end_s=[29.0, 30.0])
    assert failed(flicker).startswith("expect_column_values_to_be_between(length_s)")
    assert failed(flicker, min_segment_s=0) == ""
    misnamed = good.assign(phase_name=["A", "C"])
    assert failed(misnamed) == "expect_column_pair_values_to_be_equal(phase_name): 1 unexpected"
    # A video shorter than the minimum is one short segment, as it should be.
    assert failed(good.iloc[:1].assign(end_s=4.0), duration=4) == ""


def test_unknown_event_kinds_fail_the_suite() -> None:
    events = pd.DataFrame(
        {"case_id": "c", "kind": ["black", "alien"], "start_s": [0.0, 1.0], "end_s": [1.0, 0.5],
         "score": [1.0, 0.5], "detail": ""}
    )  # fmt: skip
    result = run_suite(events, "events", event_expectations(10))
    assert not result.passed and "kind" in result.description and "end_s" in result.description


@pytest.mark.parametrize(
    ("config", "values", "field"),
    [
        (DetectionConfig, {"sample_fps": 0}, "sample_fps"),
        (DetectionConfig, {"confidence": 1.5}, "confidence"),
        (DetectionConfig, {"batch_size": 0}, "batch_size"),
        (DetectionConfig, {"runtime": "tensorflow"}, "runtime"),
        (TrackingConfig, {"tracker": "sort"}, "tracker"),
        (PhaseConfig, {"min_segment_s": -1}, "min_segment_s"),
        (EventsConfig, {"cut_threshold": 0}, "cut_threshold"),
    ],
)
def test_out_of_range_settings_are_refused_by_name(config, values: dict, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        config(**values)
    (error,) = raised.value.errors()
    assert error["loc"] == (field,)
    assert config(**{field: config.model_fields[field].default}) is not None
