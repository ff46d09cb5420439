"""Video event detection quality: interval precision and recall per event kind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ml_models.formats.model import Annotation

Interval = tuple[str, float, float]  # kind, start_s, end_s


@dataclass
class EventScores:
    """Per-kind and overall interval matching scores.

    Attributes:
        per_kind: kind -> {"precision", "recall", "f1", "tp", "fp", "fn"}. Recall is None for
            a kind with no ground-truth event, precision None for one never predicted.
        precision: Over all kinds (micro average).
        recall: Over all kinds.
        f1: Over all kinds.
        iou_threshold: Temporal IoU an interval needs to match.
        tolerance_s: How far an instantaneous event (a scene cut) may be off.
    """

    precision: float | None
    recall: float | None
    f1: float | None
    per_kind: dict[str, dict] = field(default_factory=dict)
    iou_threshold: float = 0.5
    tolerance_s: float = 1.0

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two time intervals (0 for zero-length ones)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def _as_interval(x: Annotation | Interval) -> Interval:
    if isinstance(x, Annotation):
        return (
            str(x.class_name),
            float(x.t_s or 0.0),
            float(x.end_s if x.end_s is not None else x.t_s or 0.0),
        )
    return (str(x[0]), float(x[1]), float(x[2]))


def _prf(tp: int, fp: int, fn: int) -> tuple[float | None, float | None, float | None]:
    # Undefined, not 0: with no event of a kind in the ground truth, recall says nothing (a
    # 0.0 would read as every event missed); with no prediction, precision says nothing.
    p = tp / (tp + fp) if tp + fp else None
    r = tp / (tp + fn) if tp + fn else None
    if p is None or r is None:
        return p, r, None
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def event_metrics(
    ground_truth: Sequence[Annotation | Interval],
    predictions: Sequence[Annotation | Interval],
    iou_threshold: float = 0.5,
    tolerance_s: float = 1.0,
) -> EventScores:
    """Match predicted event intervals to ground truth, one to one, per kind.

    Pairs are taken greedily by decreasing temporal IoU; a pair matches when its IoU reaches
    ``iou_threshold``. Zero-length events (scene cuts) match when their times differ by at most
    ``tolerance_s``.

    Args:
        ground_truth: ``event`` annotations or (kind, start_s, end_s) tuples.
        predictions: The same for the predictions.
        iou_threshold: Temporal IoU needed for a match.
        tolerance_s: Tolerance for instantaneous events.

    Returns:
        Precision, recall and F1 per kind and overall.
    """
    gts = [_as_interval(x) for x in ground_truth]
    prs = [_as_interval(x) for x in predictions]
    kinds = sorted({k for k, _, _ in gts} | {k for k, _, _ in prs})
    per_kind, TP, FP, FN = {}, 0, 0, 0
    for k in kinds:
        g = [(s, e) for kk, s, e in gts if kk == k]
        p = [(s, e) for kk, s, e in prs if kk == k]
        pairs = []
        for i, a in enumerate(g):
            for j, b in enumerate(p):
                if a[1] - a[0] <= 0 or b[1] - b[0] <= 0:
                    d = abs(a[0] - b[0])
                    if d <= tolerance_s:
                        pairs.append((1.0 - d / (tolerance_s + 1e-9) * 1e-3, i, j))
                else:
                    iou = temporal_iou(a, b)
                    if iou >= iou_threshold:
                        pairs.append((iou, i, j))
        used_g, used_p = set(), set()
        for _, i, j in sorted(pairs, reverse=True):
            if i not in used_g and j not in used_p:
                used_g.add(i)
                used_p.add(j)
        tp, fp, fn = len(used_g), len(p) - len(used_p), len(g) - len(used_g)
        pr, rc, f1 = _prf(tp, fp, fn)
        per_kind[k] = {"precision": pr, "recall": rc, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
        TP, FP, FN = TP + tp, FP + fp, FN + fn
    p, r, f = _prf(TP, FP, FN)
    return EventScores(p, r, f, per_kind, iou_threshold, tolerance_s)
