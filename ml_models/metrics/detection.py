"""Detection and instance-segmentation quality: COCO mAP50 / mAP50-95 (pycocotools), mask IoU."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ml_models.errors import InputError
from ml_models.formats.model import Annotation


@dataclass
class DetectionScores:
    """COCO-style average precision.

    Attributes:
        map50: Mean over classes of AP at IoU 0.5.
        map50_95: Mean over classes of AP averaged over IoU 0.50:0.05:0.95.
        per_class: class name -> {"ap50", "ap50_95", "gt"}; classes without ground truth are
            left out of the means (COCO's convention) and have AP None.
        images: Number of images (frames) evaluated.
        gt: Number of ground-truth instances.
        predictions: Number of predicted instances.
        iou_type: ``bbox`` or ``segm``.
    """

    map50: float
    map50_95: float
    per_class: dict[str, dict] = field(default_factory=dict)
    images: int = 0
    gt: int = 0
    predictions: int = 0
    iou_type: str = "bbox"

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def _image_key(a: Annotation) -> tuple:
    return (a.video, a.frame_index, a.image if a.frame_index is None else None)


def _class_key(a: Annotation) -> str:
    if a.class_name is None and a.class_id is None:
        raise InputError(
            f"an annotation of {a.video} frame {a.frame_index} has no class;"
            " give every box a class."
        )
    return a.class_name if a.class_name is not None else str(a.class_id)


def _segmentation(a: Annotation, iou_type: str) -> list | None:
    if iou_type != "segm":
        return None
    if not a.polygon or len(a.polygon) < 3:
        raise InputError(
            f"mask mAP needs a polygon on every instance; {a.video} frame {a.frame_index} has none."
        )
    return [[float(c) for p in a.polygon for c in p]]


def detection_map(
    ground_truth: Sequence[Annotation], predictions: Sequence[Annotation], iou_type: str = "bbox"
) -> DetectionScores:
    """Average precision of predicted instruments against ground truth, with pycocotools.

    Frames are matched by (video, frame_index); classes by ``class_name``. Predictions need a
    ``score``; ground truth and predictions need ``image_width``/``image_height`` for masks.

    Args:
        ground_truth: Ground-truth instances (kind ``instrument``).
        predictions: Predicted instances with scores.
        iou_type: ``bbox`` for boxes or ``segm`` for polygon masks.

    Returns:
        mAP50, mAP50-95 and per-class AP.

    Raises:
        InputError: When an instance lacks a class, a score, a box or (for masks) a polygon.
    """
    if iou_type not in ("bbox", "segm"):
        raise InputError(f"iou_type must be 'bbox' or 'segm'; got {iou_type!r}.")
    classes = sorted({_class_key(a) for a in ground_truth} | {_class_key(a) for a in predictions})
    cat_ids = {c: i + 1 for i, c in enumerate(classes)}
    images: dict[tuple, dict] = {}
    for a in list(ground_truth) + list(predictions):
        k = _image_key(a)
        if k not in images:
            images[k] = {
                "id": len(images) + 1,
                "width": int(a.image_width or 1 << 14),
                "height": int(a.image_height or 1 << 14),
            }
    gt_anns = []
    for i, a in enumerate(ground_truth, start=1):
        if a.box is None:
            raise InputError(f"ground truth of {a.video} frame {a.frame_index} has no box.")
        x1, y1, x2, y2 = a.box
        ann = {
            "id": i,
            "image_id": images[_image_key(a)]["id"],
            "category_id": cat_ids[_class_key(a)],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1),
            "iscrowd": 0,
        }
        seg = _segmentation(a, iou_type)
        if seg is not None:
            ann["segmentation"] = seg
            im = images[_image_key(a)]
            ann["area"] = float(
                mask_utils.area(
                    mask_utils.merge(mask_utils.frPyObjects(seg, im["height"], im["width"]))
                )
            )
        gt_anns.append(ann)
    dt_anns = []
    for a in predictions:
        if a.score is None or a.box is None:
            raise InputError(
                f"a prediction of {a.video} frame {a.frame_index} has no score or box;"
                " predictions need both."
            )
        x1, y1, x2, y2 = a.box
        ann = {
            "image_id": images[_image_key(a)]["id"],
            "category_id": cat_ids[_class_key(a)],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(a.score),
        }
        seg = _segmentation(a, iou_type)
        if seg is not None:
            ann["segmentation"] = seg
        dt_anns.append(ann)
    per_class = {c: {"ap50": None, "ap50_95": None, "gt": 0} for c in classes}
    for a in ground_truth:
        per_class[_class_key(a)]["gt"] += 1
    result = DetectionScores(0.0, 0.0, per_class, len(images), len(gt_anns), len(dt_anns), iou_type)
    if not gt_anns:
        return result
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": list(images.values()),
            "annotations": gt_anns,
            "categories": [{"id": i, "name": c} for c, i in cat_ids.items()],
        }
        coco_gt.createIndex()
        if not dt_anns:
            for c in classes:
                if per_class[c]["gt"]:
                    per_class[c].update(ap50=0.0, ap50_95=0.0)
            return result
        coco_dt = coco_gt.loadRes(dt_anns)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
    # precision[T, R, K, A, M]: IoU thresholds, recall points, classes, area ranges, max dets.
    prec = ev.eval["precision"][:, :, :, 0, -1]
    ap50s, ap5095s = [], []
    for c, k in cat_ids.items():
        if not per_class[c]["gt"]:
            continue
        p = prec[:, :, k - 1]
        per_t = [float(np.mean(np.where(row > -1, row, 0.0))) for row in p]
        per_class[c].update(ap50=per_t[0], ap50_95=float(np.mean(per_t)))
        ap50s.append(per_t[0])
        ap5095s.append(float(np.mean(per_t)))
    result.map50 = float(np.mean(ap50s))
    result.map50_95 = float(np.mean(ap5095s))
    return result


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks of the same shape (1.0 when both are empty).

    Args:
        a: Boolean (or 0/1) mask.
        b: Boolean (or 0/1) mask.

    Returns:
        IoU in [0, 1].
    """
    if a.shape != b.shape:
        raise InputError(f"masks must have the same shape; got {a.shape} and {b.shape}.")
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def polygon_mask(polygon: Sequence[tuple[float, float]], width: int, height: int) -> np.ndarray:
    """Rasterise a polygon (pixel coordinates) into a boolean mask of the image size."""
    m = np.zeros((height, width), np.uint8)
    cv2.fillPoly(m, [np.round(np.asarray(polygon, np.float64)).astype(np.int32)], 1)
    return m.astype(bool)


def polygon_iou(
    p: Sequence[tuple[float, float]], q: Sequence[tuple[float, float]], width: int, height: int
) -> float:
    """Mask IoU of two polygons rasterised on a width x height image."""
    return mask_iou(polygon_mask(p, width, height), polygon_mask(q, width, height))
