"""Jobs: what runs together, and where (GPU op tags live here as the perception steps land)."""

import dagster as dg

from surg_assets.assets.ingest import raw_video, transcoded_video
from surg_assets.assets.perception import (
    instrument_detections,
    instrument_tracks,
    phase_timeline,
    video_events,
)

CASE_ASSETS = [
    raw_video,
    transcoded_video,
    video_events,
    instrument_detections,
    instrument_tracks,
    phase_timeline,
]

analyze_case = dg.define_asset_job(
    "analyze_case",
    selection=CASE_ASSETS,
    description="Every case asset for one case (one dynamic partition of `cases`).",
    tags={"surg/pipeline": "case"},
)
