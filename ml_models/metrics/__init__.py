"""Metrics the field reports: detection mAP, mask IoU, tracking HOTA/IDF1/MOTA, phases, events,
instrument usage."""

from ml_models.metrics.detection import (
    DetectionScores,
    detection_map,
    mask_iou,
    polygon_iou,
    polygon_mask,
)
from ml_models.metrics.events import EventScores, event_metrics, temporal_iou
from ml_models.metrics.phases import PhaseScores, phase_metrics, phases_to_frames, relaxed_correct
from ml_models.metrics.tracking import TrackingScores, box_iou_matrix, tracking_metrics
from ml_models.metrics.usage import UsageScores, usage_scores

__all__ = [
    "DetectionScores",
    "EventScores",
    "PhaseScores",
    "TrackingScores",
    "UsageScores",
    "box_iou_matrix",
    "detection_map",
    "event_metrics",
    "mask_iou",
    "phase_metrics",
    "phases_to_frames",
    "polygon_iou",
    "polygon_mask",
    "relaxed_correct",
    "temporal_iou",
    "tracking_metrics",
    "usage_scores",
]
