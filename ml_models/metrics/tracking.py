"""Multi-object tracking quality: HOTA, IDF1 and MOTA, computed by TrackEval's implementations."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ml_models.errors import InputError
from ml_models.formats.model import Annotation


@dataclass
class TrackingScores:
    """Tracking metrics over all sequences (TrackEval's definitions).

    Attributes:
        hota: HOTA averaged over localisation thresholds 0.05..0.95.
        deta: Detection accuracy part of HOTA.
        assa: Association accuracy part of HOTA.
        idf1: Identity F1 at IoU 0.5.
        mota: Multiple Object Tracking Accuracy at IoU 0.5.
        motp: Mean IoU of matched boxes.
        id_switches: Identity switches (CLEAR).
        gt_dets: Ground-truth boxes.
        pred_dets: Predicted boxes.
        gt_ids: Ground-truth tracks.
        pred_ids: Predicted tracks.
        sequences: Number of videos.
    """

    hota: float
    deta: float
    assa: float
    idf1: float
    mota: float
    motp: float
    id_switches: int
    gt_dets: int
    pred_dets: int
    gt_ids: int
    pred_ids: int
    sequences: int

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def box_intersection_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas of (N, 4) and (M, 4) boxes given as x1, y1, x2, y2."""
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes given as x1, y1, x2, y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter = box_intersection_matrix(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _without_ignored(
    gt: list[Annotation], pred: list[Annotation]
) -> tuple[list[Annotation], list[Annotation]]:
    """MOTChallenge's preprocessing: ground truth marked not to be considered (``consider``
    False, a 0 in a MOT file's seventh column) is dropped, and so is a prediction matched to it
    (one-to-one by IoU, at 0.5 or more) in that frame: neither a miss nor a false alarm."""
    if all(a.attributes.get("consider", True) for a in gt):
        return gt, pred
    from scipy.optimize import linear_sum_assignment

    by_g, by_p = defaultdict(list), defaultdict(list)
    for a in gt:
        by_g[a.frame_index].append(a)
    for a in pred:
        by_p[a.frame_index].append(a)
    dropped: set[int] = set()
    for f, g in by_g.items():
        p = by_p.get(f, [])
        if not p or all(a.attributes.get("consider", True) for a in g):
            continue
        iou = box_iou_matrix(
            np.array([a.box for a in g], float), np.array([a.box for a in p], float)
        )
        rows, cols = linear_sum_assignment(-np.where(iou >= 0.5 - 1e-9, iou, 0.0))
        for r, c in zip(rows, cols, strict=True):
            if iou[r, c] >= 0.5 - 1e-9 and not g[r].attributes.get("consider", True):
                dropped.add(id(p[c]))
    kept_gt = [a for a in gt if a.attributes.get("consider", True)]
    return kept_gt, [a for a in pred if id(a) not in dropped]


def _sequence_data(gt: list[Annotation], pred: list[Annotation], name: str) -> dict:
    frames = sorted({a.frame_index for a in gt} | {a.frame_index for a in pred})
    gid = {t: i for i, t in enumerate(sorted({a.track_id for a in gt}))}
    pid = {t: i for i, t in enumerate(sorted({a.track_id for a in pred}))}
    by_g, by_p = defaultdict(list), defaultdict(list)
    for a in gt:
        by_g[a.frame_index].append(a)
    for a in pred:
        by_p[a.frame_index].append(a)
    data: dict = {
        "gt_ids": [],
        "tracker_ids": [],
        "gt_dets": [],
        "tracker_dets": [],
        "similarity_scores": [],
    }
    for f in frames:
        g, p = by_g.get(f, []), by_p.get(f, [])
        gb = np.array([a.box for a in g], float).reshape(-1, 4)
        pb = np.array([a.box for a in p], float).reshape(-1, 4)
        data["gt_ids"].append(np.array([gid[a.track_id] for a in g], int))
        data["tracker_ids"].append(np.array([pid[a.track_id] for a in p], int))
        data["gt_dets"].append(gb)
        data["tracker_dets"].append(pb)
        data["similarity_scores"].append(box_iou_matrix(gb, pb))
    data.update(
        num_timesteps=len(frames),
        num_gt_ids=len(gid),
        num_tracker_ids=len(pid),
        num_gt_dets=len(gt),
        num_tracker_dets=len(pred),
        seq=name,
    )
    return data


def tracking_metrics(
    ground_truth: Sequence[Annotation],
    predictions: Sequence[Annotation],
    class_name: str | None = None,
) -> TrackingScores:
    """HOTA, IDF1 and MOTA of predicted tracks against ground-truth tracks.

    Class-agnostic by default (as MOTChallenge scores one class); pass ``class_name`` to score one
    instrument class. Sequences are the ``video`` of the annotations; frames their ``frame_index``.
    Ground truth marked not to be considered is left out, with the predictions on it, as
    MOTChallenge's evaluation does.

    Args:
        ground_truth: Ground-truth boxes with ``track_id``.
        predictions: Predicted boxes with ``track_id``.
        class_name: Score only this class.

    Returns:
        The scores, combined over sequences as TrackEval combines them.

    Raises:
        InputError: When a box has no track id or frame index, or when no sequence has both
            ground truth and predictions.
    """
    for a in list(ground_truth) + list(predictions):
        if a.track_id is None or a.frame_index is None or a.box is None:
            raise InputError(
                "tracking needs a box, frame index and track id on every instance;"
                f" one of {a.video} lacks them."
            )
    if class_name is not None:
        ground_truth = [a for a in ground_truth if a.class_name == class_name]
        predictions = [a for a in predictions if a.class_name == class_name]
    truth_videos = {a.video for a in ground_truth}
    predicted_videos = {a.video for a in predictions}
    if truth_videos and predicted_videos and not truth_videos & predicted_videos:
        # Scored apart, each side would read as all misses and all false alarms: zeros that
        # look like a result.
        raise InputError(
            f"the predictions are of {', '.join(sorted(predicted_videos))} and the ground truth "
            f"of {', '.join(sorted(truth_videos))}: no sequence is in both; name the prediction "
            "file (or folder) as its ground-truth sequence."
        )
    # TrackEval imports its dataset loaders (and matplotlib): only pay for it when scoring.
    from trackeval.metrics import CLEAR, HOTA, Identity

    videos = sorted({a.video for a in ground_truth} | {a.video for a in predictions})
    metrics = {
        "HOTA": HOTA(),
        "CLEAR": CLEAR({"THRESHOLD": 0.5, "PRINT_CONFIG": False}),
        "Identity": Identity({"THRESHOLD": 0.5, "PRINT_CONFIG": False}),
    }
    per_seq: dict[str, dict] = {k: {} for k in metrics}
    for v in videos:
        gt, pred = _without_ignored(
            [a for a in ground_truth if a.video == v], [a for a in predictions if a.video == v]
        )
        data = _sequence_data(gt, pred, v)
        for k, m in metrics.items():
            per_seq[k][v] = m.eval_sequence(data)
    if not videos:
        raise InputError("there is nothing to score: no ground truth and no predictions.")
    res = {k: m.combine_sequences(per_seq[k]) for k, m in metrics.items()}
    h, c, i = res["HOTA"], res["CLEAR"], res["Identity"]
    return TrackingScores(
        hota=float(np.mean(h["HOTA"])),
        deta=float(np.mean(h["DetA"])),
        assa=float(np.mean(h["AssA"])),
        idf1=float(i["IDF1"]),
        mota=float(c["MOTA"]),
        motp=float(c["MOTP"]),
        id_switches=int(c["IDSW"]),
        gt_dets=len(ground_truth),
        pred_dets=len(predictions),
        gt_ids=len({(a.video, a.track_id) for a in ground_truth}),
        pred_ids=len({(a.video, a.track_id) for a in predictions}),
        sequences=len(videos),
    )
