"""case_analysis and case_report after the perception assets, on the synthetic laparoscopy.

The tiny models are trained for seconds, so their phases and instruments are rough. The analysis
is compared exactly with the tables it was built from; against the synthetic ground truth only
where that is meaningful (total time, phases the model got right, instruments it found).
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import jsonschema
import pytest

from ml_models.analysis import merge_intervals
from ml_models.report import check_grounding
from ml_models.schemas import load_schema
from resources.report_writers import TemplateReportWriter
from resources.settings import load_settings
from surg_assets import checks, checks_cognition
from surg_assets.assets import cognition, ingest, perception
from surg_assets.assets.perception import read_table
from surg_assets.intake import ingest_file
from surg_assets.settings import build_resources, video_limits_from_env

COGNITION_AND_UPSTREAM = [
    ingest.raw_video,
    ingest.transcoded_video,
    perception.instrument_detections,
    perception.instrument_tracks,
    perception.phase_timeline,
    perception.video_events,
    cognition.case_analysis,
    cognition.case_report,
]


def _truth(case_dir: Path) -> tuple[dict[int, tuple[float, float]], dict[str, float], float]:
    """Ground truth: phase intervals, visible seconds per instrument class, duration."""
    summary = json.loads((case_dir / "summary.json").read_text())
    fps = summary["fps"]
    phases = {p["phase_id"]: (p["start_frame"] / fps, p["end_frame"] / fps)
              for p in summary["phases"]}  # fmt: skip
    visible: dict[str, float] = {}
    for line in (case_dir / "ground_truth.jsonl").read_text().splitlines():
        frame = json.loads(line)
        for name in {i["class_name"] for i in frame["instruments"]}:
            visible[name] = visible.get(name, 0.0) + 1.0 / fps
    return phases, visible, summary["duration_s"]


@pytest.fixture(scope="module")
def analysed_case(
    tmp_path_factory: pytest.TempPathFactory, synthetic_case: Path, tiny_models: dict[str, Path]
) -> dict:
    """The synthetic case run through perception and cognition once for this module."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("cognition-home")
    mp.setenv("SURG_HOME", str(home))
    mp.setenv("SURG_ENV", "local")
    mp.delenv("SURG_CATALOG_URL", raising=False)
    resources = build_resources(load_settings())
    for name, path in tiny_models.items():
        resources["registry"].register(
            name, {"weights.pt": path}, card={"test": True}, status="Approved",
            decided_by="test", dataset_version=f"{name}-synthetic:v1",
        )  # fmt: skip
    outcome = ingest_file(
        synthetic_case / "video.mp4",
        resources["blob_store"],
        resources["catalog"],
        video_limits_from_env(),
    )
    resources["report_writer"] = TemplateReportWriter()
    job = dg.define_asset_job("case_with_cognition", selection=COGNITION_AND_UPSTREAM)
    defs = dg.Definitions(
        assets=COGNITION_AND_UPSTREAM,
        asset_checks=dg.load_asset_checks_from_modules([checks, checks_cognition]),
        jobs=[job],
        resources=resources,
    )
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("cases", [outcome.case_id])
        result = defs.resolve_job_def("case_with_cognition").execute_in_process(
            partition_key=outcome.case_id, instance=instance
        )
    yield {"result": result, "case_id": outcome.case_id, "resources": resources}
    mp.undo()


def test_cognition_assets_materialize_and_pass_their_checks(analysed_case: dict) -> None:
    result = analysed_case["result"]
    assert result.success
    evaluations = {c.check_name: c for c in result.get_asset_check_evaluations()}
    for name in ("analysis_meets_contract", "report_is_valid_and_grounded"):
        assert evaluations[name].passed, evaluations[name].description
    meta = result.asset_materializations_for_node("case_report")[0].metadata
    assert meta["writer"].value == "template" and meta["grounded"].value is True
    meta = result.asset_materializations_for_node("case_analysis")[0].metadata
    assert meta["model_versions"].value == {
        "instrument_detector": "instrument_detector:v1",
        "phase_model": "phase_model:v1",
        "out_of_body_model": "out_of_body_model:v1",
    }
    assert meta["anomalies"].value == len(meta["anomaly_list"].value)


def test_stored_documents_validate_and_the_raw_video_points_at_the_analysis(
    analysed_case: dict,
) -> None:
    store, case_id = analysed_case["resources"]["blob_store"], analysed_case["case_id"]
    analysis = json.loads(store.get_bytes(f"processed-metadata/{case_id}/analysis.json"))
    report = json.loads(store.get_bytes(f"processed-metadata/{case_id}/report.json"))
    jsonschema.validate(analysis, load_schema("analysis"))
    jsonschema.validate(report, load_schema("report"))
    assert analysis["schema_version"] == report["schema_version"] == "1.0"
    assert analysis["dataset_versions"]["phase_model"] == "phase_model-synthetic:v1"
    html = store.get_bytes(f"processed-metadata/{case_id}/report.html").decode()
    assert html.count("data:image/png;base64,") == 2
    raw = store.head(f"raw-videos/{case_id}/source.mp4")
    assert raw.metadata["analysis"] == f"processed-metadata/{case_id}/analysis.json"
    head = store.head(f"processed-metadata/{case_id}/analysis.json")
    assert head.metadata["schema_version"] == "1.0"


def test_the_analysis_equals_the_tables_it_was_built_from(analysed_case: dict) -> None:
    store, case_id = analysed_case["resources"]["blob_store"], analysed_case["case_id"]
    a = cognition.load_analysis(store, case_id)
    phases = read_table(store, case_id, "phases.parquet").to_pylist()
    assert [(p.phase_id, p.start_s, p.end_s) for p in a.phases] == [
        (r["phase_id"], round(r["start_s"], 2), round(r["end_s"], 2)) for r in phases
    ]
    for d in a.phase_durations:
        expected = sum(r["end_s"] - r["start_s"] for r in phases if r["phase_id"] == d.phase_id)
        assert d.duration_s == pytest.approx(expected, abs=0.01)
    usage = read_table(store, case_id, "instrument_usage.parquet").to_pylist()
    for inst in a.instruments:
        spans = merge_intervals(
            [(r["start_s"], r["end_s"]) for r in usage if r["class_id"] == inst.class_id],
            cognition.AnalysisConfig().usage_gap_s,
        )
        assert inst.visible_s == pytest.approx(sum(e - s for s, e in spans), abs=0.02)
        assert inst.appearances == len(spans)
    assert {i.class_id for i in a.instruments} == {r["class_id"] for r in usage}
    events = read_table(store, case_id, "events.parquet").to_pylist()
    assert sum(a.event_counts.values()) == len(events)


def test_report_statements_against_the_synthetic_ground_truth(
    analysed_case: dict, synthetic_case: Path
) -> None:
    store, case_id = analysed_case["resources"]["blob_store"], analysed_case["case_id"]
    a = cognition.load_analysis(store, case_id)
    report = json.loads(store.get_bytes(f"processed-metadata/{case_id}/report.json"))
    truth_phases, truth_visible, duration = _truth(synthetic_case)
    assert check_grounding(report, a).passed
    # The report restates the analysis: every phase row and instrument row.
    assert [(r["phase"], r["start"], r["end"]) for r in report["phase_durations"]] == [
        (p.phase, p.start, p.end) for p in a.phases
    ]
    assert [r["instrument"] for r in report["instrument_usage"]] == [
        i.instrument for i in a.instruments
    ]
    # Model-independent: the timeline covers the whole video.
    assert a.video.duration_s == pytest.approx(duration, abs=0.5)
    assert sum(d.duration_s for d in a.phase_durations) == pytest.approx(duration, abs=1.5)
    # Where the phase model is right (its segments cover >= 80 % of the true phase and are
    # >= 80 % inside it) the stated duration is within 3 s of the truth.
    checked = 0
    for d in a.phase_durations:
        if d.phase_id not in truth_phases:
            continue
        t0, t1 = truth_phases[d.phase_id]
        inside = sum(
            max(0.0, min(p.end_s, t1) - max(p.start_s, t0))
            for p in a.phases
            if p.phase_id == d.phase_id
        )
        if inside >= 0.8 * (t1 - t0) and inside >= 0.8 * d.duration_s:
            assert d.duration_s == pytest.approx(t1 - t0, abs=3.0), d.phase
            checked += 1
    # Instruments the detector found (the 1-epoch detector usually finds none): never more
    # than the video, never an instrument absent from it.
    for inst in a.instruments:
        assert inst.visible_s <= duration + 0.5
        assert inst.instrument in truth_visible, f"{inst.instrument} is not in the video"
    # Scene cuts are rule-based (PySceneDetect): every true cut is in the analysis.
    truth_events = json.loads((synthetic_case / "events.json").read_text())["events"]
    cuts = [x.start_s for x in a.events if x.kind == "scene_cut"]
    for e in truth_events:
        if e["kind"] == "scene_cut":
            assert any(abs(t - e["start_s"]) <= 0.1 for t in cuts), e
    # Out-of-body comes from a classifier trained for two epochs, which varies run to run: every
    # true excursion it caught is a key event of the report at the detected start.
    stamps = {k["timestamp"] for k in report["key_events"] if "leaves the body" in k["description"]}
    caught = 0
    for e in truth_events:
        if e["kind"] != "out_of_body":
            continue
        hits = [x for x in a.events if x.kind == "out_of_body"
                and x.start_s < e["end_s"] and x.end_s > e["start_s"]]  # fmt: skip
        caught += bool(hits)
        assert all(x.start in stamps for x in hits)
    found = {i.instrument: i.visible_s for i in a.instruments}
    print(f"phases checked: {checked}; out-of-body caught: {caught}; instruments: {found}")
