"""Phase side of the loop: phase and out-of-body labels -> phase_dataset -> both models."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import onnxruntime as ort
import torch

from ml_models.events import OutOfBodyClassifier
from ml_models.formats import load_annotations
from ml_models.frames import predict_proba, to_tensor
from ml_models.phases import PhaseModel
from resources import datasets as snapshots
from resources.settings import load_settings
from surg_assets.assets.datasets import detector_dataset, phase_dataset, phase_intervals
from surg_assets.assets.ingest import processed_video_key
from surg_assets.assets.training import out_of_body_model, phase_model
from surg_assets.settings import build_resources

CASE = "c00000000000000d1"


def test_phase_labels_train_both_models_from_one_snapshot(
    surg_home: Path, synthetic_case: Path
) -> None:
    resources = build_resources(load_settings())
    catalog, blob_store, registry = (resources[k] for k in ("catalog", "blob_store", "registry"))
    catalog.ensure_case(CASE)
    blob_store.put_file(processed_video_key(CASE), synthetic_case / "video.mp4")
    for path in ("phase.txt", "events.json"):
        records = load_annotations(synthetic_case / path, fps=25).to_records()
        for r in records:
            r["case_id"] = CASE
        catalog.add_annotations(records, dataset="synthetic-s7", author="lab")
    tiny = {
        "phase_model": {"config": {"encoder_epochs": 1, "temporal_epochs": 5}},
        "out_of_body_model": {"config": {"epochs": 1}},
    }
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [phase_dataset, phase_model, out_of_body_model],
            instance=instance,
            resources=resources,
            run_config={"ops": tiny},
        )
    assert result.success
    manifest = snapshots.read_manifest(blob_store, "phase_dataset")
    assert manifest["version"] == "v1" and manifest["out_of_body_cases"] == [CASE]
    assert manifest["split_sizes"]["val"] >= 1 and manifest["split_sizes"]["train"] >= 1
    # One frame per labelled second, split in 10 s blocks of the single case.
    folder = surg_home / "snapshot"
    snapshots.download(blob_store, manifest, folder)
    frames = sum(np.load(p).shape[0] for p in folder.rglob("frames.npy"))
    assert frames == manifest["seconds"][CASE] > 20
    checks = {c.asset_key.to_user_string(): c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"phase_model": True, "out_of_body_model": True}
    for name, metric in (
        ("phase_model", "val_frame_accuracy"),
        ("out_of_body_model", "val_accuracy"),
    ):
        (row,) = registry.versions(name)
        assert row.status == "Pending" and row.dataset_version == "phase_dataset:v1"
        assert 0.0 <= row.metrics[metric] <= 1.0
        assert blob_store.exists(f"models/{name}/v1/weights.pt")
    # The ONNX graphs give what the PyTorch bundles give, on the snapshot's own frames.
    sample = np.load(next(folder.rglob("frames.npy")))[:30]
    with (
        blob_store.local_copy("models/phase_model/v1/weights.pt") as pt,
        blob_store.local_copy("models/phase_model/v1/model.onnx") as graph,
    ):
        expected = PhaseModel.load(pt).predict_images(sample)
        (got,) = ort.InferenceSession(str(graph)).run(None, {"frames": to_tensor(sample).numpy()})
    assert got.shape == expected.shape and np.allclose(got, expected, atol=1e-4)
    with (
        blob_store.local_copy("models/out_of_body_model/v1/weights.pt") as pt,
        blob_store.local_copy("models/out_of_body_model/v1/model.onnx") as graph,
    ):
        model = OutOfBodyClassifier.load(pt).model
        expected = predict_proba(model, sample)
        (logits,) = ort.InferenceSession(str(graph)).run(
            None, {"frames": to_tensor(sample).numpy()}
        )
    assert np.allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), expected, atol=1e-4)


def test_a_dataset_without_labelled_frames_fails_with_what_to_do(surg_home: Path) -> None:
    resources = build_resources(load_settings())
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [detector_dataset], instance=instance, resources=resources, raise_on_error=False
        )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("detector_dataset: no labelled frame")
    assert "surg annotations import" in message
    assert snapshots.versions(resources["blob_store"], "detector_dataset") == []


def test_reviewed_phases_enter_the_dataset_by_their_cholec80_name() -> None:
    """The stored id of a reviewed segment is the case's own vocabulary's: another procedure's
    phase must not become the Cholec80 phase that shares its number."""

    def review(*segments: tuple[int | None, str, float, float]) -> dict:
        payload = [
            {"phase_id": i, "phase_name": n, "start_s": a, "end_s": b} for i, n, a, b in segments
        ]
        return {"id": 9, "source": "review", "kind": "phase", "payload": {"segments": payload}}

    cholec = review((2, "Clipping and cutting", 0.0, 5.0), (None, "Preparation", 5.0, 9.0))
    assert phase_intervals([cholec], 25.0)[0] == [(0.0, 5.0, 2), (5.0, 9.0, 0)]
    poem = review((0, "submuc_inject", 0.0, 5.0), (2, "myotomy", 5.0, 9.0))
    phases, _, ids = phase_intervals([poem], 25.0)
    assert phases == [] and ids == [9]
