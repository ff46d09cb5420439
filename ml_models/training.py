"""Training data from the lab's synthetic cases, and the recipe for the default models.

Everything here is plain Python over folders: the Dagster training assets and the ``surg train``
commands call these functions and store what they return.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from ml_models.errors import InputError
from ml_models.formats.cholec import load_cholec80_tools, read_phase_names
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, PHASES, instrument_id, vocabulary_of
from ml_models.formats.yolo import data_yaml_parts, names_from_yaml
from ml_models.frames import FrameCNN, frames_per_second, prepare, train_classifier
from ml_models.video import probe_video

if TYPE_CHECKING:
    from ml_models.events import OutOfBodyClassifier
    from ml_models.phases import PhaseModel

Log = Callable[[str], None]
# Called once per unit of training progress, with what was just done (progress bars).
Step = Callable[[str], None]


def synthetic_corpus(
    root: str | Path,
    seeds: list[int],
    minutes: float,
    size: tuple[int, int] = (854, 480),
    log: Log | None = None,
    step: Step | None = None,
) -> list[Path]:
    """Generate (or reuse) one synthetic case per seed under ``root/seed-N``; ``step`` is
    called after each."""
    from ml_models.synthetic import generate

    out = []
    for seed in seeds:
        folder = Path(root) / f"seed-{seed}"
        summary = folder / "summary.json"
        done = json.loads(summary.read_text()) if summary.exists() else {}
        # A case of another length (the quick recipe's, say) is rendered again.
        same = abs(float(done.get("duration_s", -1)) - minutes * 60) < 1
        if not (done.get("seed") == seed and same):
            started = time.perf_counter()
            generate(folder, minutes=minutes, seed=seed, size=size)
            if log:
                took = time.perf_counter() - started
                log(f"synthetic case seed {seed}: {minutes:g} min rendered in {took:.0f} s")
        out.append(folder)
        if step:
            step(f"synthetic case {len(out)}/{len(seeds)}")
    return out


def case_fps(case_dir: Path) -> float:
    """Frame rate the case's annotation files count frames in: its ``summary.json`` (synthetic
    cases), else its ``video.mp4``'s own."""
    summary = case_dir / "summary.json"
    if summary.is_file():
        return float(json.loads(summary.read_text())["fps"])
    return probe_video(case_dir / "video.mp4").fps


def phase_vocabulary(case_dirs: list[Path]) -> list[str]:
    """The phases a set of labelled cases names, in the order the model will number them.

    Cases labelled with Cholec80's phases get Cholec80's seven, in its order (a phase none of
    them shows keeps its number, so reports and references stay comparable). Any other
    procedure's phases are numbered in the order they first appear, case by case: the
    vocabulary comes from the training data.
    """
    return vocabulary_of(n for d in case_dirs for n in read_phase_names(d / "phase.txt")[1])


def phase_labels_at(
    case_dir: Path, times: np.ndarray, phases: Sequence[str] = PHASES
) -> np.ndarray:
    """Phase id (the index in ``phases``) at each time (seconds), from a case's Cholec80-style
    ``phase.txt``; a time after the last labelled frame takes the last label."""
    fps = case_fps(case_dir)
    frames, names = read_phase_names(case_dir / "phase.txt")
    index = {name: i for i, name in enumerate(phases)}
    missing = sorted(set(names) - set(index))
    if missing:
        raise InputError(
            f"the phase file of {case_dir.name} names {', '.join(missing)}, which the model's "
            "phases do not include; train on all the cases together."
        )
    ids = np.array([index[n] for n in names], np.int64)
    at = np.searchsorted(np.asarray(frames), np.round(times * fps).astype(int), side="right") - 1
    return ids[np.clip(at, 0, len(ids) - 1)]


def tool_presence_at(case_dir: Path, times: np.ndarray) -> np.ndarray | None:
    """Instrument presence at each time, ``(len(times), len(INSTRUMENT_CLASSES))`` of 0/1, from
    a case's Cholec80-style ``tool.txt``; None when the case has no tool file."""
    if not (case_dir / "tool.txt").is_file():
        return None
    fps = case_fps(case_dir)
    flags = np.zeros((len(times), len(INSTRUMENT_CLASSES)), np.int64)
    frames = np.round(times * fps).astype(int)
    for a in load_cholec80_tools(case_dir / "tool.txt", fps=fps).annotations:
        flags[(frames >= a.frame_index) & (frames < a.end_frame), a.class_id] = 1
    return flags


def interval_flags(case_dir: Path, kind: str, times: np.ndarray) -> np.ndarray:
    """1 where ``times`` fall inside an ``events.json`` interval of ``kind``."""
    events = json.loads((case_dir / "events.json").read_text())["events"]
    flags = np.zeros(len(times), np.int64)
    for e in events:
        if e["kind"] == kind:
            flags[(times >= e["start_s"]) & (times < e["end_s"])] = 1
    return flags


@dataclass
class PhaseCase:
    """A case rendered at 1 fps for the phase model."""

    images: np.ndarray  # (seconds, S, S, 3) prepared frames
    labels: np.ndarray  # (seconds,) phase ids
    tools: np.ndarray  # (seconds, len(INSTRUMENT_CLASSES)) 0/1 instrument presence


@dataclass
class CaseFrames:
    """A case sampled at 1 fps: times and prepared frames."""

    case_dir: Path
    times: np.ndarray
    images: np.ndarray


def sample_cases(case_dirs: list[Path], fps: float = 1.0) -> list[CaseFrames]:
    """Decode each synthetic case's video at ``fps``."""
    return [CaseFrames(d, *frames_per_second(d / "video.mp4", fps)) for d in case_dirs]


def detector_dataset(
    case_dirs: list[Path], out_dir: str | Path, val_cases: int = 1, extra_yolo: Path | None = None
) -> Path:
    """Merge the cases' ``yolo-seg`` samples into one dataset; the last cases are validation.

    Splitting by case, not by frame, keeps near-identical neighbouring frames out of both sides.

    Returns:
        The ``data.yaml`` path (absolute paths, ready for ultralytics).
    """
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    for i, d in enumerate(case_dirs):
        split = "val" if i >= len(case_dirs) - val_cases else "train"
        for sub in ("images", "labels"):
            dst = out / sub / split
            dst.mkdir(parents=True, exist_ok=True)
            for f in sorted((d / "yolo-seg" / sub).iterdir()):
                shutil.copyfile(f, dst / f"{d.name}_{f.name}")
    if extra_yolo is not None:
        for sub in ("images", "labels"):
            dst = out / sub / "train"
            for f in sorted((extra_yolo / sub).iterdir()):
                shutil.copyfile(f, dst / f"extra_{f.name}")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(INSTRUMENT_CLASSES))
    data = out / "data.yaml"
    data.write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    return data


def _read_image(path: Path) -> np.ndarray:
    """A real frame as BGR, or one clear error naming it."""
    import cv2

    image = cv2.imread(str(path))
    if image is None:
        raise InputError(
            f"{path.name} among the real in-body frames cannot be read as an image; "
            "remove it or pass another folder."
        )
    return image


def out_of_body_data(
    cases: list[CaseFrames], real_in_body: list[Path] | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Frames labelled 1 (out of body: the operating room) or 0 (in the abdomen).

    Black frames and colour bars are left out: they are events of their own. Real laparoscopic
    frames, when available, join the in-body class so the classifier does not learn "synthetic
    texture = in body".
    """
    images, labels = [], []
    for c in cases:
        oob = interval_flags(c.case_dir, "out_of_body", c.times)
        skip = interval_flags(c.case_dir, "black", c.times) | interval_flags(
            c.case_dir, "colour_bars", c.times
        )
        keep = skip == 0
        images.append(c.images[keep])
        labels.append(oob[keep])
    if real_in_body:
        picked, _ = split_real_frames(real_in_body, seed)
        images.append(np.stack([prepare(_read_image(p)) for p in picked]))
        labels.append(np.zeros(len(picked), np.int64))
    return np.concatenate(images), np.concatenate(labels)


@dataclass
class DefaultModels:
    """Files and metrics of a training of the default models."""

    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def train_out_of_body(
    cases: list[CaseFrames],
    out: Path,
    real_in_body: list[Path] | None = None,
    epochs: int = 6,
    seed: int = 0,
) -> tuple[Path, dict[str, float]]:
    """Train the out-of-body classifier; return the weights file and training accuracy.

    ``seed`` seeds the training and which real in-body frames (at most 300) join it.
    """
    from ml_models.events import OutOfBodyClassifier
    from ml_models.frames import predict_proba

    images, labels = out_of_body_data(cases, real_in_body, seed)
    torch.manual_seed(seed)  # the initial weights too: the seed alone decides the model
    model = FrameCNN(2)
    train_classifier(model, images, labels, epochs=epochs, seed=seed)
    acc = float((predict_proba(model, images).argmax(1) == labels).mean())
    OutOfBodyClassifier(model).save(out)
    return out, {"train_accuracy": acc, "frames": float(len(labels))}


def split_real_frames(
    frames: Sequence[Path], seed: int = 0, train: int = 300
) -> tuple[list[Path], list[Path]]:
    """(trained on, held out) real in-body frames: ``train`` drawn by ``seed`` (as
    :func:`out_of_body_data` draws them), up to as many of the rest held out."""
    frames = list(frames)
    picked = set(random.Random(seed).sample(frames, min(len(frames), train)))
    rest = [f for f in frames if f not in picked]
    return [f for f in frames if f in picked], rest[:train]


def evaluate_out_of_body(
    classifier: OutOfBodyClassifier,
    cases: Sequence[CaseFrames],
    real_in_body: Sequence[Path] = (),
) -> dict[str, float]:
    """An out-of-body model's held-out scores, decided at its own threshold as the pipeline
    decides: accuracy on the cases' frames (black frames and colour bars left out, as in
    training) and, given real in-body frames it was not trained on, the fraction it flags."""
    from ml_models.frames import prepare

    metrics: dict[str, float] = {}
    if cases:
        images, labels = out_of_body_data(list(cases))
        flagged = classifier.scores(images) >= classifier.threshold
        metrics["val_accuracy"] = float((flagged == labels.astype(bool)).mean())
        metrics["val_frames"] = float(len(labels))
    if real_in_body:
        real = np.stack([prepare(_read_image(p)) for p in real_in_body])
        flagged = classifier.scores(real) >= classifier.threshold
        metrics["val_real_in_body_flagged"] = float(flagged.mean())
        metrics["val_real_frames"] = float(len(real))
    return metrics


def render_phase_cases(
    seeds: list[int],
    minutes: list[float],
    size: tuple[int, int] = (854, 480),
    fps: int = 25,
    log: Log | None = None,
    step: Step | None = None,
) -> list[PhaseCase]:
    """Render synthetic cases straight at 1 fps for the phase model: prepared frames, phase ids
    and instrument presence (the instruments the renderer drew in each frame).

    The phase model sees one frame per second, so rendering and encoding the other frames of
    each second would be wasted work (about 25x); that is what makes dozens of full-length
    cases affordable on a CPU. Each frame goes through a lossy JPEG round trip because the
    pipeline itself sees H.264-decoded frames.
    """
    import cv2

    from ml_models.synthetic.render import SyntheticCase

    out = []
    for seed, mins in zip(seeds, minutes, strict=True):
        started = time.perf_counter()
        case = SyntheticCase(mins * 60, seed, size, fps)
        images, labels = [], []
        seconds = range(0, case.n_frames, fps)
        tools = np.zeros((len(seconds), len(INSTRUMENT_CLASSES)), np.int64)
        for k, frame in enumerate(seconds):
            img, truth = case.render(frame)
            ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])
            images.append(prepare(cv2.imdecode(jpeg, cv2.IMREAD_COLOR) if ok else img))
            labels.append(truth.phase_id)
            tools[k, [i.class_id for i in truth.instruments]] = 1
        out.append(PhaseCase(np.stack(images), np.asarray(labels, np.int64), tools))
        if log:
            took = time.perf_counter() - started
            log(f"phase case seed {seed}: {mins:.1f} min at 1 fps rendered in {took:.0f} s")
        if step:
            step(f"phase case {len(out)}/{len(seeds)} rendered")
    return out


def train_phases(
    cases: list[CaseFrames] | list[PhaseCase],
    out: Path,
    encoder_cases: list[PhaseCase] | None = None,
    encoder_epochs: int = 10,
    temporal_epochs: int = 60,
    encoder_frames: int | None = None,
    layers: int = 8,
    log: Log | None = None,
    step: Step | None = None,
    phases: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[Path, dict[str, float]]:
    """Train the two-stage phase model on whole labelled cases (``seed`` seeds both stages).

    ``cases`` are decoded labelled cases (a ``video.mp4`` and a ``phase.txt`` each, of any
    procedure), or cases from :func:`render_phase_cases`. When every case knows its instrument
    presence (a ``tool.txt``, or rendered), the frame encoder learns it beside the phase.
    ``encoder_cases`` (short cases of other scenes) train the frame encoder instead of the cases
    themselves (see ``train_phase_model``'s ``encoder_set``). ``phases``: the vocabulary; by
    default :func:`phase_vocabulary` of the decoded cases (Cholec80's for rendered ones).
    """
    from ml_models.phases import train_phase_model

    if phases is None:
        dirs = [c.case_dir for c in cases if isinstance(c, CaseFrames)]
        phases = phase_vocabulary(dirs) if dirs else list(PHASES)
    videos, tools = [], []
    for c in cases:
        if isinstance(c, CaseFrames):
            videos.append((c.images, phase_labels_at(c.case_dir, c.times, phases)))
            tools.append(tool_presence_at(c.case_dir, c.times))
        else:
            videos.append((c.images, c.labels))
            tools.append(c.tools)
    model = train_phase_model(
        videos,
        list(phases),
        encoder_epochs=encoder_epochs,
        temporal_epochs=temporal_epochs,
        encoder_frames=encoder_frames,
        layers=layers,
        seed=seed,
        log=log,
        step=step,
        tools=tools if all(t is not None for t in tools) else None,
        encoder_set=(
            (
                np.concatenate([c.images for c in encoder_cases]),
                np.concatenate([c.labels for c in encoder_cases]),
                np.concatenate([c.tools for c in encoder_cases]),
            )
            if encoder_cases
            else None
        ),
    )
    acc = float(
        np.mean(
            np.concatenate(
                [model.predict_images(imgs).argmax(1) == labels for imgs, labels in videos]
            )
        )
    )
    model.save(out)
    return out, {"train_frame_accuracy": acc, "videos": float(len(videos))}


def hold_out_cases(
    cases: Sequence[Path], val_cases: int | None = None, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """(training, held-out) case folders, for any model trained on whole cases (phases,
    out-of-body): ``val_cases`` of them drawn by ``seed`` (default one in five, at least one
    when there are two or more cases), the rest in their given order.

    Raises:
        InputError: When no case would be left to train on.
    """
    cases = list(cases)
    n = max(1, len(cases) // 5) if val_cases is None and len(cases) > 1 else val_cases or 0
    if n >= len(cases):
        raise InputError(
            f"--val-cases {n} leaves none of the {len(cases)} labelled cases to train on; "
            "hold out fewer."
        )
    held = set(random.Random(seed).sample(range(len(cases)), n))
    return (
        [c for i, c in enumerate(cases) if i not in held],
        [c for i, c in enumerate(cases) if i in held],
    )


def evaluate_phases(
    model: PhaseModel, cases: Sequence[CaseFrames], min_segment_s: float = 10.0
) -> dict[str, float]:
    """A phase model's scores on decoded labelled cases, as the pipeline would read them.

    Each case is read and smoothed as ``phase_timeline`` reads it (:meth:`PhaseModel.read_case`:
    a whole case under the model's phase-order prior, a short video causally; no segment
    shorter than ``min_segment_s``), and compared second by second with its labels in the
    model's own vocabulary. ``val_frame_accuracy`` counts every second of every
    case; ``val_mean_jaccard`` is the mean over cases of the mean Jaccard over the phases each
    shows (as ``bench/phase_quality.py`` reports).

    Raises:
        InputError: When a case names a phase the model does not know.
    """
    from ml_models.frames import embed_images
    from ml_models.metrics.phases import phase_metrics

    hits, jaccards, seconds = [], [], 0
    step = 1.0 / model.sample_fps
    for c in cases:
        labels = phase_labels_at(c.case_dir, c.times, model.phases)
        _, segments, _ = model.read_case(embed_images(model.encoder, c.images), min_segment_s)
        pred = np.zeros(len(labels), np.int64)
        for seg in segments:
            pred[int(round(seg.start_s / step)) : int(round(seg.end_s / step))] = seg.phase_id
        scores = phase_metrics(labels, pred, fps=model.sample_fps, num_phases=len(model.phases))
        hits.append(labels == pred)
        jaccards.append(scores.mean_jaccard)
        seconds += len(labels)
    return {
        "val_frame_accuracy": float(np.mean(np.concatenate(hits))),
        "val_mean_jaccard": float(np.mean(jaccards)),
        "val_videos": float(len(cases)),
        "val_seconds": float(seconds) * step,
    }


DEFAULT_MODEL_NAMES = ("out_of_body_model", "phase_model", "instrument_detector")
# The detector's first-stage dataset inside the recipe's work folder (`surg train detector
# --also-train synthetic` reads it there).
FIRST_STAGE_DATASET = "detector-dataset"
# The detector's second stage: twelve more short cases (seeds no evaluation uses).
DETECTOR_FINETUNE_SEEDS = tuple(range(1005, 1017))
# Its third stage: twelve more again, with the second stage's cases kept (the second stage's
# scenes took validation box mAP50 from 0.38 to 0.65; the detector was still short of scenes).
DETECTOR_REFINE_SEEDS = tuple(range(1017, 1029))
# The phase model's corpus: full-length cases, long and short, none of them a held-out seed
# (2001+ are kept for evaluation). Lengths are log-uniform so every phase is seen both brief
# and long, as in real recordings (Cholec80: 15 to 90 minutes).
PHASE_CORPUS_SEEDS = tuple(range(3001, 3025))
# The phase model's frame encoder learns from many short scenes instead (1.5 min: every phase,
# compressed): 24 scenes taught it the scenes more than the phases.
PHASE_ENCODER_SEEDS = tuple(range(4001, 4161))


@dataclass(frozen=True)
class DefaultRecipe:
    """How much data and training the default models get.

    :data:`FULL_RECIPE` is what trained the shipped weights (`make models`, well over an hour
    on 2 cores); :data:`QUICK_RECIPE` is the budget a fresh clone without weights gets before
    its first `make demo` (under 15 minutes on 2 cores, lower quality: BENCHMARKS.md).
    """

    name: str
    case_seeds: tuple[int, ...] = (1001, 1002, 1003, 1004)
    case_minutes: float = 3.0
    detector_epochs: int = 40
    detector_imgsz: int = 320
    detector_batch: int = 16
    detector_args: dict[str, Any] = field(default_factory=dict)  # more ultralytics arguments
    finetune_seeds: tuple[int, ...] = DETECTOR_FINETUNE_SEEDS
    finetune_minutes: float = 2.0
    finetune_epochs: int = 10
    refine_seeds: tuple[int, ...] = DETECTOR_REFINE_SEEDS
    refine_minutes: float = 2.0
    refine_epochs: int = 5
    # Continuing converged weights: one warm-up epoch, not ultralytics' three (which would be
    # most of a five-epoch stage at raised rates).
    refine_args: dict[str, Any] = field(default_factory=lambda: {"warmup_epochs": 1})
    phase_seeds: tuple[int, ...] = PHASE_CORPUS_SEEDS
    phase_minutes: tuple[float, float] = (2.0, 40.0)
    encoder_seeds: tuple[int, ...] = PHASE_ENCODER_SEEDS
    encoder_minutes: float = 1.5
    encoder_epochs: int = 10
    temporal_layers: int = 10
    temporal_epochs: int = 80
    out_of_body_epochs: int = 6

    def phase_case_minutes(self) -> list[float]:
        """The length of each phase-corpus case, fixed by its seed (log-uniform in the range)."""
        lo, hi = (np.log(m) for m in self.phase_minutes)
        draws = [np.random.default_rng([s, 9]).uniform(lo, hi) for s in self.phase_seeds]
        return [float(np.exp(d)) for d in draws]

    def steps(self, wanted: set[str]) -> int:
        """How many progress steps :func:`train_default_models` reports for ``wanted`` models."""
        n = 0
        if wanted & {"out_of_body_model", "instrument_detector"}:
            n += len(self.case_seeds)
        if "out_of_body_model" in wanted:
            n += 1
        if "phase_model" in wanted:
            # Rendered cases, the frame encoder, then each temporal model's epochs.
            n += len(self.phase_seeds) + len(self.encoder_seeds) + 1 + 2 * self.temporal_epochs
        if "instrument_detector" in wanted:
            n += self.detector_epochs + 1
            if self.finetune_epochs:
                n += len(self.finetune_seeds) + self.finetune_epochs
            if self.refine_epochs:
                n += len(self.refine_seeds) + self.refine_epochs
        return n


FULL_RECIPE = DefaultRecipe("full")
# Sized on 2 cores (BENCHMARKS.md, "Quick default models"): fewer, shorter cases, fewer epochs.
# Every seed is one the full recipe trains on too, so no held-out seed is ever trained on.
QUICK_RECIPE = DefaultRecipe(
    "quick",
    # Six short scenes teach the detector more than two long ones of the same frame count.
    case_seeds=(1001, 1002, 1003, 1005, 1006, 1007, 1004),
    case_minutes=0.6,
    detector_epochs=12,
    # Ultralytics accumulates gradients up to a nominal batch of 64: on ~200 images that is
    # three optimiser steps an epoch, and a detector from scratch found nothing after 6 epochs.
    # One step per batch of 8 (and AdamW at a fixed rate, a one-epoch warm-up) learns in time.
    detector_batch=8,
    detector_args={
        "nbs": 8,
        "optimizer": "AdamW",
        "lr0": 0.002,
        "warmup_epochs": 1,
        "close_mosaic": 2,
    },
    finetune_epochs=0,
    refine_epochs=0,
    phase_seeds=PHASE_CORPUS_SEEDS[:8],
    phase_minutes=(2.0, 12.0),
    encoder_seeds=PHASE_ENCODER_SEEDS[:40],
    encoder_epochs=6,
    temporal_layers=9,
    temporal_epochs=40,
)
RECIPES = {r.name: r for r in (FULL_RECIPE, QUICK_RECIPE)}


def train_default_models(
    work_dir: str | Path,
    out_dir: str | Path,
    recipe: DefaultRecipe = FULL_RECIPE,
    log: Log | None = None,
    only: tuple[str, ...] = (),
    step: Step | None = None,
) -> DefaultModels:
    """The reproducible recipe for the default models (synthetic data only).

    The last of ``recipe.case_seeds`` is held out for validation of the detector; the
    out-of-body model trains on the others. The phase model trains on its own corpus of
    full-length cases rendered at 1 fps (``recipe.phase_seeds``) and a frame encoder on many
    short ones (``recipe.encoder_seeds``). ``only`` names the models to retrain (default: all
    of :data:`DEFAULT_MODEL_NAMES`). ``recipe.finetune_epochs`` > 0 continues the detector on a
    wider corpus (``recipe.finetune_seeds``, same validation case): the first stage sees only
    a few cases, and more scenes teach more than more epochs. ``recipe.refine_epochs`` > 0
    continues it once more with ``recipe.refine_seeds`` added to all of those. ``step`` is
    called once per progress step (:meth:`DefaultRecipe.steps` counts them) with what was
    just done.

    Returns:
        Weights files in ``out_dir`` (``instrument_detector.pt``, ``phase_model.pt``,
        ``out_of_body_model.pt``) with their metrics and timings.
    """
    from ml_models.detector import DEFAULT_ARCH, evaluate_detector, train_detector

    log = log or (lambda _msg: None)
    step = step or (lambda _what: None)
    work, out = Path(work_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = DefaultModels()
    wanted = set(only) if only else set(DEFAULT_MODEL_NAMES)
    cases: list[Path] = []
    r = recipe
    if wanted & {"out_of_body_model", "instrument_detector"}:
        started = time.perf_counter()
        cases = synthetic_corpus(
            work / "synthetic", list(r.case_seeds), r.case_minutes, log=log, step=step
        )
        result.seconds["synthetic"] = time.perf_counter() - started

    if "out_of_body_model" in wanted:
        started = time.perf_counter()
        sampled = sample_cases(cases[:-1])
        path, metrics = train_out_of_body(
            sampled, out / "out_of_body_model.pt", epochs=r.out_of_body_epochs
        )
        result.files["out_of_body_model"], result.metrics["out_of_body_model"] = path, metrics
        result.seconds["out_of_body_model"] = time.perf_counter() - started
        log(f"out-of-body classifier: {metrics}")
        step("out-of-body classifier trained")

    if "phase_model" in wanted:
        started = time.perf_counter()
        phase_cases = render_phase_cases(
            list(r.phase_seeds), r.phase_case_minutes(), log=log, step=step
        )
        encoder_cases = render_phase_cases(
            list(r.encoder_seeds), [r.encoder_minutes] * len(r.encoder_seeds), step=step
        )
        log(f"phase encoder corpus: {len(encoder_cases)} short cases rendered")
        path, metrics = train_phases(
            phase_cases,
            out / "phase_model.pt",
            encoder_cases=encoder_cases,
            encoder_epochs=r.encoder_epochs,
            layers=r.temporal_layers,
            temporal_epochs=r.temporal_epochs,
            log=log,
            step=step,
        )
        result.files["phase_model"], result.metrics["phase_model"] = path, metrics
        result.seconds["phase_model"] = time.perf_counter() - started
        log(f"phase model: {metrics}")

    if "instrument_detector" in wanted:
        started = time.perf_counter()

        def fit(
            data: Path, run: str, epochs: int, what: str, init: str | Path, args: dict[str, Any]
        ) -> Path:
            """One detector stage with the recipe's settings; its best weights."""
            return train_detector(
                data,
                work / run,
                epochs=epochs,
                imgsz=r.detector_imgsz,
                init=init,
                batch=r.detector_batch,
                extra=args,
                on_epoch=lambda e: step(f"{what} epoch {e}/{epochs}"),
            ).weights

        data = detector_dataset(cases, work / FIRST_STAGE_DATASET, val_cases=1)
        weights = fit(
            data, "detector-runs", r.detector_epochs, "detector", DEFAULT_ARCH, r.detector_args
        )
        # Each later stage trains on every case so far plus its own (the validation case stays
        # the first stage's last), starting from the stage before.
        seen = cases[:-1]
        later = (
            ("finetune", "detector fine-tuning", r.finetune_seeds, r.finetune_minutes,
             r.finetune_epochs, r.detector_args),
            ("refine", "detector refining", r.refine_seeds, r.refine_minutes, r.refine_epochs,
             r.refine_args),
        )  # fmt: skip
        for stage, what, seeds, minutes, epochs, args in later:
            if epochs <= 0:
                continue
            seen = seen + synthetic_corpus(
                work / f"synthetic-{stage}", list(seeds), minutes, log=log, step=step
            )
            data = detector_dataset(
                seen + cases[-1:], work / f"{FIRST_STAGE_DATASET}-{stage}", val_cases=1
            )
            weights = fit(data, f"detector-runs-{stage}", epochs, what, weights, args)
        shutil.copyfile(weights, out / "instrument_detector.pt")
        metrics = evaluate_detector(out / "instrument_detector.pt", data, imgsz=r.detector_imgsz)
        result.files["instrument_detector"] = out / "instrument_detector.pt"
        result.metrics["instrument_detector"] = metrics
        result.seconds["instrument_detector"] = time.perf_counter() - started
        log(f"instrument detector: {metrics}")
        step("instrument detector evaluated")
    return result


def cholec80_class_ids(names: Sequence[str], source: str) -> dict[int, int]:
    """A dataset's class index -> Cholec80 instrument id, by name (official spellings too).

    The detector's classes are Cholec80's instruments, numbered its way: tracks, usage, the
    checks and the reports count those ids, so a dataset naming any other class is refused
    rather than relabelled by position.

    Raises:
        InputError: When a name is not a Cholec80 instrument.
    """
    ids = {i: instrument_id(n) for i, n in enumerate(names)}
    unknown = [names[i] for i, c in ids.items() if c is None]
    if unknown:
        raise InputError(
            f"{source} names classes that are not Cholec80 instruments ({', '.join(unknown)}); "
            f"the detector's classes are {', '.join(INSTRUMENT_CLASSES)}: rename them, or drop "
            "their labels."
        )
    return {i: int(c) for i, c in ids.items() if c is not None}


def require_cholec80_yaml(data_yaml: str | Path) -> None:
    """Refuse a ``data.yaml`` whose classes are not Cholec80's instruments in Cholec80's order
    (ultralytics trains on its ids as they are, so they must already mean the right thing).

    Raises:
        InputError: Naming the file and what to change.
    """
    path = Path(data_yaml)
    names, _, _ = data_yaml_parts(path)
    ids = cholec80_class_ids(names, path.name)
    if any(ids[i] != i for i in ids):
        raise InputError(
            f"{path.name} numbers the instruments in another order than Cholec80's "
            f"({', '.join(names)}); renumber its labels as {', '.join(INSTRUMENT_CLASSES)}."
        )


def boxes_to_segment_dataset(
    source: str | Path, out_dir: str | Path, val_fraction: float = 0.2
) -> tuple[Path, dict[str, int]]:
    """A YOLO *detect* dataset (such as cholec80-tools-yolo) as a fixed-split *segment* dataset.

    Boxes become rectangular outlines, which lets the segmentation detector learn boxes and
    classes from box-only labels. Images are found in any ``images*/`` folder and paired with the
    label file of the same stem in any ``labels/*`` folder. Class ids become Cholec80's by the
    names in the folder's ``data.yaml`` (:func:`cholec80_class_ids`; without one, they are taken
    to be Cholec80's already). The split is by image, decided by a
    hash of the file name (:func:`ml_models.datasets.assign_splits`), so it is the same on every
    machine. cholec80-tools-yolo's file names carry no video id (a Label Studio id per image and
    a frame number), so frames of one video can sit on both sides.

    Returns:
        The ``data.yaml`` and counts of images per split.
    """
    from ml_models.datasets import assign_splits

    src, out = Path(source), Path(out_dir)
    names = names_from_yaml(src)
    classes = (
        cholec80_class_ids(names, f"the data.yaml of {src.name}")
        if names is not None
        else {i: i for i in range(len(INSTRUMENT_CLASSES))}
    )
    if out.exists():
        shutil.rmtree(out)
    images = {p.stem: p for p in src.glob("images*/**/*.jpg")}
    labels = {p.stem: p for p in src.glob("labels/**/*.txt")}
    counts = {"train": 0, "val": 0}
    stems = sorted(images.keys() & labels.keys())
    splits = assign_splits(stems, val_fraction)
    for stem in stems:
        split = splits[stem]
        lines = []
        for number, row in enumerate(labels[stem].read_text().splitlines(), 1):
            parts = row.split()
            if len(parts) != 5:
                continue
            if not parts[0].isdigit() or int(parts[0]) not in classes:
                raise InputError(
                    f"{labels[stem].name}, line {number}: class {parts[0]} is not one of the "
                    f"dataset's {len(classes)} classes; fix the label or the data.yaml's names."
                )
            c, (x, y, w, h) = classes[int(parts[0])], map(float, parts[1:])
            x1, y1, x2, y2 = x - w / 2, y - h / 2, x + w / 2, y + h / 2
            lines.append(
                f"{c} {x1:.6f} {y1:.6f} {x2:.6f} {y1:.6f} {x2:.6f} {y2:.6f} {x1:.6f} {y2:.6f}"
            )
        for sub in ("images", "labels"):
            (out / sub / split).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images[stem], out / "images" / split / images[stem].name)
        (out / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        counts[split] += 1
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(INSTRUMENT_CLASSES))
    data = out / "data.yaml"
    data.write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    return data, counts


def with_extra_training(
    data_yaml: str | Path, extra_yaml: str | Path, out_yaml: str | Path
) -> tuple[Path, dict[str, int]]:
    """A ``data.yaml`` that trains on both datasets' training images and validates on the first's.

    Fine-tuning on a few hundred new frames alone makes a detector forget what it knew (the
    synthetic default tuned on real Cholec80 frames scores nothing on synthetic scenes); keeping
    the earlier training images in every epoch is the plain remedy. Nothing is copied:
    ultralytics reads a list of training folders.

    Args:
        data_yaml: The new dataset; its validation split is the one reported.
        extra_yaml: The dataset whose training images join (same class names, same order).
        out_yaml: Where to write the combined ``data.yaml``.

    Returns:
        The combined ``data.yaml`` and the training images it takes from each
        (``train``, ``also_train``).

    Raises:
        InputError: When either is not a YOLO data.yaml or their classes differ.
    """
    names, train, val = data_yaml_parts(Path(data_yaml))
    extra_names, extra_train, _ = data_yaml_parts(Path(extra_yaml))
    if extra_names != names:
        raise InputError(
            f"{Path(extra_yaml).name} names other classes than the training data "
            f"({', '.join(extra_names)} against {', '.join(names)}); join only datasets with "
            "the same classes in the same order."
        )
    out = Path(out_yaml)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = {
        "train": train + extra_train,
        "val": val[0] if len(val) == 1 else val,
        "names": dict(enumerate(names)),
    }
    out.write_text(yaml.safe_dump(spec, sort_keys=False))

    def images(folders: list[str]) -> int:
        return sum(1 for f in folders if Path(f).is_dir() for p in Path(f).iterdir() if p.is_file())

    return out, {"train": images(train), "also_train": images(extra_train)}


@dataclass(frozen=True)
class RepeatedTraining:
    """What :func:`with_repeat_factors` did: images, list entries, and repeats per class."""

    images: int
    entries: int
    class_repeats: dict[str, float]


def check_repeat_threshold(threshold: float) -> None:
    """Refuse a repeat threshold that is not a fraction of images (see
    :func:`with_repeat_factors`), before any data is read.

    Raises:
        InputError: Saying what to pass.
    """
    if not 0 < threshold <= 1:
        raise InputError(
            f"the repeat threshold {threshold:g} is not a fraction of images; pass a value in "
            "(0, 1], such as 0.3."
        )


def with_repeat_factors(
    data_yaml: str | Path, out_yaml: str | Path, threshold: float = 0.3
) -> tuple[Path, RepeatedTraining]:
    """A ``data.yaml`` whose training list shows images of rare instruments more often.

    Repeat factor sampling (Gupta et al., LVIS, 2019): a class seen in a fraction ``f`` of the
    training images gets ``r = max(1, sqrt(threshold / f))``, and an image is repeated by the
    largest ``r`` of the classes it shows. The detector's mAP50 is a mean over instruments, and
    on cholec80-tools-yolo five of the seven are each in 3-9 % of the images, so without this
    an epoch is mostly graspers and hooks. A fractional repeat is rounded up or down by a hash of
    the image's name, so the list is the same on every machine. Validation is untouched.

    Args:
        data_yaml: A YOLO ``data.yaml``.
        out_yaml: Where to write the new ``data.yaml``; the list goes beside it.
        threshold: Classes in at least this fraction of the images are not repeated.

    Returns:
        The new ``data.yaml`` and what was repeated.

    Raises:
        InputError: When the file is not a YOLO data.yaml, its training folders hold no images,
            or the threshold is not in (0, 1].
    """
    import math

    from ml_models.datasets import split_bucket
    from ml_models.formats.yolo import label_path, listed_images

    check_repeat_threshold(threshold)
    names, train, val = data_yaml_parts(Path(data_yaml))
    images = listed_images(train)
    if not images:
        raise InputError(
            f"{Path(data_yaml).name}: its training folders hold no images; fix path/train."
        )
    shown: dict[Path, set[int]] = {}
    for image in images:
        label = label_path(image)
        rows = label.read_text().splitlines() if label.is_file() else []
        shown[image] = {int(r.split()[0]) for r in rows if r.split() and r.split()[0].isdigit()}
    seen = {c: sum(c in s for s in shown.values()) / len(images) for c in range(len(names))}
    factor = {c: max(1.0, math.sqrt(threshold / f)) if f else 1.0 for c, f in seen.items()}
    lines: list[str] = []
    for image in images:
        r = max((factor[c] for c in shown[image] if c in factor), default=1.0)
        whole = math.floor(r)
        copies = whole + (split_bucket(image.name) < r - whole)
        lines += [str(image)] * copies
    out = Path(out_yaml)
    out.parent.mkdir(parents=True, exist_ok=True)
    listing = out.with_name(f"{out.stem}-train.txt")
    listing.write_text("\n".join(lines) + "\n")
    spec = {
        "train": str(listing.resolve()),
        "val": val[0] if len(val) == 1 else val,
        "names": dict(enumerate(names)),
    }
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    repeats = {names[c]: round(r, 2) for c, r in factor.items()}
    return out, RepeatedTraining(len(images), len(lines), repeats)
