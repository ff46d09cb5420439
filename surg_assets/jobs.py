"""Jobs: which case assets run together (placement tags: surg_assets.placement)."""

import dagster as dg

from surg_assets.assets.cognition import case_analysis, case_report
from surg_assets.assets.ingest import raw_video, transcoded_video
from surg_assets.assets.perception import (
    instrument_detections,
    instrument_tracks,
    phase_timeline,
    video_events,
)
from surg_assets.assets.privacy import deidentified_video

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
