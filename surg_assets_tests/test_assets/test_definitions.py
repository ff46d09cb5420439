"""The code location: asset keys snapshot, and Dagster's own validation of the definitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from surg_assets.definitions import defs

REPO = Path(__file__).resolve().parents[2]

# Renaming or removing an asset is a visible decision: update this list on purpose.
CASE_ASSET_KEYS = [
    "case_analysis",
    "case_report",
    "deidentified_video",
    "instrument_detections",
    "instrument_tracks",
    "phase_timeline",
    "raw_video",
    "transcoded_video",
    "video_events",
]
# The training side (issue 5): not partitioned by case.
TRAINING_ASSET_KEYS = [
    "detector_dataset",
    "instrument_detector",
    "out_of_body_model",
    "phase_dataset",
    "phase_model",
]
EXPECTED_ASSET_KEYS = sorted(CASE_ASSET_KEYS + TRAINING_ASSET_KEYS)
EXPECTED_CHECKS = [
    "case_analysis:analysis_meets_contract",
    "case_report:report_is_valid_and_grounded",
    "deidentified_video:deidentified_video_is_clean",
    "instrument_detections:detections_meet_contract",
    "instrument_detector:evaluation_clears_gates",
    "instrument_tracks:tracks_meet_contract",
    "out_of_body_model:evaluation_clears_gates",
    "phase_model:evaluation_clears_gates",
    "phase_timeline:phases_meet_contract",
    "transcoded_video:transcoded_video_meets_contract",
    "video_events:events_meet_contract",
]


def test_asset_keys_snapshot() -> None:
    graph = defs().resolve_asset_graph()
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == EXPECTED_ASSET_KEYS
    checks = sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys)
    assert checks == EXPECTED_CHECKS


def test_gpu_steps_carry_placement_tags_for_both_launchers() -> None:
    graph = defs().resolve_asset_graph()
    gpu_steps = ("instrument_detections", "phase_timeline", "instrument_detector", "phase_model")
    for name in (*gpu_steps, "out_of_body_model"):
        assets_def = graph.get(dg.AssetKey(name)).assets_def
        # A graph-backed asset (detection fanned out over chunks) places the op that needs a GPU.
        ops = [op for op in assets_def.node_def.iterate_op_defs() if op.pool]
        assert len(ops) == 1, name
        tags = ops[0].tags  # Dagster stores structured tag values as JSON strings
        k8s = json.loads(tags["dagster-k8s/config"])
        assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert k8s["pod_spec_config"]["tolerations"][0]["key"] == "nvidia.com/gpu"
        ecs = json.loads(tags["ecs/run_task_kwargs"])
        assert ecs["capacityProviderStrategy"][0]["capacityProvider"] == "surg-gpu"
        assert ops[0].pool == "gpu"


def test_case_assets_are_partitioned_by_case_and_in_the_analyze_job() -> None:
    d = defs()
    graph = d.resolve_asset_graph()
    for key in CASE_ASSET_KEYS:
        assert graph.get(dg.AssetKey(key)).partitions_def.name == "cases"
    for key in TRAINING_ASSET_KEYS:
        assert graph.get(dg.AssetKey(key)).partitions_def is None
    job = d.resolve_job_def("analyze_case")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == set(
        CASE_ASSET_KEYS
    )
    retrain = d.resolve_job_def("retrain_models")
    assert {k.to_user_string() for k in retrain.asset_layer.executable_asset_keys} == set(
        TRAINING_ASSET_KEYS
    )
    assert {s.name for s in d.sensors} == {
        "new_video_sensor",
        "case_ready_sensor",
        "case_failed_sensor",
        "detection_drift_sensor",
        "model_approved_sensor",
    }
    assert [s.name for s in d.schedules] == ["weekly_retraining"]


def test_dagster_definitions_validate(tmp_path: Path) -> None:
    env = {**os.environ, "SURG_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr
