"""What starts retraining and re-analysis: the weekly schedule, the drift sensor, approvals."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import dagster as dg
import pytest

from ml_models.drift import detection_statistics
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES
from ml_models.tables import DETECTIONS, table_from_rows, to_parquet_bytes
from resources import datasets as snapshots
from resources.catalog import Annotation
from resources.settings import load_settings
from surg_assets.assets.perception import metadata_key
from surg_assets.models import default_weights_file
from surg_assets.schedules import weekly_retraining
from surg_assets.sensors import detection_drift_sensor, model_approved_sensor
from surg_assets.settings import build_resources

MONDAY = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC)


@pytest.fixture
def resources(surg_home: Path) -> dict:
    return build_resources(load_settings())


def _correct(catalog, kind: str) -> int:
    payload = (
        {"action": "add", "box": [1, 2, 30, 40], "class_name": "hook"}
        if kind == "box"
        else {"segments": [{"phase_name": "Preparation", "start_s": 0, "end_s": 5}]}
    )
    with catalog.session() as s:
        row = Annotation(
            case_id="c00000000000000a1",
            kind=kind,
            frame_index=10 if kind == "box" else None,
            t_s=0.4 if kind == "box" else None,
            payload=payload,
            author="rey",
            source="review",
        )
        s.add(row)
        s.flush()
        return row.id


def _evaluate_schedule(resources: dict) -> dg.RunRequest | dg.SkipReason:
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=MONDAY,
            resources={k: resources[k] for k in ("catalog", "blob_store")},
        )
        return weekly_retraining(context)


def _snapshot(resources: dict, tmp_path: Path, name: str, newest_id: int) -> None:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "labels.txt").write_text(f"{newest_id}\n")
    facts = {"annotation_ids": [newest_id], "newest_annotation_id": newest_id}
    snapshots.publish(resources["blob_store"], name, folder, f"hash-{newest_id}", facts)


def test_weekly_retraining_runs_only_when_corrections_are_newer_than_the_dataset(
    resources: dict, tmp_path: Path
) -> None:
    assert isinstance(_evaluate_schedule(resources), dg.SkipReason)

    box = _correct(resources["catalog"], "box")
    request = _evaluate_schedule(resources)
    assert isinstance(request, dg.RunRequest)
    assert [k.to_user_string() for k in request.asset_selection] == [
        "detector_dataset",
        "instrument_detector",
    ]
    assert request.tags["surg/new_corrections"] == "detector_dataset=1"
    assert request.run_key == "weekly-retraining-2026-12-07"

    # Once a snapshot holds that correction, there is nothing to retrain.
    _snapshot(resources, tmp_path, "detector_dataset", box)
    assert isinstance(_evaluate_schedule(resources), dg.SkipReason)

    # A phase correction retrains the phase models only.
    _correct(resources["catalog"], "phase")
    request = _evaluate_schedule(resources)
    assert [k.to_user_string() for k in request.asset_selection] == [
        "phase_dataset",
        "phase_model",
        "out_of_body_model",
    ]


def _approve_detector(resources: dict, reference: dict | None) -> str:
    card = {"reference_statistics": reference} if reference else {}
    row = resources["registry"].register(
        "instrument_detector",
        {"weights.pt": default_weights_file("instrument_detector")},
        card=card,
        status="Approved",
        decided_by="dr-data",
    )
    return row.version


def _detections(
    resources: dict,
    instance: dg.DagsterInstance,
    case_id: str,
    version: str,
    classes: list[int],
    confidence: tuple[float, float],
) -> None:
    rng = random.Random(case_id)
    rows = [
        {
            "case_id": case_id,
            "frame_index": i,
            "t_s": i / 5,
            "class_id": c,
            "class_name": INSTRUMENT_CLASSES[c],
            "confidence": rng.uniform(*confidence),
            "x1": 10.0,
            "y1": 10.0,
            "x2": 50.0,
            "y2": 60.0,
            "mask": None,
            "model_version": f"instrument_detector:{version}",
        }
        for i, c in enumerate(classes)
    ]
    key = metadata_key(case_id, "detections.parquet")
    resources["blob_store"].put_bytes(key, to_parquet_bytes(table_from_rows(DETECTIONS, rows)))
    instance.add_dynamic_partitions("cases", [case_id])
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "instrument_detections",
            partition=case_id,
            metadata={"key": key, "model_version": f"instrument_detector:{version}"},
        )
    )


def _drift(resources: dict, instance: dg.DagsterInstance, cursor: str | None):
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={k: resources[k] for k in ("blob_store", "registry")},
    ) as context:
        return detection_drift_sensor(context)


def test_drift_sensor_requests_retraining_only_past_the_psi_threshold(resources: dict) -> None:
    rng = random.Random(0)
    balanced = [rng.randrange(4) for _ in range(400)]
    reference = detection_statistics(balanced, [rng.uniform(0.6, 0.95) for _ in balanced], 7)
    version = _approve_detector(resources, reference)
    with dg.DagsterInstance.ephemeral() as instance:
        assert isinstance(_drift(resources, instance, None), dg.SkipReason)  # nothing analysed

        # Cases that look like the held-out split: no drift, but the cursor moves on.
        for n in range(3):
            classes = [rng.randrange(4) for _ in range(150)]
            _detections(resources, instance, f"c00000000000000a{n}", version, classes, (0.6, 0.95))
        calm = _drift(resources, instance, None)
        assert not calm.run_requests and "no drift" in calm.skip_reason.skip_message
        # Nothing new since that evaluation: not evaluated again.
        assert isinstance(_drift(resources, instance, calm.cursor), dg.SkipReason)

        # New cases: one instrument only, barely confident -> a retraining request.
        for n in range(3):
            _detections(
                resources, instance, f"c00000000000000b{n}", version, [6] * 200, (0.25, 0.4)
            )
        drifted = _drift(resources, instance, calm.cursor)
        (request,) = drifted.run_requests
        assert [k.to_user_string() for k in request.asset_selection] == [
            "detector_dataset",
            "instrument_detector",
        ]
        assert float(request.tags["surg/drift_score"]) > 0.25
        assert int(drifted.cursor) > int(calm.cursor)


def test_drift_sensor_skips_a_detector_without_reference_statistics(resources: dict) -> None:
    _approve_detector(resources, None)
    with dg.DagsterInstance.ephemeral() as instance:
        result = _drift(resources, instance, None)
    assert "no reference statistics" in result.skip_message


def test_model_approved_sensor_reruns_only_cases_analysed_with_another_version(
    resources: dict,
) -> None:
    assert model_approved_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    catalog = resources["catalog"]
    old = _approve_detector(resources, None)
    new = _approve_detector(resources, None)
    with dg.DagsterInstance.ephemeral() as instance:
        for case_id, version in (("c00000000000000c1", old), ("c00000000000000c2", new)):
            catalog.ensure_case(case_id)
            catalog.set_status(case_id, "ready")
            _detections(resources, instance, case_id, version, [0, 1], (0.5, 0.9))
        with dg.build_sensor_context(
            instance=instance,
            cursor=None,
            resources={k: resources[k] for k in ("catalog", "registry")},
        ) as context:
            result = model_approved_sensor(context)
        (request,) = result.run_requests
        assert request.partition_key == "c00000000000000c1"
        assert [k.to_user_string() for k in request.asset_selection] == [
            "instrument_detections",
            "instrument_tracks",
            "case_analysis",
            "case_report",
        ]
        with dg.build_sensor_context(
            instance=instance,
            cursor=result.cursor,
            resources={k: resources[k] for k in ("catalog", "registry")},
        ) as again:
            assert isinstance(model_approved_sensor(again), dg.SkipReason)
