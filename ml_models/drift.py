"""Drift of detections: class frequencies and confidences against a reference, by PSI.

The reference is what the detector saw on its held-out split when it was trained (stored in its
model card); recent cases are compared with it. The population stability index
``sum((a - e) * ln(a / e))`` over matching bins is the usual score: below 0.1 is stable, 0.1-0.25
a moderate shift, above 0.25 a shift worth retraining for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONFIDENCE_BINS = 10
# Empty bins would make the logarithm infinite; a small floor keeps the score finite and ranks
# "a class that never appeared" as a large but comparable shift.
_FLOOR = 1e-4


def detection_statistics(
    class_ids: np.ndarray | list[int], confidences: np.ndarray | list[float], n_classes: int
) -> dict[str, Any]:
    """Class frequencies and the confidence histogram of a set of detections (JSON-able)."""
    cls = np.asarray(class_ids, np.int64)
    conf = np.asarray(confidences, np.float64)
    counts = np.bincount(cls[(cls >= 0) & (cls < n_classes)], minlength=n_classes)
    hist, _ = np.histogram(conf, bins=CONFIDENCE_BINS, range=(0.0, 1.0))
    return {
        "detections": int(len(cls)),
        "class_counts": counts.astype(int).tolist(),
        "confidence_histogram": hist.astype(int).tolist(),
        "mean_confidence": float(conf.mean()) if len(conf) else None,
    }


def population_stability_index(expected: list[float], actual: list[float]) -> float:
    """PSI between two histograms over the same bins (counts or frequencies)."""
    e = np.asarray(expected, np.float64)
    a = np.asarray(actual, np.float64)
    if e.shape != a.shape:
        raise ValueError("the two histograms must have the same bins")
    e = np.maximum(e / max(e.sum(), 1e-12), _FLOOR)
    a = np.maximum(a / max(a.sum(), 1e-12), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class DriftReport:
    """How far recent detections are from the reference."""

    class_psi: float
    confidence_psi: float
    mean_confidence_delta: float | None
    recent_detections: int

    @property
    def score(self) -> float:
        """The larger of the two PSIs (either kind of shift is reason enough)."""
        return max(self.class_psi, self.confidence_psi)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able figures, for run tags and logs."""
        return {
            "class_psi": round(self.class_psi, 4),
            "confidence_psi": round(self.confidence_psi, 4),
            "mean_confidence_delta": (
                None if self.mean_confidence_delta is None else round(self.mean_confidence_delta, 4)
            ),
            "recent_detections": self.recent_detections,
            "score": round(self.score, 4),
        }


def compare(reference: dict[str, Any], recent: dict[str, Any]) -> DriftReport:
    """Compare two :func:`detection_statistics` results."""
    delta = None
    if reference.get("mean_confidence") is not None and recent.get("mean_confidence") is not None:
        delta = recent["mean_confidence"] - reference["mean_confidence"]
    return DriftReport(
        class_psi=population_stability_index(reference["class_counts"], recent["class_counts"]),
        confidence_psi=population_stability_index(
            reference["confidence_histogram"], recent["confidence_histogram"]
        ),
        mean_confidence_delta=delta,
        recent_detections=int(recent["detections"]),
    )


def reference_statistics(weights: Path, images: list[Path], imgsz: int) -> dict[str, Any]:
    """What a detector predicts on held-out images (:func:`detection_statistics`): the
    reference the drift sensor compares recent case detections with, kept on the model card."""
    from ml_models.detector import load_model
    from ml_models.formats.cholec80 import INSTRUMENT_CLASSES

    model = load_model(weights)
    classes: list[int] = []
    confidences: list[float] = []
    for i in range(0, len(images), 16):
        for r in model.predict([str(p) for p in images[i : i + 16]], imgsz=imgsz, verbose=False):
            if r.boxes is not None and len(r.boxes):
                classes.extend(r.boxes.cls.cpu().numpy().astype(int).tolist())
                confidences.extend(r.boxes.conf.cpu().numpy().astype(float).tolist())
    return detection_statistics(classes, confidences, len(INSTRUMENT_CLASSES))
