"""Phase side of the loop: phase and out-of-body labels -> phase_dataset -> both models."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import onnxruntime as ort
import pytest
import torch

from ml_models.events import OutOfBodyClassifier
from ml_models.formats import load_annotations
from ml_models.formats.cholec80 import PHASES, phase_index, vocabulary_of
from ml_models.frames import predict_proba, to_tensor
from ml_models.phases import PhaseModel
from resources import datasets as snapshots
from resources.registry import ModelRegistry
from resources.settings import load_settings
from surg_assets.assets.datasets import detector_dataset, phase_dataset, phase_intervals
from surg_assets.assets.ingest import processed_video_key
from surg_assets.assets.training import _phase_baseline, out_of_body_model, phase_model
from surg_assets.models import default_weights_file
from surg_assets.settings import build_resources

CASE = "c00000000000000d1"


def _labelled(synthetic_case: Path) -> dict:
    """Resources over a catalog holding one case's phase and out-of-body labels."""
    resources = build_resources(load_settings())
    catalog, blob_store = resources["catalog"], resources["blob_store"]
    catalog.ensure_case(CASE)
    blob_store.put_file(processed_video_key(CASE), synthetic_case / "video.mp4")
    for path in ("phase.txt", "events.json"):
        records = load_annotations(synthetic_case / path, fps=25).to_records()
        for r in records:
            r["case_id"] = CASE
        catalog.add_annotations(records, dataset="synthetic-s7", author="lab")
    return resources


def test_phase_labels_train_both_models_from_one_snapshot(
    surg_home: Path, synthetic_case: Path
) -> None:
    resources = _labelled(synthetic_case)
    catalog, blob_store, registry = (resources[k] for k in ("catalog", "blob_store", "registry"))
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
    assert manifest["classes"] == list(PHASES) and manifest["procedure"] == "cholecystectomy"
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
        card = json.loads(blob_store.get_bytes(f"models/{name}/v1/model_card.json"))
        assert card["trained_by_earlier_attempt"] is False and card["train_seconds"] > 0
    assert blob_store.list_prefix("training-runs/") == []  # registered: nothing kept
    # The registered figure is the model's accuracy on the held-out seconds, recomputed here
    # from the snapshot's val split and the stored weights (not a training figure).
    held_out = [
        (np.load(side / "frames.npy"), json.loads((side / "labels.json").read_text()))
        for side in (folder / "cases").glob("*/val")
    ]
    with blob_store.local_copy("models/phase_model/v1/weights.pt") as pt:
        stored = PhaseModel.load(pt)
        hits = np.concatenate(
            [stored.predict_images(f).argmax(1) == lab["phase_ids"] for f, lab in held_out]
        )
    (phase_row,) = registry.versions("phase_model")
    assert phase_row.metrics["val_frame_accuracy"] == pytest.approx(float(hits.mean()))
    assert phase_row.metrics["val_seconds"] == len(hits) == sum(len(f) for f, _ in held_out)
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


@pytest.mark.parametrize("swapped", [False, True], ids=["kept", "swapped"])
def test_a_retried_out_of_body_model_registers_the_weights_its_first_attempt_trained(
    surg_home: Path, synthetic_case: Path, swapped: bool
) -> None:
    """The phase-side assets keep their trained weights until registered, as the detector does
    (test_training_loop): a registry that fails after training costs no second training."""
    from surg_assets_tests.conftest import fail_registration_then_retry

    resources = _labelled(synthetic_case)
    blob_store = resources["blob_store"]
    run_config = {"ops": {"out_of_body_model": {"config": {"epochs": 1}}}}
    failed, kept, retried, logs = fail_registration_then_retry(
        out_of_body_model, phase_dataset, resources, surg_home, run_config, swapped
    )
    assert not failed.success
    assert sorted(k.rsplit("/", 1)[1] for k in kept) == ["training.json", "weights.pt"]
    assert all(k.startswith("training-runs/out_of_body_model/") for k in kept)
    weights = next(v for k, v in kept.items() if k.endswith("weights.pt"))
    meta = retried.asset_materializations_for_node("out_of_body_model")[0].metadata
    card = json.loads(blob_store.get_bytes("models/out_of_body_model/v1/model_card.json"))
    assert blob_store.list_prefix("training-runs/") == []
    if swapped:  # other bytes than the record names: never registered, trained afresh
        assert any("not the ones their record names: training" in m for m in logs)
        assert meta["trained_by_earlier_attempt"].value is False
        assert card["trained_by"] == card["registered_by"] == f"dagster run {retried.run_id}"
        return
    assert any("failed after training: its weights are used" in m for m in logs)
    assert meta["trained_by_earlier_attempt"].value is True
    assert blob_store.get_bytes("models/out_of_body_model/v1/weights.pt") == weights
    # The card says who trained them, not only who registered them.
    assert card["trained_by"] == f"dagster run {failed.run_id}"
    assert card["registered_by"] == f"dagster run {retried.run_id}"


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


def test_reviewed_phases_enter_the_dataset_by_their_name() -> None:
    """The stored id of a reviewed segment is the case's own vocabulary's: another procedure's
    phase must not become the Cholec80 phase that shares its number."""

    def review(*segments: tuple[int | None, str, float, float]) -> dict:
        payload = [
            {"phase_id": i, "phase_name": n, "start_s": a, "end_s": b} for i, n, a, b in segments
        ]
        return {"id": 9, "source": "review", "kind": "phase", "payload": {"segments": payload}}

    poem = review((0, "submuc_inject", 0.0, 5.0), (2, "myotomy", 5.0, 9.0))
    phases, _, ids = phase_intervals([poem], 25.0)
    assert phases == [(0.0, 5.0, "submuc_inject"), (5.0, 9.0, "myotomy")] and ids == [9]
    # Numbered in the snapshot's vocabulary, never by the stored id.
    vocabulary = vocabulary_of(n for *_, n in phases)
    assert [phase_index(n, vocabulary) for *_, n in phases] == [0, 1]
    cholec = review((2, "Clipping and cutting", 0.0, 5.0), (None, "Preparation", 5.0, 9.0))
    phases, _, _ = phase_intervals([cholec], 25.0)
    vocabulary = vocabulary_of(n for *_, n in phases)
    assert vocabulary == list(PHASES)
    assert [phase_index(n, vocabulary) for *_, n in phases] == [2, 0]
    # Cholec80's file spelling is the same phase.
    assert phase_index("CalotTriangleDissection", vocabulary) == 1


def _approve_cholecystectomy_model_claiming_perfect_accuracy(registry: ModelRegistry) -> None:
    """The shipped phase model, Approved with a score no candidate can beat."""
    registry.register(
        "phase_model",
        {"weights.pt": default_weights_file("phase_model")},
        card={"name": "phase_model"},
        metrics={"val_frame_accuracy": 1.0},
        status="Approved",
        decided_by="bootstrap",
    )


POEM_STEPS = ("submuc_inject", "muc_incis", "tunnel", "myotomy", "mucos_close", "clip", "other")


def test_a_procedures_cases_make_a_dataset_and_model_in_its_own_phases(
    surg_home: Path, synthetic_case: Path
) -> None:
    """The retraining loop serves any procedure: phase_dataset takes the configured
    procedure's cases, numbers their phases in the order they first appear, and phase_model
    learns those names. The Approved cholecystectomy model is not its yardstick."""
    resources = build_resources(load_settings())
    catalog, blob_store, registry = (resources[k] for k in ("catalog", "blob_store", "registry"))
    poem_case = "c00000000000000e2"
    # An Approved cholecystectomy model claiming a perfect score: compared with it, any
    # POEM candidate would read as a regression.
    _approve_cholecystectomy_model_claiming_perfect_accuracy(registry)
    records = load_annotations(synthetic_case / "phase.txt", fps=25).to_records()
    for case_id, procedure in ((CASE, "cholecystectomy"), (poem_case, "poem")):
        catalog.ensure_case(case_id, procedure=procedure)
        blob_store.put_file(processed_video_key(case_id), synthetic_case / "video.mp4")
        rows = [{**r, "case_id": case_id} for r in records]
        if procedure == "poem":  # the same intervals, named as POEMNet's annotators name them
            rows = [{**r, "class_name": POEM_STEPS[r["phase_id"]], "phase_id": None} for r in rows]
        catalog.add_annotations(rows, dataset=f"{procedure}-labels", author="lab")
    expected = list(dict.fromkeys(POEM_STEPS[r["phase_id"]] for r in records))
    assert len(expected) >= 2
    run_config = {
        "ops": {
            "phase_dataset": {"config": {"procedure": "poem"}},
            "phase_model": {"config": {"encoder_epochs": 1, "temporal_epochs": 5}},
        }
    }
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [phase_dataset, phase_model],
            instance=instance,
            resources=resources,
            run_config=run_config,
        )
    assert result.success
    manifest = snapshots.read_manifest(blob_store, "phase_dataset")
    assert manifest["cases"] == [poem_case] and manifest["procedure"] == "poem"
    assert manifest["classes"] == expected
    # Every second carries the id of its POEM name, not the Cholec80 id it was imported with.
    folder = surg_home / "poem-snapshot"
    snapshots.download(blob_store, manifest, folder)
    starts = sorted((r["t_s"], POEM_STEPS[r["phase_id"]]) for r in records)
    for labels_file in folder.rglob("labels.json"):
        labels = json.loads(labels_file.read_text())
        for t, got in zip(labels["times"], labels["phase_ids"], strict=True):
            name = [n for start, n in starts if start <= t][-1]
            assert got == expected.index(name)
    (poem_version,) = [v for v in registry.versions("phase_model") if v.version != "v1"]
    assert poem_version.status == "Pending" and not poem_version.reason
    prefix = f"models/phase_model/{poem_version.version}"
    card = json.loads(blob_store.get_bytes(f"{prefix}/model_card.json"))
    assert card["phases"] == expected and card["procedure"] == "poem"
    with blob_store.local_copy(f"{prefix}/weights.pt") as pt:
        assert list(PhaseModel.load(pt).phases) == expected


def test_the_approved_phase_model_is_scored_on_the_same_seconds_when_it_knows_the_phases(
    surg_home: Path,
) -> None:
    registry = build_resources(load_settings())["registry"]
    context = dg.build_asset_context()
    assert _phase_baseline(registry, list(PHASES), lambda m: 0.5, context) is None
    _approve_cholecystectomy_model_claiming_perfect_accuracy(registry)
    seen: list[list[str]] = []

    def score(model: PhaseModel) -> float:
        seen.append(list(model.phases))
        return 0.625

    assert _phase_baseline(registry, list(PHASES), score, context) == {"val_frame_accuracy": 0.625}
    assert seen == [list(PHASES)]
    assert _phase_baseline(registry, list(POEM_STEPS), score, context) == {}
    assert len(seen) == 1


def test_a_phase_model_under_its_gate_is_rejected_and_fails_its_check(
    surg_home: Path, synthetic_case: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SURG_MIN_PHASE_MODEL_VAL_FRAME_ACCURACY`` above any score: refused, the run fails."""
    monkeypatch.setenv("SURG_MIN_PHASE_MODEL_VAL_FRAME_ACCURACY", "1.01")
    resources = build_resources(load_settings())
    catalog, blob_store, registry = (resources[k] for k in ("catalog", "blob_store", "registry"))
    catalog.ensure_case(CASE)
    blob_store.put_file(processed_video_key(CASE), synthetic_case / "video.mp4")
    records = load_annotations(synthetic_case / "phase.txt", fps=25).to_records()
    catalog.add_annotations([{**r, "case_id": CASE} for r in records], dataset="s", author="lab")
    tiny = {"phase_model": {"config": {"encoder_epochs": 1, "temporal_epochs": 5}}}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [phase_dataset, phase_model],
            instance=instance,
            resources=resources,
            run_config={"ops": tiny},
            raise_on_error=False,
        )
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    (row,) = registry.versions("phase_model")
    assert row.status == "Rejected" and "val_frame_accuracy" in (row.reason or "")
