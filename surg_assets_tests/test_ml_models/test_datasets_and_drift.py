"""Corrections applied to labels, the fixed split, and the drift score."""

from __future__ import annotations

import numpy as np
import pytest

from ml_models.datasets import (
    LabelBox,
    apply_box_corrections,
    assign_splits,
    current_versions,
    yolo_seg_lines,
)
from ml_models.drift import compare, detection_statistics, population_stability_index


def test_corrections_win_over_what_they_change() -> None:
    model = [LabelBox(2, (10, 10, 50, 50), track_id=7), LabelBox(0, (100, 100, 140, 160))]
    corrected = apply_box_corrections(
        model,
        [
            {"action": "delete", "target": {"frame_index": 3, "track_id": 7}},
            {
                "action": "modify",
                "box": [101, 100, 141, 160],
                "class_name": "Clipper",
                "target": {"frame_index": 3, "class_id": 0, "box": [100, 100, 140, 160]},
            },
            {"action": "add", "box": [5, 5, 20, 20], "class_id": 6},
            {"action": "add", "box": [5, 5, 20, 20], "class_name": "snare"},  # not Cholec80
        ],
    )
    assert [(b.class_id, b.box) for b in corrected] == [
        (4, (101, 100, 141, 160)),
        (6, (5, 5, 20, 20)),
    ]


def test_only_live_versions_of_corrections_count() -> None:
    rows = [{"id": 1}, {"id": 2, "supersedes_id": 1}, {"id": 3}]
    assert [r["id"] for r in current_versions(rows)] == [2, 3]


def test_yolo_lines_are_normalised_to_the_image_the_label_was_drawn_on() -> None:
    line = yolo_seg_lines([LabelBox(1, (0, 0, 50, 25), image_size=(100, 50))], 200, 200)
    assert line == "1 0.000000 0.000000 0.500000 0.000000 0.500000 0.500000 0.000000 0.500000\n"


def test_split_is_stable_and_always_holds_something_out() -> None:
    groups = [f"c{i}" for i in range(2)]
    first = assign_splits(groups, val_fraction=0.0)
    assert sorted(first.values()) == ["train", "val"]
    assert assign_splits(list(reversed(groups)), val_fraction=0.0) == first
    many = assign_splits([f"c{i}" for i in range(200)], val_fraction=0.2)
    assert 0.1 < sum(v == "val" for v in many.values()) / 200 < 0.3


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    assert population_stability_index([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert population_stability_index([50, 50], [90, 10]) > 0.25
    with pytest.raises(ValueError):
        population_stability_index([1, 2], [1, 2, 3])


def test_drift_report_compares_classes_and_confidences() -> None:
    rng = np.random.default_rng(0)
    ref = detection_statistics(rng.integers(0, 4, 500), rng.uniform(0.6, 0.9, 500), 7)
    same = detection_statistics(rng.integers(0, 4, 500), rng.uniform(0.6, 0.9, 500), 7)
    shifted = detection_statistics(np.full(500, 6), rng.uniform(0.6, 0.9, 500), 7)
    unsure = detection_statistics(rng.integers(0, 4, 500), rng.uniform(0.2, 0.4, 500), 7)
    assert compare(ref, same).score < 0.1
    assert compare(ref, shifted).class_psi > 1.0 and compare(ref, shifted).confidence_psi < 0.1
    report = compare(ref, unsure)
    assert report.confidence_psi > 1.0 and report.mean_confidence_delta < -0.3
