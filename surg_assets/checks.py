"""Asset checks: blocking contracts a case asset must meet before anything reads it."""

import dagster as dg

from ml_models.video import inspect_layout
from resources.blob_store import BlobStore
from surg_assets.assets.ingest import processed_video_key, transcoded_video
from surg_assets.settings import video_limits_from_env


@dg.asset_check(
    asset=transcoded_video,
    blocking=True,
    description=(
        "The normalised video is H.264 yuv420p at a constant frame rate, within the height "
        "limit, with a keyframe at least every second, faststart, no audio, no source tags."
    ),
)
def transcoded_video_meets_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore
) -> dg.AssetCheckResult:
    """Re-read the written file and check every promise the normaliser makes."""
    case_id = context.op_execution_context.partition_key
    limits = video_limits_from_env()
    with blob_store.local_copy(processed_video_key(case_id)) as local:
        layout = inspect_layout(local)
    problems = []
    if layout.codec != "h264":
        problems.append(f"codec {layout.codec}")
    if layout.pixel_format != "yuv420p":
        problems.append(f"pixel format {layout.pixel_format}")
    if layout.height > limits.transcode_max_height:
        problems.append(f"height {layout.height} > {limits.transcode_max_height}")
    if not layout.constant_frame_rate:
        problems.append("variable frame rate")
    if layout.max_keyframe_gap_s > 1.0 + 1.0 / max(layout.fps, 1.0):
        problems.append(f"keyframe gap {layout.max_keyframe_gap_s:.2f} s")
    if not layout.faststart:
        problems.append("moov atom not at the start")
    if layout.has_audio:
        problems.append("audio track present")
    if layout.foreign_tags:
        problems.append(f"source metadata kept: {sorted(layout.foreign_tags)}")
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "normalised video meets the contract",
        metadata={
            "codec": layout.codec,
            "pixel_format": layout.pixel_format,
            "size": f"{layout.width}x{layout.height}",
            "fps": layout.fps,
            "frames": layout.frame_count,
            "max_keyframe_gap_s": round(layout.max_keyframe_gap_s, 3),
        },
    )
