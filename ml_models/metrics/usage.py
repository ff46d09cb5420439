"""Instrument usage quality: the case analysis' stretches in use against the truth, per class.

A report says "the clipper was used for 2 min over 3 appearances". This scores both numbers:
how many separate appearances each instrument class has (absolute error against the truth) and
how well its time in use overlaps the truth's (temporal IoU of the two unions, pooled over
classes so that a class seen for a second does not weigh like one seen for an hour).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

Span = tuple[float, float]


@dataclass
class UsageScores:
    """Appearance counts and time overlap of predicted usage against the truth.

    Attributes:
        appearance_error: Mean absolute difference in appearances per class (over the classes
            present in either).
        time_iou: Pooled temporal IoU: time in use by both over time in use by either.
        time_precision: Time in use by both over the predicted time.
        time_recall: Time in use by both over the true time.
        per_class: class -> {"true_appearances", "predicted_appearances", "time_iou"}.
    """

    appearance_error: float
    time_iou: float
    time_precision: float
    time_recall: float
    per_class: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def _length(spans: Sequence[Span]) -> float:
    return sum(e - s for s, e in spans)


def _overlap(a: Sequence[Span], b: Sequence[Span]) -> float:
    # Both lists are disjoint unions, so pairwise overlaps add up without double counting.
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


def usage_scores(
    truth: Mapping[str, Sequence[Span]], predicted: Mapping[str, Sequence[Span]]
) -> UsageScores:
    """Score predicted usage stretches against true ones.

    Args:
        truth: class name -> disjoint stretches in use (as the analysis writes them).
        predicted: the same, from the case analysis of the predicted tables.

    Returns:
        The scores; a class missing from one side counts as no appearances and no time.
    """
    per_class = {}
    both = either = pred_time = true_time = 0.0
    errors = []
    for name in sorted(set(truth) | set(predicted)):
        t, p = list(truth.get(name, [])), list(predicted.get(name, []))
        inter = _overlap(t, p)
        union = _length(t) + _length(p) - inter
        per_class[name] = {
            "true_appearances": len(t),
            "predicted_appearances": len(p),
            "time_iou": inter / union if union > 0 else 1.0,
        }
        errors.append(abs(len(t) - len(p)))
        both += inter
        either += union
        pred_time += _length(p)
        true_time += _length(t)
    return UsageScores(
        appearance_error=sum(errors) / len(errors) if errors else 0.0,
        time_iou=both / either if either > 0 else 1.0,
        time_precision=both / pred_time if pred_time > 0 else 0.0,
        time_recall=both / true_time if true_time > 0 else 0.0,
        per_class=per_class,
    )
