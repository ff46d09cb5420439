"""`surg train ...` and `surg models ...`: training commands and the registry from the terminal."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ml_models.datasets import sha256_file
from ml_models.errors import InputError

train_app = typer.Typer(
    help="Train models and register them (status Pending).", no_args_is_help=True
)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def _registry() -> Any:
    from resources.settings import load_settings
    from surg_assets.settings import build_resources

    return build_resources(load_settings(), deferred=False)["registry"]


def _card(name: str, command: list[str], dataset: str, **extra: Any) -> dict[str, Any]:
    """A model card: what was trained on what, how, where, and when."""
    import torch

    return {
        "name": name,
        "dataset_version": dataset,
        "command": " ".join(command),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
        **extra,
    }


# What a version must reach to be registered at all, and the metric compared with the current
# Approved version (a new version may not be worse). Thresholds can be raised in settings. A
# phase model trained with held-out cases is judged on val_frame_accuracy instead.
PRIMARY_METRIC = {
    "instrument_detector": "box_map50",
    "phase_model": "train_frame_accuracy",
    "out_of_body_model": "train_accuracy",
}


def _register(
    name: str,
    weights: Path,
    card: dict,
    metrics: dict,
    approve_as: str | None,
    baseline: dict[str, float] | None = None,
    primary: str | None = None,
    run: TrainingRun | None = None,
    registered: Callable[[], None] | None = None,
) -> None:
    """Register under governance; ``--approve-as`` records a person's approval at once.

    ``baseline``: the Approved version's metrics on the candidate's own evaluation data.
    ``primary``: the metric it is judged on, when not the model's usual one.
    ``run``: the training run, told what is about to be registered so that a failure from
    here on keeps it registrable (``surg models register-kept``); with a ``baseline``, it is
    refused when the Approved version it was compared with has been replaced since.
    ``registered``: called as soon as the registry holds the version, before anything that
    could still fail (the approval, the output), so a kept run is never registered twice.
    """
    primary = primary or PRIMARY_METRIC[name]
    if run is not None:
        run.registration = {
            "name": name,
            "card": card,
            "metrics": metrics,
            "baseline": baseline,
            "baseline_version": run.approved_version,
            "primary": primary,
        }
    from surg_assets.assets.training import thresholds

    registry = _registry()
    if run is not None and baseline is not None:
        # Compared with the version Approved when training began; another may be since.
        now = registry.newest_approved(name)
        if (now.version if now else None) != run.approved_version:
            raise InputError(
                f"{name} {now.version if now else 'none'} was Approved while this model "
                f"trained, and it was compared with {run.approved_version}; train again to "
                "compare it with the version Approved now."
            )
    row = registry.register_candidate(
        name,
        {"weights.pt": weights},
        card=card,
        metrics=metrics,
        primary_metric=primary,
        thresholds=thresholds(name, primary),
        dataset_version=card.get("dataset_version"),
        auto_approve=os.environ.get("SURG_AUTO_APPROVE", "").lower() in ("1", "true", "yes"),
        baseline=baseline,
    )
    if run is not None:  # the registry holds the weights now: nothing left to keep
        run.weights = None
    if registered is not None:
        registered()
    reason = f" ({row.reason})" if row.reason else ""
    err.print(
        f"{name} {row.version} registered: {row.status}{reason}; metrics {json.dumps(metrics)}"
    )
    if approve_as and row.status == "Pending":
        row = registry.decide(name, row.version, "Approved", approve_as)
        _audit(registry, approve_as, "model.approve", row.name, row.version)
        err.print(f"{name} {row.version} approved by {approve_as}")
    out.print(row.version)


def _approved_or_none(name: str) -> tuple[Any, Path] | None:
    """The newest Approved version of NAME and its local weights, None when there is none.

    Training commands call it before they train: a catalog that is down fails the command at
    once, not after hours of training, and the comparison after training needs no database.
    """
    from surg_assets.models import approved_model

    try:
        return approved_model(_registry(), name)
    except InputError:  # none Approved and no default weights: nothing to compare with
        return None


# Where a training run keeps its weights when a step after training fails, under SURG_HOME.
KEPT_FOLDER = "training-kept"
KEPT_WEIGHTS = "weights.pt"
KEPT_REGISTRATION = "registration.json"


class TrainingRun:
    """What a training command has made so far: the weights once trained, the Approved
    version its comparison uses, and what it was about to register. A failure after training
    keeps them (``_keep_on_failure``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.approved_version: str | None = None
        self.weights: Path | None = None
        self.registration: dict[str, Any] | None = None

    def compare_with(self, approved: tuple[Any, Path] | None) -> tuple[Any, Path] | None:
        """Note the Approved version the new weights are compared with; return it."""
        self.approved_version = approved[0].version if approved else None
        return approved


class _Terminated(BaseException):
    """SIGTERM (a scheduler's kill, ``timeout``) as an exception, so the weights are kept."""


@contextmanager
def _keep_on_failure(name: str) -> Iterator[TrainingRun]:
    """Keep the trained weights when scoring or registering them fails.

    Training can take hours; the steps after it (scoring, the registry's database and store)
    can fail on their own, and the weights lived in a temporary folder that the failure would
    delete. They are copied under ``SURG_HOME/training-kept/`` instead, with what was about to be
    registered, and the command that registers them is printed. The failure still propagates.
    """
    run = TrainingRun(name)

    pid = os.getpid()

    def terminate(signum: int, frame: Any) -> None:
        if os.getpid() == pid:  # not in a forked data-loader worker, which just ends
            raise _Terminated()
        os._exit(143)

    # Only the main thread may set handlers (typer's test runner calls from it too).
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main else None

    def keep() -> None:
        if run.weights is not None and run.weights.is_file():
            if main:  # a second SIGTERM must not cut the copy short
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _keep(run)

    try:
        yield run
    except _Terminated:
        keep()
        raise SystemExit(143) from None
    except BaseException:  # an interrupt during a long scoring step loses the weights too
        keep()
        raise
    finally:
        if main:  # None: a handler not set from Python; the default stands in for it
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _keep(run: TrainingRun) -> None:
    """Copy the run's weights (and registration) to a new folder under SURG_HOME; say where."""
    from resources.settings import load_settings

    folder = None
    try:
        parent = load_settings().home / KEPT_FOLDER
        parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        # mkdtemp: a unique name, readable by its owner only (weights learned from case data).
        folder = Path(tempfile.mkdtemp(prefix=f"{run.name}-{stamp}-", dir=parent))
        # Written under temporary names and renamed, so that a folder never holds half a file.
        shutil.copy2(run.weights, folder / f".{KEPT_WEIGHTS}.part")
        os.replace(folder / f".{KEPT_WEIGHTS}.part", folder / KEPT_WEIGHTS)
        if run.registration is not None:
            saved = {**run.registration, "weights_sha256": sha256_file(folder / KEPT_WEIGHTS)}
            part = folder / f".{KEPT_REGISTRATION}.part"
            part.write_text(json.dumps(saved, indent=1, default=str))
            os.replace(part, folder / KEPT_REGISTRATION)
    except BaseException as exc:  # never hide the failure that brought us here
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # no half-kept folder to mistake
        err.print(f"the trained weights could not be kept: {exc!r}", markup=False)
        return
    kept = folder / KEPT_WEIGHTS
    if run.registration is not None:
        then = f"Register them without training again: surg models register-kept {folder}"
    elif run.name == "instrument_detector":
        then = (
            "They were not scored, so there is nothing to register; `surg train detector "
            "--model` trains on from them."
        )
    else:
        then = "They were not scored, so there is nothing to register; train again."
    err.print(
        f"training finished but a later step failed; the trained weights are kept in {kept}. "
        f"{then}",
        markup=False,
        soft_wrap=True,
    )


@train_app.command("detector")
def train_detector_command(
    data: Path = typer.Option(
        ...,
        "--data",
        help="A YOLO data.yaml (segment labels), or the folder of a YOLO detect dataset "
        "(boxes only, e.g. cholec80-tools-yolo), which gets a fixed split by image.",
    ),
    epochs: int = typer.Option(30, help="Training epochs."),
    imgsz: int = typer.Option(320, help="Training image size."),
    model: str = typer.Option(
        "yolo11n-seg.yaml", help="Model yaml (from scratch) or weights to fine-tune."
    ),
    seed: int = typer.Option(
        0, help="Training seed; runs that differ only in it show how far chance moves the score."
    ),
    also_train: str | None = typer.Option(
        None,
        "--also-train",
        help="Train on this dataset's training images as well, so that tuning to new frames "
        "keeps what the detector knew: a data.yaml, or `synthetic` for the first-stage corpus "
        "`surg models train-defaults` left in SURG_HOME. Validation stays --data's; the new "
        "weights are scored on this dataset's validation split too.",
    ),
    repeat_rare: float | None = typer.Option(
        None,
        "--repeat-rare",
        metavar="FRACTION",
        help="Show images of rare instruments more often in each epoch (repeat factor "
        "sampling): an instrument in fewer than this fraction of the training images, e.g. "
        "0.3, is repeated by sqrt(FRACTION / its share). Validation is unchanged.",
    ),
    approve_as: str | None = typer.Option(None, "--approve-as", help="Approve now, as USER."),
) -> None:
    """Train the instrument detector and register it (Pending unless --approve-as)."""
    from ml_models.detector import evaluate_detector, train_detector
    from ml_models.drift import reference_statistics
    from ml_models.formats.yolo import validation_images
    from ml_models.training import (
        boxes_to_segment_dataset,
        check_repeat_threshold,
        require_cholec80_yaml,
        with_extra_training,
        with_repeat_factors,
    )

    extra_yaml = _also_train_yaml(also_train) if also_train else None
    if repeat_rare is not None:
        check_repeat_threshold(repeat_rare)

    with (
        tempfile.TemporaryDirectory(prefix="surg-train-") as tmp,
        _keep_on_failure("instrument_detector") as run,
    ):
        split = None
        if data.is_dir():
            data_yaml, split = boxes_to_segment_dataset(data, Path(tmp) / "dataset")
            err.print(f"dataset: {split['train']} training and {split['val']} validation images")
        elif data.is_file():
            require_cholec80_yaml(data)
            data_yaml = data
        else:
            raise InputError(
                "the --data path does not exist; pass a data.yaml or a dataset folder."
            )
        train_yaml = data_yaml
        if extra_yaml is not None:
            train_yaml, joined = with_extra_training(
                data_yaml, extra_yaml, Path(tmp) / "joined.yaml"
            )
            err.print(
                f"training on {joined['train']} images of --data and {joined['also_train']} "
                "of --also-train"
            )
        repeated = None
        if repeat_rare is not None:
            train_yaml, repeated = with_repeat_factors(
                train_yaml, Path(tmp) / "repeated.yaml", repeat_rare
            )
            err.print(
                f"repeating rare instruments: {repeated.entries} training entries from "
                f"{repeated.images} images ("
                + ", ".join(f"{n} x{r:g}" for n, r in repeated.class_repeats.items() if r > 1)
                + ")"
            )
        # After the data is checked, before training: see _approved_or_none.
        approved = run.compare_with(_approved_or_none("instrument_detector"))
        err.print(f"training the instrument detector for {epochs} epochs at {imgsz} px")
        result = train_detector(
            train_yaml, Path(tmp) / "runs", epochs=epochs, imgsz=imgsz, init=model, seed=seed
        )
        run.weights = result.weights
        metrics = evaluate_detector(result.weights, data_yaml, imgsz=imgsz)
        also = None
        if extra_yaml is not None:
            also = evaluate_detector(result.weights, extra_yaml, imgsz=imgsz)["box_map50"]
            err.print(f"on the --also-train data's validation split: box mAP50 {also:.3f}")
        # The Approved detector's figures come from its own data (the defaults: synthetic
        # frames); the candidate must not be worse than it on *this* validation split.
        version, baseline = None, None
        if approved is not None:
            version, current = approved
            baseline = evaluate_detector(current, data_yaml, imgsz=imgsz)
            err.print(
                f"{version.version} on the same validation split: box mAP50 "
                f"{baseline['box_map50']:.3f}; the new weights: {metrics['box_map50']:.3f}"
            )
        # What it predicts on the validation images: without it on the card, the drift
        # sensor has nothing to compare case detections with once this detector is Approved.
        val_images = validation_images(data_yaml)
        reference = reference_statistics(result.weights, val_images, imgsz)
        err.print(
            f"drift reference: {reference['detections']} detections on {len(val_images)} "
            "validation images"
        )
        card = _card(
            "instrument_detector",
            sys.argv,
            f"yolo:{data.name if data.is_dir() else data.parent.name}",
            init=model,
            epochs=epochs,
            imgsz=imgsz,
            seed=seed,
            also_trained_on=str(extra_yaml) if extra_yaml else None,
            repeat_rare=(
                {"threshold": repeat_rare, **dataclasses.asdict(repeated)} if repeated else None
            ),
            also_val_box_map50=also,
            split=split or "as given by the data.yaml",
            split_rule="by image (file name), sha1 bucket < 0.2 -> val" if split else None,
            train_seconds=round(result.seconds, 1),
            reference_statistics=reference,
            approved_before=(
                f"{version.version}: box_map50 {baseline['box_map50']:.3f} on the same "
                "validation split"
                if version and baseline
                else None
            ),
        )
        _register(
            "instrument_detector", result.weights, card, metrics, approve_as, baseline, run=run
        )


def _also_train_yaml(value: str) -> Path:
    """The data.yaml `--also-train` names (`synthetic`: the defaults' first-stage corpus)."""
    if value == "synthetic":
        from ml_models.training import FIRST_STAGE_DATASET
        from resources.settings import load_settings

        path = load_settings().home / "default-training" / FIRST_STAGE_DATASET / "data.yaml"
        if not path.is_file():
            raise InputError(
                "--also-train synthetic needs the synthetic corpus of `surg models "
                "train-defaults` in this SURG_HOME; run that first or pass a data.yaml."
            )
        return path
    path = Path(value)
    if not path.is_file():
        raise InputError(f"--also-train: {path.name} does not exist; pass a YOLO data.yaml.")
    return path


@train_app.command("phase")
def train_phase_command(
    data: Path = typer.Option(
        ...,
        "--data",
        help="A folder of labelled cases, one folder each with video.mp4 and a Cholec80-style "
        "phase.txt (Frame, Phase): `surg synth` cases, or any procedure's videos.",
    ),
    temporal_epochs: int = typer.Option(60, help="Epochs of the temporal model."),
    val_cases: int | None = typer.Option(
        None,
        "--val-cases",
        min=0,
        help="Cases held out to score the model, drawn by --seed (default: one in five, at "
        "least one when there are two or more; 0 trains on every case and reports training "
        "accuracy only).",
    ),
    val_case: list[str] = typer.Option(
        [],
        "--val-case",
        help="Hold out this case folder (by name; repeat for more), e.g. an official test "
        "split, instead of drawing them.",
    ),
    seed: int = typer.Option(0, help="Seed of the training and of the held-out draw."),
    min_segment_s: float = typer.Option(
        10.0, help="Shortest phase segment when scoring (phase_timeline's min_segment_s)."
    ),
    approve_as: str | None = typer.Option(None, "--approve-as", help="Approve now, as USER."),
) -> None:
    """Train the phase model on labelled full-length videos; its phases are the ones the
    labels name (Cholec80's seven, in their order, for cholecystectomy labels). Held-out cases
    score it as the pipeline reads a case (smoothed timeline), and the Approved model is scored
    on the same cases when it knows the same phases: the candidate may not be worse."""
    from ml_models.phases import PhaseModel
    from ml_models.training import (
        evaluate_phases,
        hold_out_cases,
        phase_vocabulary,
        sample_cases,
        train_phases,
    )

    cases = sorted(p.parent for p in data.glob("*/phase.txt")) or (
        [data] if (data / "phase.txt").exists() else []
    )
    if not cases:
        raise InputError("the --data folder holds no labelled case (video.mp4 + phase.txt).")
    unpaired = [c.name for c in cases if not (c / "video.mp4").is_file()]
    if unpaired:
        raise InputError(
            f"{', '.join(unpaired)} in --data has a phase.txt but no video.mp4; add the video "
            "or remove the folder."
        )
    phases = phase_vocabulary(cases)
    if val_case:
        by_name = {c.name: c for c in cases}
        unknown = [n for n in val_case if n not in by_name]
        if unknown:
            raise InputError(
                f"--val-case {', '.join(unknown)} is not a labelled case folder in --data; "
                "name a folder that holds video.mp4 and phase.txt."
            )
        held = [by_name[n] for n in dict.fromkeys(val_case)]
        train = [c for c in cases if c not in held]
        if not train:
            raise InputError("--val-case holds out every labelled case; leave one to train on.")
    else:
        train, held = hold_out_cases(cases, val_cases, seed)
    err.print(f"{len(cases)} labelled cases; phases: {', '.join(phases)}")
    err.print(
        f"training on {len(train)} cases, scoring on {len(held)} held out"
        if held
        else "no case held out: only the training accuracy is reported"
    )
    decoded = dict(zip(cases, sample_cases(cases), strict=True))
    baseline = None
    approved = _approved_or_none("phase_model")
    with (
        tempfile.TemporaryDirectory(prefix="surg-train-") as tmp,
        _keep_on_failure("phase_model") as run,
    ):
        run.compare_with(approved)
        path, metrics = train_phases(
            [decoded[c] for c in train],
            Path(tmp) / "phase.pt",
            temporal_epochs=temporal_epochs,
            phases=phases,
            seed=seed,
        )
        run.weights = path
        primary = "train_frame_accuracy"
        if held:
            primary = "val_frame_accuracy"
            scored = [decoded[c] for c in held]
            metrics.update(evaluate_phases(PhaseModel.load(path), scored, min_segment_s))
            err.print(
                f"held out: frame accuracy {metrics['val_frame_accuracy']:.3f}, mean Jaccard "
                f"{metrics['val_mean_jaccard']:.3f}"
            )
            baseline = _phase_baseline(approved, phases, scored, min_segment_s)
        card = _card(
            "phase_model",
            sys.argv,
            f"cases:{len(cases)}",
            videos=len(cases),
            phases=phases,
            seed=seed,
            held_out_cases=[c.name for c in held],
            evaluation=(
                f"frame accuracy and mean Jaccard of the smoothed timeline (min segment "
                f"{min_segment_s:g} s) on {len(held)} held-out cases"
                if held
                else "training frame accuracy only (no case held out)"
            ),
        )
        _register("phase_model", path, card, metrics, approve_as, baseline, primary, run)


def _phase_baseline(
    approved: tuple[Any, Path] | None, phases: list[str], cases: list[Any], min_segment_s: float
) -> dict[str, float] | None:
    """The Approved phase model's scores on the held-out cases; ``{}`` (nothing to compare
    with) when it knows other phases (a cholecystectomy model says nothing about POEM), None
    when there is none."""
    from ml_models.phases import PhaseModel
    from ml_models.training import evaluate_phases

    if approved is None:
        return None
    version, weights = approved
    current = PhaseModel.load(weights)
    if list(current.phases) != list(phases):
        err.print(
            f"the Approved {version.version} knows other phases "
            f"({', '.join(current.phases)}): not compared"
        )
        return {}
    baseline = evaluate_phases(current, cases, min_segment_s)
    err.print(
        f"{version.version} on the same held-out cases: frame accuracy "
        f"{baseline['val_frame_accuracy']:.3f}, mean Jaccard {baseline['val_mean_jaccard']:.3f}"
    )
    return baseline


@train_app.command("out-of-body")
def train_out_of_body_command(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Folder of synthetic cases (`surg synth`); default: the cases `surg models "
        "train-defaults` rendered.",
    ),
    real_in_body: Path | None = typer.Option(
        None,
        "--real-in-body",
        help="A folder of real laparoscopic frames (JPEG/PNG, searched below it), e.g. "
        "../shared/data/cholec80-tools-yolo: up to 300 join the in-body class, and up to 300 "
        "others score it.",
    ),
    val_cases: int | None = typer.Option(
        None,
        "--val-cases",
        min=0,
        help="Cases held out to score the model, drawn by --seed (default: one in five, at "
        "least one when there are two or more; 0 reports training accuracy only).",
    ),
    seed: int = typer.Option(0, help="Seed of the training and of the held-out draws."),
    approve_as: str | None = typer.Option(None, "--approve-as", help="Approve now, as USER."),
) -> None:
    """Train the out-of-body classifier on synthetic cases, and on real in-body frames when
    given (so that it does not learn "synthetic texture = in body"). Held-out cases, and real
    frames it did not train on, score it at its decision threshold; the Approved model is
    scored on the same frames, and the new one may not be worse."""
    from ml_models.events import OutOfBodyClassifier
    from ml_models.training import (
        evaluate_out_of_body,
        hold_out_cases,
        sample_cases,
        split_real_frames,
        train_out_of_body,
    )
    from resources.settings import load_settings

    if data is None:
        data = load_settings().home / "default-training" / "synthetic"
        if not data.is_dir():
            raise InputError(
                "no synthetic cases to train on; pass --data (a `surg synth` folder) or run "
                "`surg models train-defaults` first."
            )
    cases = sorted(p.parent for p in data.glob("*/events.json")) or (
        [data] if (data / "events.json").exists() else []
    )
    if not cases:
        raise InputError("the --data folder holds no labelled case (video.mp4 + events.json).")
    frames = None
    if real_in_body is not None:
        frames = sorted(
            p for p in real_in_body.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        if not frames:
            raise InputError(
                "the --real-in-body folder holds no JPEG or PNG frame; pass a folder of real "
                "laparoscopic frames."
            )
    train, held = hold_out_cases(cases, val_cases, seed)
    held_real = split_real_frames(frames, seed)[1] if frames else []
    decoded = dict(zip(cases, sample_cases(cases), strict=True))
    approved = _approved_or_none("out_of_body_model")
    with (
        tempfile.TemporaryDirectory(prefix="surg-train-") as tmp,
        _keep_on_failure("out_of_body_model") as run,
    ):
        run.compare_with(approved)
        path, metrics = train_out_of_body(
            [decoded[c] for c in train], Path(tmp) / "oob.pt", frames, seed=seed
        )
        run.weights = path
        if frames:
            err.print(f"{min(300, len(frames))} of {len(frames)} real in-body frames trained on")
        scored = [decoded[c] for c in held]
        baseline = None
        if held or held_real:
            metrics.update(evaluate_out_of_body(OutOfBodyClassifier.load(path), scored, held_real))
            err.print(f"held out: {_oob_summary(metrics)}")
            if approved is not None:
                version, weights = approved
                current = OutOfBodyClassifier.load(weights)
                baseline = evaluate_out_of_body(current, scored, held_real)
                err.print(f"{version.version} on the same frames: {_oob_summary(baseline)}")
        real = f"+real:{real_in_body.name}" if real_in_body is not None else ""
        card = _card(
            "out_of_body_model",
            sys.argv,
            f"cases:{len(cases)}{real}",
            real_in_body_frames=min(300, len(frames)) if frames else 0,
            seed=seed,
            held_out_cases=[c.name for c in held],
            held_out_real_frames=len(held_real),
        )
        primary = "val_accuracy" if held else "train_accuracy"
        _register("out_of_body_model", path, card, metrics, approve_as, baseline, primary, run)


def _oob_summary(metrics: dict[str, float]) -> str:
    """Held-out out-of-body figures in words."""
    parts = []
    if "val_accuracy" in metrics:
        parts.append(
            f"accuracy {metrics['val_accuracy']:.3f} on {metrics['val_frames']:.0f} frames of "
            "held-out cases"
        )
    if "val_real_in_body_flagged" in metrics:
        parts.append(
            f"{metrics['val_real_in_body_flagged']:.3f} of {metrics['val_real_frames']:.0f} "
            "real in-body frames flagged"
        )
    return "; ".join(parts)


@models_app.command("list")
def models_list(name: str | None = typer.Argument(None, help="Only this model.")) -> None:
    """Registered versions with status and metrics."""
    table = Table()
    for column in ("model", "version", "status", "decided by", "dataset", "metrics"):
        table.add_column(column, no_wrap=column in ("model", "version"))
    for v in _registry().versions(name):
        metrics = ", ".join(f"{k}={val:.3f}" for k, val in list(v.metrics.items())[:4])
        table.add_row(
            v.name, v.version, v.status, v.decided_by or "", v.dataset_version or "", metrics
        )
    out.print(table)


@models_app.command("path")
def models_path(
    name: str = typer.Argument(..., help="Model name, e.g. instrument_detector."),
) -> None:
    """Print the local path of the newest Approved weights of NAME."""
    from surg_assets.models import approved_model

    _, path = approved_model(_registry(), name)
    out.print(str(path), soft_wrap=True)


@models_app.command("approve")
def models_approve(
    name: str, version: str, by: str = typer.Option(..., "--by", help="Who approves.")
) -> None:
    """Approve a version: case assets use it from the next run."""
    registry = _registry()
    row = registry.decide(name, version, "Approved", by)
    _audit(registry, by, "model.approve", row.name, row.version)
    err.print(f"{row.name} {row.version} approved by {by}")


@models_app.command("reject")
def models_reject(
    name: str,
    version: str,
    by: str = typer.Option(..., "--by", help="Who rejects."),
    reason: str = typer.Option(..., "--reason", help="Why."),
) -> None:
    """Reject a version, with the reason."""
    registry = _registry()
    row = registry.decide(name, version, "Rejected", by, reason)
    _audit(registry, by, "model.reject", row.name, row.version, reason)
    err.print(f"{row.name} {row.version} rejected by {by}: {reason}")


@models_app.command("register-kept")
def models_register_kept(
    folder: Path = typer.Argument(
        ...,
        help="The folder a training run printed when a step after training failed (under "
        "SURG_HOME/training-kept/).",
    ),
    approve_as: str | None = typer.Option(None, "--approve-as", help="Approve now, as USER."),
) -> None:
    """Register weights a training run kept when its registration failed, without training
    again. They are judged as the run would have judged them: on the figures it measured,
    against the Approved version's figures measured then (refused if another version has been
    Approved since). The folder goes once registered."""
    from resources.settings import load_settings

    kept_root = (load_settings().home / KEPT_FOLDER).resolve()
    # Only a folder a training run made: the command deletes it once registered, and what it
    # registers must be what a run scored, not any folder with a JSON file in it.
    if folder.is_symlink() or folder.resolve().parent != kept_root or not folder.is_dir():
        raise InputError(
            f"{folder.name} is not a folder a training run kept; pass one that `surg train` "
            f"printed, under {KEPT_FOLDER}/ of SURG_HOME."
        )
    weights, saved = folder / KEPT_WEIGHTS, folder / KEPT_REGISTRATION
    if not weights.is_file():
        raise InputError(
            f"{folder.name} holds no kept {KEPT_WEIGHTS}; pass the folder a `surg train` "
            "command printed after a failure."
        )
    if not saved.is_file():
        raise InputError(
            f"the weights in {folder.name} were kept before they were scored, so there is "
            "nothing to register; train again."
        )
    r = _kept_registration(folder.name, saved)
    if r["weights_sha256"] != sha256_file(weights):
        raise InputError(
            f"the {KEPT_WEIGHTS} in {folder.name} are not the weights its {KEPT_REGISTRATION} "
            "scored; train again."
        )
    name = r["name"]
    # The run as it stood: _register refuses a comparison with a version since replaced.
    run = TrainingRun(name)
    run.approved_version = r.get("baseline_version")
    card = {**r["card"], "registered_from_kept": folder.name}

    def consumed() -> None:  # registered: the folder must not register a second version
        for path in (saved, weights):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # something else put in it stays, with the folder
            folder.rmdir()

    _register(
        name, weights, card, r["metrics"], approve_as, r.get("baseline"), r["primary"], run,
        registered=consumed,
    )  # fmt: skip


# The metrics a kept run may be judged on (train_* when no data was held out).
JUDGED_ON = {
    "instrument_detector": {"box_map50"},
    "phase_model": {"train_frame_accuracy", "val_frame_accuracy"},
    "out_of_body_model": {"train_accuracy", "val_accuracy"},
}


def _kept_registration(folder_name: str, path: Path) -> dict[str, Any]:
    """A kept run's registration.json, its types checked; one user error if it is not one."""

    def figures(value: Any) -> bool:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in value.items()
        )

    try:
        r = json.loads(path.read_text())
        ok = (
            isinstance(r, dict)
            and r.get("name") in JUDGED_ON
            and isinstance(r.get("card"), dict)
            and figures(r.get("metrics"))
            and (r.get("baseline") is None or figures(r.get("baseline")))
            and r.get("primary") in JUDGED_ON[r["name"]]
            and r["primary"] in r["metrics"]
            and isinstance(r.get("weights_sha256"), str)
            and (r.get("baseline_version") is None or isinstance(r["baseline_version"], str))
        )
    except (ValueError, TypeError, UnicodeDecodeError):  # not JSON, or unhashable values
        ok = False
    if not ok:
        raise InputError(
            f"{KEPT_REGISTRATION} in {folder_name} is not one a training run wrote; train again."
        )
    return r


def _audit(
    registry: Any, by: str, action: str, name: str, version: str, reason: str | None = None
) -> None:
    """A decision from the terminal goes to the audit log like one from the web app."""
    from resources.audit import AuditLog

    detail = {"model": name, "version": version, "reason": reason}
    AuditLog(registry.catalog).record(by, action, source="cli", detail=detail)


@models_app.command("lineage")
def models_lineage(
    name: str = typer.Argument(..., help="Model name, e.g. instrument_detector."),
    version: str = typer.Argument(..., help="Version, e.g. v3."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole lineage as JSON."),
) -> None:
    """Which dataset version a model was trained on, and whose annotations it holds."""
    from resources.datasets import lineage

    registry = _registry()
    found = lineage(registry, registry.blob_store, registry.catalog, name, version)
    if as_json:
        out.print(json.dumps(found, indent=2, default=str), soft_wrap=True)
        return
    dataset = found["dataset"]
    out.print(f"{name} {version} ({found['status']}) trained on {found['dataset_version']}")
    if dataset is None:
        out.print("not trained from a dataset snapshot (default weights or `surg train`)")
        return
    out.print(
        f"{dataset['name']} {dataset['version']}: {dataset['files']} files, split "
        f"{dataset['split_sizes']}, {len(found['annotation_ids'])} annotations"
    )
    table = Table()
    for column in ("author", "annotations by source"):
        table.add_column(column)
    for author, by_source in sorted(found["authors"].items()):
        table.add_row(author, ", ".join(f"{k}: {n}" for k, n in sorted(by_source.items())))
    out.print(table)


def _default_data(name: str, recipe: Any) -> str:
    """What a default model was trained on, in words, from its recipe."""

    def seeds(values: tuple[int, ...]) -> str:
        return f"{values[0]}-{values[-1]}" if len(values) > 1 else str(values[0])

    r = recipe
    cases = (
        f"synthetic cases, seeds {', '.join(map(str, r.case_seeds))} ({r.case_minutes:g} min "
        f"each; {r.case_seeds[-1]} held out for the detector)"
    )
    if name == "phase_model":
        lo, hi = r.phase_minutes
        return (
            f"temporal model: {len(r.phase_seeds)} full-length synthetic cases rendered at 1 fps, "
            f"seeds {seeds(r.phase_seeds)}, {lo:g}-{hi:g} min each (log-uniform); frame encoder "
            f"(phase and instrument presence): {len(r.encoder_seeds)} short cases, seeds "
            f"{seeds(r.encoder_seeds)}, {r.encoder_minutes:g} min each"
        )
    if name != "instrument_detector":
        return cases
    if r.finetune_epochs:
        cases += (
            f"; then fine-tuned {r.finetune_epochs} epochs with seeds "
            f"{seeds(r.finetune_seeds)} added ({r.finetune_minutes:g} min each)"
        )
    if r.refine_epochs:
        cases += (
            f"; then {r.refine_epochs} more epochs with seeds {seeds(r.refine_seeds)} added "
            f"({r.refine_minutes:g} min each)"
        )
    return cases


@models_app.command("train-defaults")
def models_train_defaults(
    out_dir: Path = typer.Option(
        Path(__file__).resolve().parents[1] / "ml_models" / "default_weights",
        "--out",
        help="Where the default weights go.",
    ),
    recipe_name: str = typer.Option(
        "full",
        "--recipe",
        help="full: the shipped weights' recipe (over an hour on 2 cores); quick: under 15 "
        "minutes on 2 cores, lower quality (a fresh clone without weights).",
    ),
    epochs: int | None = typer.Option(None, help="Detector epochs (default: the recipe's)."),
    finetune_epochs: int | None = typer.Option(
        None,
        help="Detector epochs on the wider corpus after the first stage (0: none; default: "
        "the recipe's).",
    ),
    refine_epochs: int | None = typer.Option(
        None,
        help="Detector epochs on the widest corpus after the fine-tuning (0: none; default: "
        "the recipe's).",
    ),
    only: list[str] = typer.Option(
        [], "--only", help="Retrain only these models (repeat); the others' cards are kept."
    ),
) -> None:
    """Train the default models from synthetic data only (what `make models` runs)."""
    import dataclasses

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from ml_models.training import DEFAULT_MODEL_NAMES, RECIPES, train_default_models

    unknown = sorted(set(only) - set(DEFAULT_MODEL_NAMES))
    if unknown:
        names = ", ".join(DEFAULT_MODEL_NAMES)
        raise InputError(f"--only {unknown[0]} is not a default model; choose from {names}.")
    if recipe_name not in RECIPES:
        raise InputError(f"--recipe {recipe_name} is unknown; choose from {', '.join(RECIPES)}.")
    limits = (
        ("--epochs", epochs, 1),
        ("--finetune-epochs", finetune_epochs, 0),
        ("--refine-epochs", refine_epochs, 0),
    )
    for option, value, least in limits:
        if value is not None and value < least:
            raise InputError(f"{option} must be a whole number of epochs; got {value}.")
    recipe = RECIPES[recipe_name]
    overrides = {
        "detector_epochs": epochs,
        "finetune_epochs": finetune_epochs,
        "refine_epochs": refine_epochs,
    }
    recipe = dataclasses.replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
    from resources.settings import load_settings

    settings = load_settings()
    started = time.perf_counter()
    wanted = set(only) or set(DEFAULT_MODEL_NAMES)
    with Progress(
        TextColumn("[bold]default models[/bold] ({task.description})"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as bar:
        task = bar.add_task(f"{recipe.name} recipe", total=recipe.steps(wanted))
        result = train_default_models(
            settings.home / "default-training",
            out_dir,
            recipe=recipe,
            log=lambda m: bar.console.print(f"[{time.perf_counter() - started:5.0f} s] {m}"),
            only=tuple(only),
            step=lambda what: bar.update(task, advance=1, description=what),
        )
    cards_file = out_dir / "cards.json"
    cards = json.loads(cards_file.read_text()) if only and cards_file.exists() else {}
    cards |= {
        name: _card(
            name,
            sys.argv,
            "synthetic-default",
            recipe=recipe.name,
            metrics=result.metrics[name],
            train_seconds=round(result.seconds[name], 1),
            data=_default_data(name, recipe),
        )
        for name in result.files
    }
    cards_file.write_text(json.dumps(cards, indent=2) + "\n")
    err.print(f"default models written in {time.perf_counter() - started:.0f} s")
