"""Metrics against values worked out by hand (the arithmetic is in each test's comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml_models.errors import InputError
from ml_models.formats import Annotation
from ml_models.metrics import (
    detection_map,
    event_metrics,
    mask_iou,
    phase_metrics,
    phases_to_frames,
    polygon_iou,
    tracking_metrics,
    usage_scores,
)


def box(frame: int, xyxy, cls: str = "grasper", score=None, track=None, video="v", poly=None):
    return Annotation(
        kind="instrument",
        video=video,
        frame_index=frame,
        image_width=200,
        image_height=200,
        class_name=cls,
        box=tuple(float(v) for v in xyxy),
        score=score,
        track_id=track,
        polygon=poly,
    )


# -- detection -------------------------------------------------------------------------------


def test_one_box_at_iou_062_counts_at_three_of_ten_thresholds() -> None:
    # IoU = (100 x 62) / (100 x 100) = 0.62: a hit at 0.50, 0.55, 0.60 and a miss from 0.65 on,
    # so AP50 = 1 and AP50-95 = 3/10.
    gt = [box(0, (0, 0, 100, 100))]
    pred = [box(0, (0, 0, 100, 62), score=0.9)]
    s = detection_map(gt, pred)
    assert s.map50 == pytest.approx(1.0)
    assert s.map50_95 == pytest.approx(0.3)


def test_half_recall_with_a_false_positive_ranked_below_gives_51_of_101_points() -> None:
    # Two ground-truth boxes; the best-scored prediction hits one, the second is elsewhere.
    # Precision is 1 up to recall 0.5 and recall never exceeds 0.5: COCO's 101-point AP is the
    # share of recall points 0.00..0.50 (51 of 101) with precision 1 = 51/101.
    gt = [box(0, (0, 0, 50, 50)), box(1, (100, 100, 150, 150))]
    pred = [box(0, (0, 0, 50, 50), score=0.9), box(0, (120, 0, 170, 50), score=0.8)]
    s = detection_map(gt, pred)
    assert s.map50 == pytest.approx(51 / 101)
    assert s.map50_95 == pytest.approx(51 / 101)


def test_map_averages_over_classes_present_in_ground_truth() -> None:
    # grasper perfect (AP 1), hook missed (AP 0); the scissors prediction has no ground truth
    # and does not enter the mean: mAP = (1 + 0) / 2.
    gt = [box(0, (0, 0, 50, 50)), box(0, (100, 100, 150, 150), cls="hook")]
    pred = [box(0, (0, 0, 50, 50), score=0.9), box(0, (60, 60, 90, 90), cls="scissors", score=0.5)]
    s = detection_map(gt, pred)
    assert s.per_class["grasper"]["ap50"] == pytest.approx(1.0)
    assert s.per_class["hook"]["ap50"] == pytest.approx(0.0)
    assert s.per_class["scissors"]["ap50"] is None
    assert s.map50 == pytest.approx(0.5)


def test_mask_map_uses_polygons() -> None:
    # Boxes are identical but the predicted polygon covers only the left half of the square:
    # mask IoU 0.5, a hit at the 0.50 threshold only -> AP50 = 1, AP50-95 = 0.1.
    sq = [(0, 0), (100, 0), (100, 100), (0, 100)]
    half = [(0, 0), (50, 0), (50, 100), (0, 100)]
    gt = [box(0, (0, 0, 100, 100), poly=sq)]
    pred = [box(0, (0, 0, 100, 100), score=0.9, poly=half)]
    s = detection_map(gt, pred, iou_type="segm")
    assert s.map50 == pytest.approx(1.0)
    assert s.map50_95 == pytest.approx(0.1)


def test_predictions_without_scores_are_refused() -> None:
    with pytest.raises(InputError, match="no score"):
        detection_map([box(0, (0, 0, 5, 5))], [box(0, (0, 0, 5, 5))])


def test_mask_iou_of_offset_squares_is_one_third() -> None:
    # Two 10x10 squares shifted by 5 px: intersection 50, union 150.
    a = np.zeros((30, 30), bool)
    b = np.zeros((30, 30), bool)
    a[0:10, 0:10] = True
    b[0:10, 5:15] = True
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    # Polygons rasterise inclusively: (0,0)-(9,9) is 10x10 pixels, (5,0)-(14,9) likewise.
    p = [(0, 0), (9, 0), (9, 9), (0, 9)]
    q = [(5, 0), (14, 0), (14, 9), (5, 9)]
    assert polygon_iou(p, q, 30, 30) == pytest.approx(1 / 3)


# -- tracking --------------------------------------------------------------------------------


def test_an_identity_switch_halves_association() -> None:
    # One object for 4 frames, boxes perfect; the tracker calls it id 1 for two frames, then 2.
    # MOTA = 1 - (FN 0 + FP 0 + IDSW 1) / 4 = 0.75.
    # IDF1: the best single id covers 2 of 4 frames: IDTP 2 -> 2*2 / (4 + 4) = 0.5.
    # HOTA: every detection matches (DetA = 1); each matched pair's association IoU is
    # 2 / (4 + 2 - 2) = 0.5, so AssA = 0.5 and HOTA = sqrt(1 * 0.5).
    b = (10, 10, 50, 50)
    gt = [box(f, b, track=7) for f in range(4)]
    pred = [box(f, b, track=1 if f < 2 else 2) for f in range(4)]
    s = tracking_metrics(gt, pred)
    assert s.mota == pytest.approx(0.75)
    assert s.idf1 == pytest.approx(0.5)
    assert s.id_switches == 1
    assert s.deta == pytest.approx(1.0)
    assert s.assa == pytest.approx(0.5)
    assert s.hota == pytest.approx(math.sqrt(0.5))


def test_missed_and_false_boxes_count_in_mota() -> None:
    # 4 ground-truth boxes over 2 frames, tracker finds 3 of them and adds one false box:
    # MOTA = 1 - (1 FN + 1 FP + 0 IDSW) / 4 = 0.5; IDF1 = 2*3 / (4 + 4) = 0.75.
    gt = [box(0, (0, 0, 20, 20), track=1), box(0, (100, 100, 120, 120), track=2)]
    gt += [box(1, (0, 0, 20, 20), track=1), box(1, (100, 100, 120, 120), track=2)]
    pred = [box(0, (0, 0, 20, 20), track=5), box(0, (100, 100, 120, 120), track=6)]
    pred += [box(1, (0, 0, 20, 20), track=5), box(1, (150, 0, 170, 20), track=9)]
    s = tracking_metrics(gt, pred)
    assert s.mota == pytest.approx(0.5)
    assert s.idf1 == pytest.approx(0.75)


def test_ground_truth_marked_not_to_be_considered_is_left_out_with_its_predictions() -> None:
    # A MOT file's 0 in column 7: an ignore region. Track 1 is followed perfectly; track 2
    # (ignored) is also "found". Scored as MOTChallenge scores it, that is perfect tracking.
    # Counting it would make track 2 a miss or its prediction a false alarm (HOTA 0.707).
    a, b = (0, 0, 20, 20), (100, 100, 140, 140)
    gt = [box(f, a, track=1) for f in range(4)] + [box(f, b, track=2) for f in range(4)]
    for g in gt[4:]:
        g.attributes["consider"] = False
    pred = [box(f, a, track=5) for f in range(4)] + [box(f, b, track=6) for f in range(4)]
    s = tracking_metrics(gt, pred)
    assert (s.hota, s.idf1, s.mota) == pytest.approx((1.0, 1.0, 1.0))
    # A prediction elsewhere is still a false alarm: only what lies on the ignored box goes.
    stray = box(0, (150, 0, 170, 20), track=9)
    assert tracking_metrics(gt, [*pred, stray]).mota == pytest.approx(0.75)


def test_predictions_of_another_sequence_are_refused_rather_than_scored_zero() -> None:
    gt = [box(f, (0, 0, 20, 20), track=1, video="seq-02") for f in range(3)]
    pred = [box(f, (0, 0, 20, 20), track=1, video="pred") for f in range(3)]
    with pytest.raises(InputError, match="no sequence is in both"):
        tracking_metrics(gt, pred)


# -- phases ----------------------------------------------------------------------------------


def test_phase_scores_strict_and_relaxed() -> None:
    # 8 frames at 1 fps; the prediction enters phase 1 one frame early.
    gt = [0, 0, 0, 0, 1, 1, 1, 1]
    pred = [0, 0, 0, 1, 1, 1, 1, 1]
    s = phase_metrics(gt, pred, fps=1, relaxed_window_s=2)
    # Strict: 7/8 right. Phase 0: TP 3, predicted 3, true 4 -> P 1, R 0.75, J 3/4.
    # Phase 1: TP 4, predicted 5, true 4 -> P 0.8, R 1, J 4/5.
    assert s.accuracy == pytest.approx(7 / 8)
    assert s.precision[:2] == pytest.approx([1.0, 0.8])
    assert s.recall[:2] == pytest.approx([0.75, 1.0])
    assert s.jaccard[:2] == pytest.approx([0.75, 0.8])
    assert s.precision[2:] == [None] * 5  # phases absent from the ground truth
    assert s.mean_jaccard == pytest.approx((0.75 + 0.8) / 2)
    # Relaxed: the early frame lies in the last 2 s of phase 0 and is one phase ahead: forgiven.
    r = s.relaxed
    assert r.accuracy == pytest.approx(1.0)
    assert r.jaccard[:2] == pytest.approx([1.0, 1.0])


def test_relaxed_window_forgives_only_neighbours_near_boundaries() -> None:
    # Frame 4 (the middle of phase 1, outside the 1-frame windows) is wrong: never forgiven.
    # Frame 2 is a late transition (still phase 0 at the start of phase 1): forgiven.
    gt = [0, 0, 1, 1, 1, 1, 1]
    pred = [0, 0, 0, 1, 2, 1, 1]
    s = phase_metrics(gt, pred, fps=1, relaxed_window_s=1)
    assert s.accuracy == pytest.approx(5 / 7)
    assert s.relaxed.accuracy == pytest.approx(6 / 7)


def test_unlabelled_frames_are_not_scored() -> None:
    # Frames 4-7 have no label (a gap between annotated intervals): 6 frames are scored, of
    # which the two of phase 1 are right. Phase 1: TP 2, predicted 6 scored, true 2 -> J 1/3.
    gt = [0, 0, 0, 0, -1, -1, -1, -1, 1, 1]
    s = phase_metrics(gt, [1] * 10, fps=1)
    assert s.accuracy == pytest.approx(2 / 6)
    assert s.jaccard[:2] == pytest.approx([0.0, 1 / 3])
    with pytest.raises(InputError, match="no frame of the phase ground truth is labelled"):
        phase_metrics([-1, -1], [0, 1])


def test_phase_sequences_must_match_in_length() -> None:
    with pytest.raises(InputError, match="equally long"):
        phase_metrics([0, 1], [0])


def test_phase_intervals_become_frames() -> None:
    anns = [
        Annotation(kind="phase", video="v", t_s=0.0, end_s=2.0, phase_id=0),
        Annotation(kind="phase", video="v", t_s=2.0, end_s=5.0, phase_id=1),
    ]
    assert phases_to_frames(anns, fps=1).tolist() == [0, 0, 1, 1, 1]
    assert phases_to_frames(anns, fps=2, n_frames=12).tolist() == [0] * 4 + [1] * 6 + [-1] * 2


# -- events ----------------------------------------------------------------------------------


def test_event_intervals_match_by_temporal_iou() -> None:
    gt = [("black", 0.0, 10.0), ("black", 20.0, 30.0), ("smoke", 40.0, 50.0)]
    # black 0-8: IoU 0.8 -> match; black 25-40: IoU 5/20 = 0.25 -> no match (FP and FN);
    # smoke 40-50 exact -> match; an extra smoke 60-61 -> FP.
    pred = [
        ("black", 0.0, 8.0),
        ("black", 25.0, 40.0),
        ("smoke", 40.0, 50.0),
        ("smoke", 60.0, 61.0),
    ]
    s = event_metrics(gt, pred, iou_threshold=0.5)
    assert s.per_kind["black"] == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "tp": 1,
        "fp": 1,
        "fn": 1,
    }
    assert s.per_kind["smoke"]["precision"] == 0.5 and s.per_kind["smoke"]["recall"] == 1.0
    # Overall: TP 2, FP 2, FN 1 -> P 0.5, R 2/3.
    assert s.precision == pytest.approx(0.5)
    assert s.recall == pytest.approx(2 / 3)


def test_a_kind_without_ground_truth_has_no_recall_rather_than_zero() -> None:
    # No black frame in the truth and one false alarm: precision 0, recall undefined (a 0.0
    # would read as every black stretch missed).
    s = event_metrics([("scene_cut", 5.0, 5.0)], [("scene_cut", 5.0, 5.0), ("black", 1.0, 2.0)])
    assert s.per_kind["black"]["precision"] == 0.0
    assert s.per_kind["black"]["recall"] is None and s.per_kind["black"]["f1"] is None
    assert s.per_kind["scene_cut"]["recall"] == 1.0
    assert s.recall == 1.0 and s.precision == 0.5
    empty = event_metrics([], [])
    assert (empty.precision, empty.recall, empty.f1) == (None, None, None)


def test_instant_events_match_within_tolerance() -> None:
    gt = [("scene_cut", 10.0, 10.0), ("scene_cut", 30.0, 30.0)]
    pred = [("scene_cut", 10.6, 10.6), ("scene_cut", 32.0, 32.0)]
    s = event_metrics(gt, pred, tolerance_s=1.0)
    assert (s.per_kind["scene_cut"]["tp"], s.per_kind["scene_cut"]["fp"]) == (1, 1)


def test_usage_scores_count_appearances_and_pool_time_over_classes() -> None:
    truth = {"grasper": [(0.0, 10.0), (20.0, 30.0)], "hook": [(0.0, 2.0)]}
    # Grasper: one long stretch 0-30 (1 appearance, truth 2), overlap 20 s of union 30 s.
    # Hook: missed. Clipper: 5 s that the truth does not have.
    pred = {"grasper": [(0.0, 30.0)], "clipper": [(40.0, 45.0)]}
    s = usage_scores(truth, pred)
    # Appearance errors: clipper |0-1|, grasper |2-1|, hook |1-0| -> mean 1.
    assert s.appearance_error == 1.0
    assert s.per_class["grasper"] == {
        "true_appearances": 2, "predicted_appearances": 1, "time_iou": pytest.approx(20 / 30)
    }  # fmt: skip
    assert s.per_class["hook"]["time_iou"] == 0.0
    # Pooled: both 20 s; either 30 + 2 + 5 = 37 s; predicted 35 s; true 22 s.
    assert s.time_iou == pytest.approx(20 / 37)
    assert (s.time_precision, s.time_recall) == (pytest.approx(20 / 35), pytest.approx(20 / 22))
    perfect = usage_scores(truth, truth)
    assert (perfect.appearance_error, perfect.time_iou) == (0.0, 1.0)
