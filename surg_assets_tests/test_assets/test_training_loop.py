"""The MLOps loop end to end: corrections -> dataset snapshot -> trained model -> checks -> registry
-> approval -> the next case uses it; and a worse model refused with its reason."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ml_models.formats import load_annotations
from resources import datasets as snapshots
from resources.catalog import Annotation, AuditEntry
from resources.settings import load_settings
from surg_assets.assets.datasets import detector_dataset
from surg_assets.assets.ingest import processed_video_key
from surg_assets.assets.perception import instrument_detections
from surg_assets.assets.training import EVALUATION_CHECK, instrument_detector
from surg_assets.models import default_weights_file
from surg_assets.settings import build_resources

SURG = str(Path(sys.executable).with_name("surg"))
CASE = "c00000000000000a1"
NEXT_CASE = "c00000000000000b2"


def _lab(home: Path, synthetic_case: Path) -> dict:
    """A catalog with one case's imported labels and a reviewer's corrections."""
    resources = build_resources(load_settings())
    catalog, blob_store = resources["catalog"], resources["blob_store"]
    for case_id in (CASE, NEXT_CASE):
        catalog.ensure_case(case_id)
        blob_store.put_file(processed_video_key(case_id), synthetic_case / "video.mp4")
    records = load_annotations(synthetic_case / "yolo-seg").to_records()
    for r in records:
        r["case_id"] = CASE
    catalog.add_annotations(records, dataset="synthetic-s7", author="lab")
    hook = next(r for r in records if r["frame_index"] == 150 and r["class_name"] == "hook")
    with catalog.session() as s:
        s.add_all(
            [
                # The reviewer says the model's (here: the import's) hook on frame 150 is a grasper.
                Annotation(
                    case_id=CASE,
                    kind="box",
                    frame_index=150,
                    t_s=6.0,
                    author="rey",
                    source="review",
                    payload={
                        "action": "modify",
                        "box": [hook["x1"], hook["y1"], hook["x2"], hook["y2"]],
                        "class_name": "grasper",
                        "target": {
                            "frame_index": 150,
                            "class_id": 2,
                            "box": [hook["x1"], hook["y1"], hook["x2"], hook["y2"]],
                        },
                    },
                ),
                # A frame nobody labelled: the model found nothing, the reviewer adds a clipper.
                Annotation(
                    case_id=CASE,
                    kind="box",
                    frame_index=312,
                    t_s=12.48,
                    author="rey",
                    source="review",
                    payload={"action": "add", "box": [40, 50, 120, 140], "class_name": "clipper"},
                ),
            ]
        )
    return resources


def _label_of(blob_store, manifest: dict, stem: str) -> str:
    side = "train" if stem in manifest["split"]["train"] else "val"
    prefix = snapshots.snapshot_prefix(manifest["name"], manifest["version"])
    return blob_store.get_bytes(f"{prefix}/labels/{side}/{stem}.txt").decode()


def test_corrections_become_an_approved_model_that_the_next_case_uses(
    surg_home: Path, synthetic_case: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SURG_AUTO_APPROVE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    resources = _lab(surg_home, synthetic_case)
    blob_store, catalog, registry = (resources[k] for k in ("blob_store", "catalog", "registry"))

    with dg.DagsterInstance.ephemeral() as instance:
        # 1. A snapshot of the annotations; the same content is the same version.
        first = dg.materialize([detector_dataset], instance=instance, resources=resources)
        meta = first.asset_materializations_for_node("detector_dataset")[0].metadata
        assert meta["version"].value == "v1" and meta["new_version"].value is True
        again = dg.materialize([detector_dataset], instance=instance, resources=resources)
        meta = again.asset_materializations_for_node("detector_dataset")[0].metadata
        assert meta["version"].value == "v1" and meta["new_version"].value is False
        manifest = snapshots.read_manifest(blob_store, "detector_dataset", "v1")
        assert snapshots.versions(blob_store, "detector_dataset") == ["v1"]
        for rel, digest in manifest["files"].items():
            data = blob_store.get_bytes(f"datasets/detector_dataset/v1/{rel}")
            assert hashlib.sha256(data).hexdigest() == digest
        assert manifest["split_sizes"]["val"] > 0 and manifest["split_sizes"]["train"] > 0
        assert set(manifest["split"]["train"]).isdisjoint(manifest["split"]["val"])
        assert len(manifest["review_annotation_ids"]) == 2
        # The correction won: frame 150's hook is now a grasper; the added clipper is there.
        frame_150 = _label_of(blob_store, manifest, f"{CASE}_000150")
        assert frame_150.split()[0] == "0" and not frame_150.startswith("2 ")
        assert _label_of(blob_store, manifest, f"{CASE}_000312").split()[0] == "4"  # clipper

        # 2. A model fine-tuned from the shipped defaults: its checks pass, it is Pending.
        good_config = {"init": str(default_weights_file("instrument_detector")), "epochs": 1}
        trained = dg.materialize(
            [instrument_detector],
            instance=instance,
            resources=resources,
            run_config={"ops": {"instrument_detector": {"config": good_config}}},
        )
        checks = trained.get_asset_check_evaluations()
        assert [(c.check_name, c.passed) for c in checks] == [(EVALUATION_CHECK, True)]
        v1 = registry.versions("instrument_detector")[0]
        assert (v1.version, v1.status) == ("v1", "Pending")
        assert v1.dataset_version == "detector_dataset:v1"
        assert v1.metrics["box_map50"] > 0.05  # a real, if tiny, detector
        for stored in ("weights.pt", "model.onnx", "model_card.json"):
            assert blob_store.exists(f"models/instrument_detector/v1/{stored}")
        card = json.loads(blob_store.get_bytes("models/instrument_detector/v1/model_card.json"))
        assert card["reference_statistics"]["detections"] > 0
        assert list((surg_home / "wandb" / "wandb").glob("offline-run-*"))
        # Lineage: model -> dataset version -> annotations and their authors.
        found = snapshots.lineage(registry, blob_store, catalog, "instrument_detector", "v1")
        assert found["dataset"]["version"] == "v1"
        assert found["authors"]["rey"] == {"review": 2}
        assert found["authors"]["lab"]["import"] == len(found["annotation_ids"]) - 2

        # 3. A person approves it from the terminal; the next case's detections use it.
        approved = subprocess.run(
            [SURG, "models", "approve", "instrument_detector", "v1", "--by", "dr-data"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert approved.returncode == 0, approved.stderr
        instance.add_dynamic_partitions("cases", [NEXT_CASE])
        detected = dg.materialize(
            [instrument_detections],
            instance=instance,
            resources=resources,
            partition_key=NEXT_CASE,
            run_config={"ops": {"instrument_detections": {"config": {"runtime": "torch"}}}},
        )
        meta = detected.asset_materializations_for_node("instrument_detections")[0].metadata
        assert meta["model_version"].value == "instrument_detector:v1"

        # 4. A worse model (one epoch from scratch) is refused, with the reason, and audited.
        worse = dg.materialize(
            [instrument_detector],
            instance=instance,
            resources=resources,
            run_config={
                "ops": {
                    "instrument_detector": {
                        # Every instrument in fewer than all images is repeated.
                        "config": {"init": "scratch", "epochs": 1, "imgsz": 160, "repeat_rare": 1}
                    }
                }
            },
            raise_on_error=False,
        )
        assert not worse.success
        (check,) = worse.get_asset_check_evaluations()
        assert not check.passed
        v2 = registry.versions("instrument_detector")[0]
        assert (v2.version, v2.status) == ("v2", "Rejected")
        assert "box_map50 regresses against v1" in v2.reason
        card = json.loads(blob_store.get_bytes("models/instrument_detector/v2/model_card.json"))
        repeated = card["repeat_rare"]
        assert repeated["entries"] > repeated["images"] == manifest["split_sizes"]["train"]
        assert registry.newest_approved("instrument_detector").version == "v1"
    with catalog.session() as s:
        decisions = [
            (e.action, e.outcome, e.detail.get("version"))
            for e in s.query(AuditEntry).order_by(AuditEntry.id)
        ]
    assert ("model.register", "pending", "v1") in decisions
    assert ("model.register", "rejected", "v2") in decisions
    assert any(a == "model.approve" and v == "v1" for a, _, v in decisions)


def test_a_retry_after_a_failed_registration_uses_the_weights_already_trained(
    surg_home: Path, synthetic_case: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training is the expensive part: when the registry fails after it (here its database is
    down), the retry scores and registers the same weights instead of training again."""
    from surg_assets.assets.training import DetectorTrainingConfig, _training_request
    from surg_assets_tests.conftest import fail_registration_then_retry

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    resources = _lab(surg_home, synthetic_case)
    blob_store = resources["blob_store"]
    config = {"init": str(default_weights_file("instrument_detector")), "epochs": 1, "imgsz": 160}
    run_config = {"ops": {"instrument_detector": {"config": config}}}
    failed, kept_blobs, retried, logs = fail_registration_then_retry(
        instrument_detector, detector_dataset, resources, surg_home, run_config
    )
    assert not failed.success
    assert "port 9" in str(failed.get_step_failure_events()[0].step_failure_data)
    (kept,) = [k for k in kept_blobs if k.startswith("training-runs/instrument_detector/")
               and k.endswith("/weights.pt")]  # fmt: skip
    weights = kept_blobs[kept]
    assert any("failed after training: its weights are used" in m for m in logs)
    assert not any(m.startswith("training on detector_dataset") for m in logs)
    meta = retried.asset_materializations_for_node("instrument_detector")[0].metadata
    assert meta["trained_by_earlier_attempt"].value is True
    version = meta["model_version"].value.split(":")[1]
    assert blob_store.get_bytes(f"models/instrument_detector/{version}/weights.pt") == weights
    # Registered: nothing is kept any longer, and the next request trains afresh.
    assert blob_store.list_prefix("training-runs/") == []

    # One request, one key: another seed is another request; another device is not.
    manifest = snapshots.read_manifest(blob_store, "detector_dataset", "v1")
    key = _training_request("instrument_detector", manifest, DetectorTrainingConfig(**config),
                            config["init"])  # fmt: skip
    assert kept == f"{key}/weights.pt"
    for change, same in (
        ({"seed": 1}, False),
        ({"epochs": 2}, False),
        ({"repeat_rare": 0.3}, False),
        ({"device": "cpu"}, True),
    ):
        other = DetectorTrainingConfig(**{**config, **change})
        assert (
            _training_request("instrument_detector", manifest, other, config["init"]) == key
        ) is same
