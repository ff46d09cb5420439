"""Sensors: new uploads become case runs; run outcomes become case statuses."""

import dagster as dg

from resources.blob_store import BlobInfo, BlobStore, decode_cursor, encode_cursor
from resources.catalog import Catalog
from surg_assets.intake import (
    CASE_ID_RE,
    RAW_PREFIX,
    adopt_stray,
    case_of_raw_key,
    find_raw_key,
)
from surg_assets.jobs import analyze_case
from surg_assets.partitions import cases


def plan_new_videos(listing: list[BlobInfo]) -> tuple[list[str], list[BlobInfo]]:
    """Split a listing of ``raw-videos/`` into case ids to run and stray files to adopt.

    A stray is a file dropped straight into ``raw-videos/`` (or any folder that is not a case
    id): it gets a case id and is moved before it is processed. Other files inside a case's own
    folder (e.g. upload staging) are not videos to run and are ignored.
    """
    case_ids: set[str] = set()
    strays: list[BlobInfo] = []
    for info in listing:
        case_id = case_of_raw_key(info.key)
        if case_id:
            case_ids.add(case_id)
            continue
        parts = info.key[len(RAW_PREFIX) :].split("/")
        if len(parts) >= 2 and CASE_ID_RE.match(parts[0]):
            continue
        strays.append(info)
    return sorted(case_ids), strays


@dg.sensor(
    job=analyze_case,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lists raw-videos/ with a (last_modified, key) cursor; a new video is a case run.",
)
def new_video_sensor(
    context: dg.SensorEvaluationContext, blob_store: BlobStore, catalog: Catalog
) -> dg.SensorResult:
    """New raw videos -> dynamic partitions + one ``analyze_case`` run per case."""
    listing, cursor = blob_store.list_after(RAW_PREFIX, context.cursor)
    case_ids, strays = plan_new_videos(listing)
    for info in strays:
        adopted = adopt_stray(blob_store, catalog, info)
        if adopted:
            context.log.info(f"a file dropped into raw-videos/ became case {adopted}")
            case_ids.append(adopted)
            # The move wrote a newer object; step the cursor past it so it is not seen again.
            moved_key = find_raw_key(blob_store, adopted)
            moved = blob_store.head(moved_key) if moved_key else None
            if moved is not None:
                cursor = max(
                    cursor or "", encode_cursor(moved.last_modified, moved.key), key=_cursor_order
                )
    runnable = []
    for case_id in sorted(set(case_ids)):
        case = catalog.ensure_case(case_id)
        # Cases the CLI is already analysing, or that finished, are not run again by a re-listing.
        if case.status in ("queued", "uploading"):
            runnable.append(case_id)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=c, run_key=c) for c in runnable],
        dynamic_partitions_requests=[cases.build_add_request(runnable)] if runnable else [],
        cursor=cursor,
    )


def _cursor_order(cursor: str) -> tuple[float, str]:
    return decode_cursor(cursor) or (0.0, "")


def _case_of_run(run: dg.DagsterRun) -> str | None:
    return run.tags.get("dagster/partition")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[analyze_case],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A case whose run succeeded is 'ready'.",
)
def case_ready_sensor(context: dg.RunStatusSensorContext, catalog: Catalog) -> None:
    """Mark the case ready when every case asset materialized."""
    case_id = _case_of_run(context.dagster_run)
    if case_id:
        catalog.set_status(case_id, "ready")


@dg.run_failure_sensor(
    monitored_jobs=[analyze_case],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A case whose run failed is 'failed', keeping the step's reason.",
)
def case_failed_sensor(context: dg.RunFailureSensorContext, catalog: Catalog) -> None:
    """Mark the case failed; an asset that already gave a precise reason keeps it."""
    case_id = _case_of_run(context.dagster_run)
    if not case_id:
        return
    case = catalog.ensure_case(case_id)
    if case.status != "failed":
        catalog.set_status(
            case_id, "failed", f"analysis failed ({context.failure_event.message or 'see run'})"
        )
