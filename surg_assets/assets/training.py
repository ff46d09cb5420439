"""Training assets: models trained from a dataset snapshot, evaluated, and registered.

Each asset trains from one version of its dataset (``detector_dataset`` / ``phase_dataset``)
with typed hyperparameters, logs the run to Weights & Biases (dagster-wandb; offline unless
``WANDB_API_KEY`` is set), evaluates on the snapshot's held-out split and registers the version
under the registry's governance: Pending when it clears the thresholds and does not regress
against the current Approved version, otherwise Rejected with the reason. The evaluation is a
blocking asset check of the same step, so a refused model fails its run visibly. Every decision
goes to the audit log.
"""

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import dagster as dg
import numpy as np

from ml_models.datasets import sha256_file
from ml_models.errors import InputError
from ml_models.formats.cholec80 import PHASES
from resources import datasets as snapshots
from resources.audit import AuditLog
from resources.blob_store import BlobStore
from resources.catalog import Catalog
from resources.experiments import wandb_dir, wandb_mode, wandb_project
from resources.registry import ModelRegistry
from resources.settings import env_float
from surg_assets.assets.datasets import detector_dataset, phase_dataset
from surg_assets.models import approved_model
from surg_assets.placement import GPU_OP_TAGS, GPU_POOL

if TYPE_CHECKING:  # torch loads only where a model trains
    from ml_models.phases import PhaseModel

EVALUATION_CHECK = "evaluation_clears_gates"

# The held-out metric a version must reach (``SURG_MIN_<MODEL>_<METRIC>``, default 0) and may
# not regress on against the current Approved version.
PRIMARY_METRIC = {
    "instrument_detector": "box_map50",
    "phase_model": "val_frame_accuracy",
    "out_of_body_model": "val_accuracy",
}


def thresholds(name: str, metric: str | None = None) -> dict[str, float]:
    """The registration threshold of a metric (default: the model's primary one), from settings."""
    metric = metric or PRIMARY_METRIC[name]
    return {metric: env_float(f"SURG_MIN_{name.upper()}_{metric.upper()}", 0.0)}


def auto_approve() -> bool:
    """``SURG_AUTO_APPROVE``: approve a version that clears every gate without a person."""
    return os.environ.get("SURG_AUTO_APPROVE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_spec(name: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        EVALUATION_CHECK,
        asset=name,
        blocking=True,
        description="Held-out metrics clear the thresholds and do not regress against the "
        "current Approved version (else the version is registered Rejected with the reason).",
    )


class DetectorTrainingConfig(dg.Config):
    """Hyperparameters of the instrument detector (tiny defaults; raise epochs for real use)."""

    dataset_version: str = "latest"
    init: str = "approved"  # "approved" (fine-tune the newest Approved), "scratch", or a .pt path
    epochs: int = 3
    imgsz: int = 320
    batch: int = 8
    device: str = "auto"
    seed: int = 0
    # Repeat images of rare instruments in each epoch (repeat factor sampling): instruments in
    # fewer than this fraction of the training images; None trains on each image once.
    repeat_rare: float | None = None


class PhaseTrainingConfig(dg.Config):
    """Hyperparameters of the two-stage phase model."""

    dataset_version: str = "latest"
    encoder_epochs: int = 2
    temporal_epochs: int = 20
    seed: int = 0


class OutOfBodyTrainingConfig(dg.Config):
    """Hyperparameters of the out-of-body classifier."""

    dataset_version: str = "latest"
    epochs: int = 3
    seed: int = 0


class _Tracked:
    """One W&B run of a training step (the SDK comes from dagster-wandb's ``wandb_resource``)."""

    def __init__(self, wandb: dict[str, Any], name: str, run_id: str, config: dict[str, Any]):
        sdk = wandb["sdk"]
        self.run = sdk.init(
            project=wandb_project(),
            name=f"{name}-{run_id[:8]}",
            job_type="train",
            dir=str(wandb_dir()),
            mode=wandb_mode(),
            config=config,
            tags=[name, str(config.get("dataset"))],
            reinit="finish_previous",
        )

    def log(self, values: dict[str, float], step: int | None = None) -> None:
        self.run.log(values, step=step)

    def finish(self, summary: dict[str, Any]) -> dict[str, str]:
        for k, v in summary.items():
            self.run.summary[k] = v
        info = {"wandb_run_id": self.run.id, "wandb_mode": wandb_mode()}
        url = getattr(self.run, "url", None)
        if url:
            info["wandb_url"] = url
        self.run.finish()
        return info


def _card(name: str, manifest: dict[str, Any], context: dg.AssetExecutionContext, **extra: Any):
    return {
        "name": name,
        "dataset_version": f"{manifest['name']}:{manifest['version']}",
        "dataset_content_hash": manifest["content_hash"],
        "split_sizes": manifest.get("split_sizes"),
        **_provenance(context),
        **extra,
    }


def _provenance(context: dg.AssetExecutionContext) -> dict[str, str]:
    """Which run trained a model, when, and on what machine (model cards)."""
    import torch

    return {
        "trained_by": f"dagster run {context.run_id}",
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
    }


def _govern(
    context: dg.AssetExecutionContext,
    name: str,
    files: dict[str, Path],
    card: dict[str, Any],
    metrics: dict[str, float],
    manifest: dict[str, Any],
    registry: ModelRegistry,
    catalog: Catalog,
    tracked: _Tracked,
    baseline: dict[str, float] | None = None,
    registered: Callable[[], None] | None = None,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Register under governance, audit the decision, and report materialization + check.

    ``baseline``: the Approved version's metrics on the same held-out data (``{}``: nothing
    comparable); None compares with the metrics it was registered with.
    ``registered``: called as soon as the registry holds the version, before anything else
    that could fail (a retry must not register the same weights twice).
    """
    dataset_version = f"{manifest['name']}:{manifest['version']}"
    gates = thresholds(name)
    row = registry.register_candidate(
        name,
        files,
        card=card,
        metrics=metrics,
        primary_metric=PRIMARY_METRIC[name],
        thresholds=gates,
        dataset_version=dataset_version,
        auto_approve=auto_approve(),
        baseline=baseline,
    )
    if registered is not None:
        registered()
    AuditLog(catalog).record(
        row.decided_by or "evaluation",
        "model.register",
        outcome=row.status.lower(),
        source="dagster",
        detail={
            "model": name,
            "version": row.version,
            "status": row.status,
            "reason": row.reason,
            "dataset_version": dataset_version,
            "run_id": context.run_id,
        },
    )
    wandb_info = tracked.finish({"registry_version": row.version, "registry_status": row.status})
    verdict = f"{name} {row.version}: {row.status}" + (f" ({row.reason})" if row.reason else "")
    context.log.info(verdict)
    figures = {k: round(float(v), 4) for k, v in metrics.items()}
    yield dg.MaterializeResult(
        metadata={
            "model_version": f"{name}:{row.version}",
            "status": row.status,
            "reason": row.reason or "",
            "uri": row.uri,
            "dataset_version": dataset_version,
            "metrics": dg.MetadataValue.json(figures),
            "thresholds": dg.MetadataValue.json(gates),
            **{k: card[k] for k in ("train_seconds", "trained_by_earlier_attempt") if k in card},
            **wandb_info,
        },
        data_version=dg.DataVersion(row.version),
    )
    yield dg.AssetCheckResult(
        check_name=EVALUATION_CHECK,
        passed=row.status != "Rejected",
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict,
        metadata={
            "model_version": f"{name}:{row.version}",
            "status": row.status,
            "reason": row.reason or "",
            "metrics": dg.MetadataValue.json(figures),
            "thresholds": dg.MetadataValue.json(gates),
        },
    )


def _snapshot(blob_store: BlobStore, name: str, version: str, dest: Path) -> dict[str, Any]:
    """The manifest of the requested version, its files copied to ``dest`` and verified."""
    manifest = snapshots.read_manifest(blob_store, name, version)
    snapshots.download(blob_store, manifest, dest)
    return manifest


# Weights an attempt trained, kept in the lake until they are registered: a retry (or a re-run
# with the same request) after a failure past training reuses them instead of training again.
TRAINED_PREFIX = "training-runs"


def _training_request(
    name: str, manifest: dict[str, Any], config: dg.Config, init: str = ""
) -> str:
    """The key of one training request: the model, the snapshot's content, the hyperparameters,
    the starting weights' bytes and the code that trains (this package, torch, ultralytics), so
    that weights kept by an older release are never taken for this one's. The device is left
    out: where it ran does not change what was asked for."""
    started_from = sha256_file(init) if Path(init).is_file() else init
    request = {
        "model": name,
        "dataset": manifest["content_hash"],
        "config": {k: v for k, v in config.model_dump().items() if k != "device"},
        "init": started_from,
        "code": {pkg: _version(pkg) for pkg in ("surg-assets", "torch", "ultralytics")},
    }
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    return f"{TRAINED_PREFIX}/{name}/{digest[:32]}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


class _Trained(NamedTuple):
    """Weights ready to score: trained now, or by an earlier attempt at the same request."""

    weights: Path
    metrics: dict[str, float]  # what training itself reported (ultralytics' last validation)
    seconds: float
    reused: bool
    provenance: dict[str, Any]  # who trained them, when, where (for the model card)

    def card_fields(self, context: dg.AssetExecutionContext) -> dict[str, Any]:
        """What the model card says of the training: its run (perhaps an earlier attempt's),
        time, machine and seconds, and the run that registers it."""
        return {
            "train_seconds": self.seconds,
            "trained_by_earlier_attempt": self.reused,
            **self.provenance,
            "registered_by": f"dagster run {context.run_id}",
        }


def _train_once(
    context: dg.AssetExecutionContext,
    blob_store: BlobStore,
    request: str,
    dest: Path,
    train: Callable[[], tuple[Path, dict[str, float]]],
) -> _Trained:
    """Train (``train`` returns the weights file and its metrics), or take the weights an
    earlier attempt trained for the same request (``_training_request``) and did not register.

    A failure after training (scoring, export, the registry) must not cost the training again.
    The weights stay under the request's key until ``_govern`` registers them. Kept weights
    that are incomplete or not the ones their record names are not used: training starts afresh.
    """
    kept = _kept_attempt(context, blob_store, request, dest)
    if kept is not None:
        return kept
    started = time.perf_counter()
    weights, metrics = train()
    seconds = round(time.perf_counter() - started, 1)
    provenance = _provenance(context)
    blob_store.put_file(f"{request}/weights.pt", weights)
    # training.json last, naming the weights' digest: weights without it, or other weights
    # than it names, are not a finished attempt.
    record = {
        "metrics": metrics,
        "train_seconds": seconds,
        "weights_sha256": sha256_file(weights),
        "provenance": provenance,
    }
    blob_store.put_bytes(f"{request}/training.json", json.dumps(record).encode())
    return _Trained(weights, metrics, seconds, False, provenance)


def _kept_attempt(
    context: dg.AssetExecutionContext, blob_store: BlobStore, request: str, dest: Path
) -> _Trained | None:
    """The weights an earlier attempt kept for ``request``, checked; None to train afresh."""
    # A listing, not a HEAD: on S3 a HEAD of a missing key is refused (403) to a role that may
    # list only some prefixes, and training-runs/ is one it may list.
    kept = {blob.key for blob in blob_store.list_prefix(f"{request}/")}
    if not {f"{request}/training.json", f"{request}/weights.pt"} <= kept:
        return None
    try:
        record = json.loads(blob_store.get_bytes(f"{request}/training.json"))
        blob_store.download(f"{request}/weights.pt", dest)
        intact = record["weights_sha256"] == sha256_file(dest)
    except Exception as exc:  # removed midway by another run or the expiry rule, unreadable
        context.log.warning(f"the weights kept for this request cannot be read ({exc!r})")
        intact = False
    if not intact:
        context.log.warning("the kept weights are not the ones their record names: training")
        return None
    context.log.info(
        f"an earlier attempt ({record['provenance']['trained_by']}) trained these weights "
        f"({record['train_seconds']:.0f} s) on the same snapshot, hyperparameters, starting "
        "weights and code, and failed after training: its weights are used"
    )
    return _Trained(dest, record["metrics"], record["train_seconds"], True, record["provenance"])


def _forget(context: dg.AssetExecutionContext, blob_store: BlobStore, request: str) -> None:
    """Drop the kept weights of a registered request (the registry holds them now).

    Best effort: the version is registered whatever happens here, and a failure must not fail
    the run (its retry would register the same weights again). The record goes first, so that
    what is left of a half-done deletion is never taken for a finished attempt.
    """
    try:
        blob_store.delete(f"{request}/training.json")
        for blob in blob_store.list_prefix(f"{request}/"):
            blob_store.delete(blob.key)
    except Exception as exc:
        context.log.warning(f"the kept weights of {request} were not removed ({exc!r})")


def _detector_init(config: DetectorTrainingConfig, registry: ModelRegistry) -> tuple[str, str]:
    """The weights (or architecture) training starts from, and how to describe it."""
    from ml_models.detector import DEFAULT_ARCH

    if config.init == "scratch":
        return DEFAULT_ARCH, f"scratch ({DEFAULT_ARCH})"
    if config.init == "approved":
        version, weights = approved_model(registry, "instrument_detector")
        return str(weights), f"fine-tuned from instrument_detector:{version.version}"
    if not Path(config.init).is_file():
        raise InputError(
            f"training config init={config.init!r} is not 'approved', 'scratch' or a weights "
            "file; pass one of those."
        )
    return config.init, f"fine-tuned from {Path(config.init).name}"


@dg.asset(
    deps=[detector_dataset],
    group_name="training",
    kinds={"pytorch", "onnx", "wandb"},
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    check_specs=[_check_spec("instrument_detector")],
    description="The instrument detector trained on a detector_dataset version, in the registry.",
)
def instrument_detector(
    context: dg.AssetExecutionContext,
    config: DetectorTrainingConfig,
    blob_store: BlobStore,
    catalog: Catalog,
    registry: ModelRegistry,
    wandb_resource: dg.ResourceParam[dict[str, Any]],
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Train (ultralytics), evaluate on the held-out split, export ONNX, register."""
    from ml_models.detector import evaluate_detector, onnx_graph, train_detector
    from ml_models.drift import reference_statistics
    from ml_models.formats.yolo import validation_images
    from ml_models.training import with_repeat_factors

    with tempfile.TemporaryDirectory(prefix="surg-train-") as tmp:
        data_dir = Path(tmp) / "data"
        manifest = _snapshot(blob_store, "detector_dataset", config.dataset_version, data_dir)
        if not manifest["split"]["val"] or not manifest["split"]["train"]:
            raise dg.Failure(
                description=f"detector_dataset {manifest['version']} has no held-out (or no "
                "training) images; annotate frames of another case, or raise val_fraction.",
                allow_retries=False,
            )
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(manifest["classes"]))
        data_yaml = data_dir / "data.yaml"
        data_yaml.write_text(
            f"path: {data_dir.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
        )
        train_yaml, repeated = data_yaml, None
        if config.repeat_rare is not None:
            train_yaml, repeated = with_repeat_factors(
                data_yaml, Path(tmp) / "repeated.yaml", config.repeat_rare
            )
        init, init_text = _detector_init(config, registry)
        dataset = f"detector_dataset:{manifest['version']}"
        tracked = _Tracked(
            wandb_resource,
            "instrument_detector",
            context.run_id,
            {**config.model_dump(), "dataset": dataset, "init_from": init_text},
        )
        request = _training_request("instrument_detector", manifest, config, init)

        def fit() -> tuple[Path, dict[str, float]]:
            context.log.info(f"training on {dataset} ({manifest['split_sizes']}), {init_text}")
            result = train_detector(
                train_yaml,
                Path(tmp) / "runs",
                epochs=config.epochs,
                imgsz=config.imgsz,
                init=init,
                batch=config.batch,
                device=config.device,
                seed=config.seed,
            )
            return result.weights, result.metrics

        trained = _train_once(context, blob_store, request, Path(tmp) / "trained.pt", fit)
        tracked.log({f"train/{k}": v for k, v in trained.metrics.items()})
        metrics = evaluate_detector(trained.weights, data_yaml, imgsz=config.imgsz, split="val")
        tracked.log({f"val/{k}": v for k, v in metrics.items()})
        val_images = validation_images(data_yaml)
        reference = reference_statistics(trained.weights, val_images, config.imgsz)
        onnx = onnx_graph(trained.weights, config.imgsz, Path(tmp) / "onnx")
        card = _card(
            "instrument_detector",
            manifest,
            context,
            init=init_text,
            hyperparameters=config.model_dump(),
            **trained.card_fields(context),
            evaluation="ultralytics validator on the snapshot's held-out split",
            onnx={"imgsz": config.imgsz, "dynamic_batch": True},
            reference_statistics=reference,
            repeat_rare=dataclasses.asdict(repeated) if repeated else None,
        )
        yield from _govern(
            context,
            "instrument_detector",
            {"weights.pt": trained.weights, "model.onnx": onnx},
            card,
            metrics,
            manifest,
            registry,
            catalog,
            tracked,
            registered=lambda: _forget(context, blob_store, request),
        )


def _phase_splits(
    root: Path, manifest: dict[str, Any]
) -> dict[str, list[tuple[np.ndarray, dict[str, Any]]]]:
    """Per split, the (frames, labels) of each case in a phase_dataset snapshot."""
    out: dict[str, list[tuple[np.ndarray, dict[str, Any]]]] = {"train": [], "val": []}
    for side, pairs in out.items():
        for key in manifest["split"][side]:
            folder = root / "cases" / key
            labels = json.loads((folder / "labels.json").read_text())
            pairs.append((np.load(folder / "frames.npy", allow_pickle=False), labels))
    return out


def _require_splits(splits: dict[str, list[Any]], manifest: dict[str, Any], what: str) -> None:
    if not splits["train"] or not splits["val"]:
        raise dg.Failure(
            description=f"phase_dataset {manifest['version']} has no held-out (or no training) "
            f"{what}; label phases of another case, or raise val_fraction.",
            allow_retries=False,
        )


@dg.asset(
    deps=[phase_dataset],
    group_name="training",
    kinds={"pytorch", "wandb"},
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    check_specs=[_check_spec("phase_model")],
    description=(
        "The phase model (frame CNN + causal and offline TCNs) trained on a phase_dataset version."
    ),
)
def phase_model(
    context: dg.AssetExecutionContext,
    config: PhaseTrainingConfig,
    blob_store: BlobStore,
    catalog: Catalog,
    registry: ModelRegistry,
    wandb_resource: dg.ResourceParam[dict[str, Any]],
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Train both stages on the training split; frame accuracy on the held-out split."""
    from ml_models.phases import PhaseModel, train_phase_model

    with tempfile.TemporaryDirectory(prefix="surg-train-") as tmp:
        root = Path(tmp) / "data"
        manifest = _snapshot(blob_store, "phase_dataset", config.dataset_version, root)
        splits = _phase_splits(root, manifest)
        _require_splits(splits, manifest, "seconds")
        dataset = f"phase_dataset:{manifest['version']}"
        tracked = _Tracked(
            wandb_resource,
            "phase_model",
            context.run_id,
            {**config.model_dump(), "dataset": dataset},
        )
        videos = [(f, np.asarray(lab["phase_ids"], np.int64)) for f, lab in splits["train"]]
        # The snapshot's vocabulary: Cholec80's phases, or another procedure's (older
        # snapshots predate the field and hold Cholec80's).
        vocabulary = list(manifest.get("classes") or PHASES)
        weights = Path(tmp) / "phase_model.pt"

        def fit() -> tuple[Path, dict[str, float]]:
            trained_model = train_phase_model(
                videos,
                vocabulary,
                encoder_epochs=config.encoder_epochs,
                temporal_epochs=config.temporal_epochs,
                seed=config.seed,
                log=context.log.info,
            )
            trained_model.save(weights)
            return weights, {}

        request = _training_request("phase_model", manifest, config)
        trained = _train_once(context, blob_store, request, weights, fit)
        model = PhaseModel.load(trained.weights)

        def accuracy(judged: "PhaseModel", side: str) -> float:
            hits = [
                judged.predict_images(f).argmax(1) == np.asarray(lab["phase_ids"])
                for f, lab in splits[side]
            ]
            return float(np.mean(np.concatenate(hits)))

        metrics = {
            "val_frame_accuracy": accuracy(model, "val"),
            "train_frame_accuracy": accuracy(model, "train"),
            "val_seconds": float(sum(len(f) for f, _ in splits["val"])),
        }
        baseline = _phase_baseline(registry, vocabulary, lambda m: accuracy(m, "val"), context)
        tracked.log(metrics)
        onnx = model.export_onnx(Path(tmp) / "model.onnx")
        card = _card(
            "phase_model",
            manifest,
            context,
            hyperparameters=config.model_dump(),
            **trained.card_fields(context),
            evaluation="frame accuracy at 1 fps on the snapshot's held-out split",
            procedure=manifest.get("procedure", "cholecystectomy"),
            phases=vocabulary,
            onnx={
                "input": "frames (T, 3, 96, 96), normalised",
                "output": "(T, phases) of the offline temporal model (the whole video at once)",
            },
        )
        yield from _govern(
            context,
            "phase_model",
            {"weights.pt": trained.weights, "model.onnx": onnx},
            card,
            metrics,
            manifest,
            registry,
            catalog,
            tracked,
            baseline,
            registered=lambda: _forget(context, blob_store, request),
        )


def _phase_baseline(
    registry: ModelRegistry,
    vocabulary: list[str],
    score: "Callable[[PhaseModel], float]",
    context: dg.AssetExecutionContext,
) -> dict[str, float] | None:
    """The Approved phase model's accuracy on the same held-out seconds; ``{}`` when it numbers
    other phases (a cholecystectomy model says nothing about POEM), None when there is none."""
    from ml_models.phases import PhaseModel

    if registry.newest_approved("phase_model") is None:
        return None
    version, weights = registry.approved_file("phase_model")
    current = PhaseModel.load(weights)
    if list(current.phases) != vocabulary:
        context.log.info(f"phase_model {version.version} knows other phases: not compared")
        return {}
    return {"val_frame_accuracy": score(current)}


@dg.asset(
    deps=[phase_dataset],
    group_name="training",
    kinds={"pytorch", "wandb"},
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    check_specs=[_check_spec("out_of_body_model")],
    description="The out-of-body classifier trained on the out-of-body flags of phase_dataset.",
)
def out_of_body_model(
    context: dg.AssetExecutionContext,
    config: OutOfBodyTrainingConfig,
    blob_store: BlobStore,
    catalog: Catalog,
    registry: ModelRegistry,
    wandb_resource: dg.ResourceParam[dict[str, Any]],
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Train the two-class frame CNN; accuracy on the held-out split."""
    import torch

    from ml_models.events import OutOfBodyClassifier
    from ml_models.frames import FRAME_SIZE, FrameCNN, export_onnx, predict_proba, train_classifier

    with tempfile.TemporaryDirectory(prefix="surg-train-") as tmp:
        root = Path(tmp) / "data"
        manifest = _snapshot(blob_store, "phase_dataset", config.dataset_version, root)
        splits = {
            side: [(f, lab) for f, lab in rows if lab.get("out_of_body") is not None]
            for side, rows in _phase_splits(root, manifest).items()
        }
        _require_splits(splits, manifest, "seconds with out-of-body labels")
        dataset = f"phase_dataset:{manifest['version']}"
        tracked = _Tracked(
            wandb_resource,
            "out_of_body_model",
            context.run_id,
            {**config.model_dump(), "dataset": dataset},
        )

        def stacked(side: str) -> tuple[np.ndarray, np.ndarray]:
            rows = splits[side]
            labels = [np.asarray(lab["out_of_body"], np.int64) for _, lab in rows]
            return np.concatenate([f for f, _ in rows]), np.concatenate(labels)

        images, labels = stacked("train")
        weights = Path(tmp) / "out_of_body_model.pt"

        def fit() -> tuple[Path, dict[str, float]]:
            torch.manual_seed(config.seed)  # the initial weights too, whatever ran before
            fresh = FrameCNN(2)
            losses = train_classifier(fresh, images, labels, epochs=config.epochs, seed=config.seed)
            for epoch, loss in enumerate(losses):
                tracked.log({"train/loss": loss}, step=epoch)
            OutOfBodyClassifier(fresh).save(weights)
            return weights, {"final_loss": float(losses[-1])} if losses else {}

        request = _training_request("out_of_body_model", manifest, config)
        trained = _train_once(context, blob_store, request, weights, fit)
        model = OutOfBodyClassifier.load(trained.weights).model
        val_images, val_labels = stacked("val")
        metrics = {
            "val_accuracy": float(
                (predict_proba(model, val_images).argmax(1) == val_labels).mean()
            ),
            "train_accuracy": float((predict_proba(model, images).argmax(1) == labels).mean()),
            "val_frames": float(len(val_labels)),
        }
        tracked.log(metrics)
        example = torch.zeros(1, 3, FRAME_SIZE, FRAME_SIZE)
        onnx = export_onnx(model, example, Path(tmp) / "model.onnx")
        card = _card(
            "out_of_body_model",
            manifest,
            context,
            hyperparameters=config.model_dump(),
            **trained.card_fields(context),
            evaluation="accuracy at 1 fps on the snapshot's held-out split",
            onnx={"input": "frames (N, 3, 96, 96), normalised", "output": "logits (N, 2)"},
        )
        yield from _govern(
            context,
            "out_of_body_model",
            {"weights.pt": trained.weights, "model.onnx": onnx},
            card,
            metrics,
            manifest,
            registry,
            catalog,
            tracked,
            registered=lambda: _forget(context, blob_store, request),
        )
