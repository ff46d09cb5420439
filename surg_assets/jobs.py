"""Jobs: the case assets that run together, and retraining (placement: surg_assets.placement)."""

import dagster as dg

from surg_assets.assets.cognition import case_analysis, case_report
from surg_assets.assets.datasets import detector_dataset, phase_dataset
from surg_assets.assets.ingest import raw_video, transcoded_video
from surg_assets.assets.perception import (
    instrument_detections,
    instrument_tracks,
    phase_timeline,
    video_events,
)
from surg_assets.assets.privacy import deidentified_video
from surg_assets.assets.training import instrument_detector, out_of_body_model, phase_model

CASE_ASSETS = [
    raw_video,
    transcoded_video,
    video_events,
    deidentified_video,
    instrument_detections,
    instrument_tracks,
    phase_timeline,
    case_analysis,
    case_report,
]

analyze_case = dg.define_asset_job(
    "analyze_case",
    selection=CASE_ASSETS,
    description="Every case asset for one case (one dynamic partition of `cases`).",
    tags={"surg/pipeline": "case"},
)

retrain_detector = dg.define_asset_job(
    "retrain_detector",
    selection=[detector_dataset, instrument_detector],
    description="Snapshot the instrument annotations, train the detector, evaluate, register.",
    tags={"surg/pipeline": "training"},
)

retrain_phase_models = dg.define_asset_job(
    "retrain_phase_models",
    selection=[phase_dataset, phase_model, out_of_body_model],
    description="Snapshot the phase annotations, train the phase and out-of-body models.",
    tags={"surg/pipeline": "training"},
)

# What the schedule and the drift sensor target; each run selects only the models that need it.
retrain_models = dg.define_asset_job(
    "retrain_models",
    selection=[
        detector_dataset,
        instrument_detector,
        phase_dataset,
        phase_model,
        out_of_body_model,
    ],
    description="Every dataset and model; retraining requests pick the affected ones.",
    tags={"surg/pipeline": "training"},
)
