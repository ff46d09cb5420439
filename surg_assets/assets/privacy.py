"""Privacy assets: the de-identified video, the only video the player and exports serve."""

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from resources.blob_store import BlobStore
from surg_assets.assets.ingest import processed_video_key
from surg_assets.assets.perception import read_table, video_events
from surg_assets.partitions import cases
from surg_assets.retries import CASE_STEP_RETRY_POLICY

if TYPE_CHECKING:
    # ml_models.events brings torch; loading the definitions (once per step process under the
    # multiprocess executor) should not pay for it.
    from ml_models.events import Event


def deidentified_video_key(case_id: str) -> str:
    """Where a case's de-identified video lives."""
    return f"processed-videos/{case_id}/deidentified.mp4"


def case_events(blob_store: BlobStore, case_id: str) -> "list[Event]":
    """The case's detected events as :class:`Event` objects."""
    from ml_models.events import Event

    df = read_table(blob_store, case_id, "events.parquet").to_pandas()
    return [
        Event(r.kind, float(r.start_s), float(r.end_s), float(r.score), r.detail or "")
        for r in df.itertuples()
    ]


@dg.asset(
    partitions_def=cases,
    retry_policy=CASE_STEP_RETRY_POLICY,
    deps=[video_events],
    group_name="privacy",
    kinds={"video", "h264"},
    description=(
        "The normalised video with out-of-body frames blurred beyond recognition and burned-in "
        "text redacted; no container metadata."
    ),
)
def deidentified_video(
    context: dg.AssetExecutionContext, blob_store: BlobStore
) -> dg.MaterializeResult:
    """Write ``processed-videos/{case_id}/deidentified.mp4`` from the detected events."""
    from ml_models.deid import deidentify, plan_redaction

    case_id = context.partition_key
    plan = plan_redaction(case_events(blob_store, case_id))
    with (
        blob_store.local_copy(processed_video_key(case_id)) as src,
        tempfile.TemporaryDirectory() as tmp,
    ):
        out = Path(tmp) / "deidentified.mp4"
        result = deidentify(src, out, plan)
        blob_store.put_file(deidentified_video_key(case_id), out, metadata={"case-id": case_id})
    return dg.MaterializeResult(
        metadata={
            "key": deidentified_video_key(case_id),
            "frames": result.frames,
            "frames_blurred": result.frames_blurred,
            "frames_text_redacted": result.frames_redacted,
            # Seconds with nothing to hide are copied bit for bit from the normalised video.
            "gops_copied": result.gops_copied,
            "gops_reencoded": result.gops_reencoded,
            "blur_intervals": len(plan.blur),
            "text_boxes": len(plan.boxes),
        }
    )
