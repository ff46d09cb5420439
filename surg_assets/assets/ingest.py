"""Ingest assets: the raw upload, validated, and its normalised H.264 rendition."""

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import dagster as dg

from ml_models.errors import VideoValidationError
from ml_models.video import check_limits, probe_video, transcode
from resources.blob_store import BlobStore
from resources.catalog import Catalog
from surg_assets.intake import find_raw_key, sha256_of
from surg_assets.partitions import cases
from surg_assets.retries import CASE_STEP_RETRY_POLICY
from surg_assets.settings import video_limits_from_env


def processed_video_key(case_id: str) -> str:
    """Where a case's normalised video lives."""
    return f"processed-videos/{case_id}/video.mp4"


def decode_gaps_key(case_id: str) -> str:
    """Where the stretches of a case's upload that could not be decoded are listed (JSON)."""
    return f"processed-metadata/{case_id}/decode_gaps.json"


def _refuse(catalog: Catalog, case_id: str, reason: str) -> dg.Failure:
    """Mark the case failed and build the step failure a user reads in the UI."""
    catalog.set_status(case_id, "failed", reason)
    return dg.Failure(description=f"case {case_id}: {reason}", allow_retries=False)


@dg.asset(
    partitions_def=cases,
    retry_policy=CASE_STEP_RETRY_POLICY,
    group_name="ingest",
    kinds={"video", "pyav"},
    description="The uploaded video of a case, probed with PyAV and checked against the limits.",
)
def raw_video(
    context: dg.AssetExecutionContext, blob_store: BlobStore, catalog: Catalog
) -> dg.MaterializeResult:
    """Validate ``raw-videos/{case_id}/source.{ext}``: container, stream, codec and limits."""
    case_id = context.partition_key
    catalog.ensure_case(case_id)
    key = find_raw_key(blob_store, case_id)
    if key is None:
        raise _refuse(catalog, case_id, "no raw video is stored for this case; upload it again.")
    with blob_store.local_copy(key) as local:
        try:
            probe = probe_video(local)
            check_limits(probe, video_limits_from_env())
        except VideoValidationError as exc:
            raise _refuse(catalog, case_id, str(exc)) from None
        digest = sha256_of(local)
        size = local.stat().st_size
    catalog.update_case(
        case_id,
        status="analysing",
        failure_reason=None,
        source_key=key,
        size_bytes=size,
        duration_s=probe.duration_s,
        width=probe.width,
        height=probe.height,
        fps=probe.fps,
    )
    context.log.info(
        f"case {case_id}: {probe.codec} {probe.width}x{probe.height} "
        f"{probe.fps:g} fps, {probe.duration_s:.1f} s"
    )
    return dg.MaterializeResult(
        metadata={
            "key": key,
            "size_bytes": size,
            "sha256": digest,
            **{f"probe/{k}": v for k, v in probe.as_metadata().items() if v is not None},
        }
    )


@dg.asset(
    partitions_def=cases,
    retry_policy=CASE_STEP_RETRY_POLICY,
    deps=[raw_video],
    group_name="ingest",
    kinds={"video", "h264"},
    description=(
        "The normalised video every model reads: H.264 yuv420p, constant frame rate, bounded "
        "height, a keyframe every second, faststart, no audio, no container metadata."
    ),
)
def transcoded_video(
    context: dg.AssetExecutionContext, blob_store: BlobStore, catalog: Catalog
) -> dg.MaterializeResult:
    """Write ``processed-videos/{case_id}/video.mp4`` (atomically: whole file or nothing)."""
    case_id = context.partition_key
    key = find_raw_key(blob_store, case_id)
    if key is None:
        raise _refuse(catalog, case_id, "the raw video disappeared before transcoding.")
    limits = video_limits_from_env()
    out_key = processed_video_key(case_id)
    last_logged = [-1]

    def progress(fraction: float) -> None:
        step = int(fraction * 10)
        if step > last_logged[0]:
            last_logged[0] = step
            context.log.info(f"case {case_id}: transcoding {fraction:.0%}")

    with blob_store.local_copy(key) as local, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "video.mp4"
        try:
            result = transcode(local, out, limits, progress=progress)
        except VideoValidationError as exc:
            raise _refuse(catalog, case_id, str(exc)) from None
        blob_store.put_file(out_key, out, metadata={"case-id": case_id})
        size = out.stat().st_size
    gaps = [asdict(g) for g in result.decode_gaps]
    blob_store.put_bytes(decode_gaps_key(case_id), json.dumps({"gaps": gaps}).encode())
    if gaps:
        lost = sum(g["end_s"] - g["start_s"] for g in gaps)
        context.log.warning(
            f"case {case_id}: {len(gaps)} damaged stretch(es) of the upload could not be decoded "
            f"({lost:.1f} s in all); analysis goes on and video_events records them."
        )
    return dg.MaterializeResult(
        metadata={
            "key": out_key,
            "size_bytes": size,
            "width": result.width,
            "height": result.height,
            "fps": result.fps,
            "frames": result.frames_written,
            "frames_duplicated": result.frames_duplicated,
            "frames_dropped": result.frames_dropped,
            "duration_s": round(result.duration_s, 3),
            "decode_gaps": len(gaps),
            "decode_gap_seconds": round(sum(g["end_s"] - g["start_s"] for g in gaps), 3),
        }
    )
