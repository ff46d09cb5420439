"""Surgical phase recognition quality: accuracy and per-phase precision, recall, Jaccard.

Two flavours, as Cholec80 papers report them: strict frame-wise scores, and "relaxed boundary"
scores where, within a window (10 s) at the start and end of every ground-truth phase, a
prediction of the neighbouring phase counts as correct. The relaxed rules follow the Cholec80 /
M2CAI evaluation script (``Evaluate.m``); that script applies its end-of-phase window to the
*first* frames of the phase through an indexing slip, and here the window is at the end, as the
script's comments intend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ml_models.errors import InputError
from ml_models.formats.cholec80 import PHASES
from ml_models.formats.model import Annotation


@dataclass
class PhaseScores:
    """Phase metrics; per-phase lists are indexed by phase id, None where a phase is absent.

    Attributes:
        accuracy: Fraction of frames with the right phase.
        precision: Per-phase precision.
        recall: Per-phase recall.
        jaccard: Per-phase Jaccard index (intersection over union of frames).
        f1: Per-phase F1.
        mean_precision: Mean over phases present in the ground truth.
        mean_recall: Mean over phases present in the ground truth.
        mean_jaccard: Mean over phases present in the ground truth.
        mean_f1: Mean over phases present in the ground truth.
        relaxed: The same scores with the relaxed boundary (None when not computed).
        frames: Number of frames compared.
    """

    accuracy: float
    precision: list[float | None]
    recall: list[float | None]
    jaccard: list[float | None]
    f1: list[float | None]
    mean_precision: float
    mean_recall: float
    mean_jaccard: float
    mean_f1: float
    frames: int
    relaxed: PhaseScores | None = field(default=None)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def _opt(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _scores(correct: np.ndarray, gt: np.ndarray, pred: np.ndarray, n: int) -> PhaseScores:
    """Scores given a per-frame 'counts as correct' flag (exact or relaxed)."""
    prec, rec, jac, f1 = [], [], [], []
    for p in range(n):
        g, q = gt == p, pred == p
        if not g.any():
            prec.append(math.nan)
            rec.append(math.nan)
            jac.append(math.nan)
            f1.append(math.nan)
            continue
        union = g | q
        tp = float(np.sum(correct[union]))
        # Relaxed true positives can exceed the predicted count; the reference script clips.
        pr = min(1.0, tp / q.sum()) if q.any() else 0.0
        rc = min(1.0, tp / g.sum())
        prec.append(pr)
        rec.append(rc)
        jac.append(min(1.0, tp / union.sum()))
        f1.append(0.0 if pr + rc == 0 else 2 * pr * rc / (pr + rc))
    mean = lambda xs: float(np.nanmean(xs)) if not all(math.isnan(x) for x in xs) else math.nan  # noqa: E731
    return PhaseScores(
        accuracy=float(np.mean(correct)),
        precision=[_opt(x) for x in prec],
        recall=[_opt(x) for x in rec],
        jaccard=[_opt(x) for x in jac],
        f1=[_opt(x) for x in f1],
        mean_precision=mean(prec),
        mean_recall=mean(rec),
        mean_jaccard=mean(jac),
        mean_f1=mean(f1),
        frames=int(len(gt)),
    )


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True))


def relaxed_correct(gt: np.ndarray, pred: np.ndarray, window: int) -> np.ndarray:
    """Per-frame flags of the relaxed-boundary evaluation (Cholec80 phase ids 0-6).

    Args:
        gt: Ground-truth phase id per frame.
        pred: Predicted phase id per frame.
        window: Frames at each end of a ground-truth phase where neighbours are forgiven.

    Returns:
        Boolean array: the frame counts as correct.
    """
    diff = pred.astype(int) - gt.astype(int)
    upd = diff.copy()
    for p in range(int(gt.max()) + 1 if len(gt) else 0):
        for s, e in _runs(gt == p):
            cur = diff[s:e].copy()
            t = min(window, len(cur))
            head, tail = cur[:t], cur[len(cur) - t :]
            if p in (3, 4):  # dissection and packaging may alternate with each other
                head[head == -1] = 0
                tail[(tail == 1) | (tail == 2)] = 0
            elif p in (5, 6):  # cleaning and retraction may come in either order
                head[(head == -1) | (head == -2)] = 0
                tail[(tail == 1) | (tail == 2)] = 0
            else:
                head[head == -1] = 0
                tail[tail == 1] = 0
            upd[s:e] = cur
    return upd == 0


def phase_metrics(
    ground_truth: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray,
    fps: float = 1.0,
    relaxed_window_s: float | None = 10.0,
    num_phases: int = len(PHASES),
) -> PhaseScores:
    """Frame-wise phase scores, and relaxed-boundary scores (Cholec80 papers' 10 s window).

    Args:
        ground_truth: Phase id per frame; -1 for an unlabelled frame, which is not scored.
        predictions: Predicted phase id per frame (same length).
        fps: Frames per second of the sequences (sets the window in frames).
        relaxed_window_s: Relaxed boundary window in seconds; None skips the relaxed scores.
        num_phases: Number of phase ids.

    Returns:
        Strict scores, with the relaxed ones in ``relaxed``.

    Raises:
        InputError: When the sequences differ in length, are empty, or no frame is labelled.
    """
    gt, pred = np.asarray(ground_truth, int), np.asarray(predictions, int)
    if gt.shape != pred.shape or gt.ndim != 1 or len(gt) == 0:
        raise InputError(
            "phase ground truth and predictions must be equally long, non-empty sequences;"
            f" got {len(gt)} and {len(pred)} frames."
        )
    # Frames the ground truth leaves unlabelled (-1, a gap between annotated intervals) are
    # not scored, as in Cholec80's evaluation: no prediction there is right or wrong.
    labelled = gt >= 0
    if not labelled.any():
        raise InputError("no frame of the phase ground truth is labelled; nothing to score.")
    g, p = gt[labelled], pred[labelled]
    strict = _scores((gt == pred)[labelled], g, p, num_phases)
    if relaxed_window_s is not None:
        window = int(round(relaxed_window_s * fps))
        strict.relaxed = _scores(relaxed_correct(gt, pred, window)[labelled], g, p, num_phases)
    return strict


def phases_to_frames(
    annotations: Sequence[Annotation], fps: float, n_frames: int | None = None, fill: int = -1
) -> np.ndarray:
    """Per-frame phase ids from phase-interval annotations (at ``fps`` frames per second).

    Args:
        annotations: ``phase`` annotations with ``phase_id`` and ``t_s``/``end_s``.
        fps: Frame rate of the output sequence (e.g. 1 for per-second evaluation).
        n_frames: Length of the output; default: up to the last interval's end.
        fill: Value for frames no interval covers.

    Returns:
        int array of phase ids.
    """
    spans = [
        (a.t_s, a.end_s, a.phase_id)
        for a in annotations
        if a.kind == "phase" and a.phase_id is not None
    ]
    if n_frames is None:
        n_frames = int(round(max((e for _, e, _ in spans), default=0) * fps))
    out = np.full(n_frames, fill, int)
    for s, e, p in spans:
        out[int(round(s * fps)) : int(round(e * fps))] = p
    return out
