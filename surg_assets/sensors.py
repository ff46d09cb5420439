"""Sensors: new uploads become case runs; run outcomes become case statuses; model lifecycle."""

import dagster as dg

from resources.blob_store import BlobInfo, BlobStore, decode_cursor, encode_cursor
from resources.catalog import Catalog
from resources.registry import ModelRegistry
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


# -- model lifecycle: drift of detections, and re-running cases when a model is approved -------

DRIFT_RETRAINS = ["detector_dataset", "instrument_detector"]

# Where each model's version is recorded, and the case assets to rebuild when it changes.
MODEL_USED_BY = {
    "instrument_detector": (
        "instrument_detections",
        ["instrument_detections", "instrument_tracks", "case_analysis", "case_report"],
    ),
    "phase_model": ("phase_timeline", ["phase_timeline", "case_analysis", "case_report"]),
    "out_of_body_model": (
        "video_events",
        ["video_events", "deidentified_video", "case_analysis", "case_report"],
    ),
}


def drift_settings() -> tuple[float, int, int]:
    """Threshold, window (cases) and minimum detections of the drift sensor, from settings."""
    from resources.settings import env_float, env_int

    return (
        env_float("SURG_DRIFT_PSI", 0.25),
        env_int("SURG_DRIFT_WINDOW", 20),
        env_int("SURG_DRIFT_MIN_DETECTIONS", 200),
    )


def recent_detection_statistics(
    instance: dg.DagsterInstance, blob_store: BlobStore, model_version: str, window: int
) -> tuple[dict, int | None]:
    """Statistics of the newest ``window`` cases' detections by ``model_version``.

    Returns:
        The statistics and the storage id of the newest materialization (None when there is
        none).
    """
    import numpy as np

    from ml_models.drift import detection_statistics
    from ml_models.formats.cholec80 import INSTRUMENT_CLASSES
    from ml_models.tables import from_parquet_bytes

    records = instance.fetch_materializations(
        dg.AssetKey("instrument_detections"), limit=window
    ).records
    classes, confidences = [], []
    for record in records:
        key = record.asset_materialization.metadata.get("key")
        if key is None or not blob_store.exists(key.value):
            continue
        table = from_parquet_bytes(blob_store.get_bytes(key.value))
        if not table.num_rows:
            continue
        mine = np.asarray(table.column("model_version").to_pylist()) == model_version
        classes.append(table.column("class_id").to_numpy()[mine])
        confidences.append(table.column("confidence").to_numpy()[mine])
    stats = detection_statistics(
        np.concatenate(classes) if classes else [],
        np.concatenate(confidences) if confidences else [],
        len(INSTRUMENT_CLASSES),
    )
    return stats, (records[0].storage_id if records else None)


@dg.sensor(
    job_name="retrain_models",
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Recent detections vs the Approved detector's reference (PSI); retrain past it.",
)
def detection_drift_sensor(
    context: dg.SensorEvaluationContext, blob_store: BlobStore, registry: ModelRegistry
) -> dg.SensorResult | dg.SkipReason:
    """Request a detector retraining when class or confidence PSI passes ``SURG_DRIFT_PSI``."""
    import json

    from ml_models.drift import compare

    threshold, window, min_detections = drift_settings()
    approved = registry.newest_approved("instrument_detector")
    if approved is None:
        return dg.SkipReason("no Approved instrument detector yet")
    card_key = f"{approved.uri}/model_card.json"
    card = json.loads(blob_store.get_bytes(card_key)) if blob_store.exists(card_key) else {}
    reference = card.get("reference_statistics")
    if not reference:
        return dg.SkipReason(
            f"instrument_detector {approved.version} has no reference statistics "
            "(it was not trained by the instrument_detector asset)"
        )
    model_version = f"instrument_detector:{approved.version}"
    recent, newest = recent_detection_statistics(
        context.instance, blob_store, model_version, window
    )
    if newest is None or (context.cursor and int(context.cursor) >= newest):
        return dg.SkipReason("no new case detections since the last evaluation")
    if recent["detections"] < min_detections:
        return dg.SensorResult(
            skip_reason=f"{recent['detections']} recent detections by {model_version}; "
            f"{min_detections} are needed to judge drift",
            cursor=str(newest),
        )
    report = compare(reference, recent)
    figures = report.to_dict()
    context.log.info(f"drift of {model_version} over the last {window} cases: {figures}")
    if report.score <= threshold:
        return dg.SensorResult(
            skip_reason=f"no drift: PSI {report.score:.3f} <= {threshold:g}", cursor=str(newest)
        )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"drift-{approved.version}-{newest}",
                asset_selection=[dg.AssetKey(a) for a in DRIFT_RETRAINS],
                tags={
                    "surg/trigger": "detection-drift",
                    "surg/drift_score": f"{report.score:.3f}",
                    "surg/class_psi": f"{report.class_psi:.3f}",
                    "surg/confidence_psi": f"{report.confidence_psi:.3f}",
                },
            )
        ],
        cursor=str(newest),
    )


def _recorded_version(instance: dg.DagsterInstance, asset: str, case_id: str) -> str | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[case_id]), limit=1
    ).records
    if not records:
        return None
    value = records[0].asset_materialization.metadata.get("model_version")
    return value.value if value is not None else None


@dg.sensor(
    job=analyze_case,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="When a model version is approved, re-run the case assets of ready cases that "
    "were analysed with another version (off by default: it can be a lot of GPU time).",
)
def model_approved_sensor(
    context: dg.SensorEvaluationContext, catalog: Catalog, registry: ModelRegistry
) -> dg.SensorResult | dg.SkipReason:
    """Newly Approved versions -> partial ``analyze_case`` runs of the affected cases."""
    import json

    from resources.registry import MODEL_NAMES

    seen = json.loads(context.cursor) if context.cursor else {}
    approved = {n: v for n in MODEL_NAMES if (v := registry.newest_approved(n)) is not None}
    changed = {n: v for n, v in approved.items() if seen.get(n) != v.version}
    cursor = json.dumps({n: v.version for n, v in approved.items()}, sort_keys=True)
    if not changed:
        return dg.SkipReason("no newly approved model version")
    requests = []
    for case in catalog.list_cases(status="ready", limit=100_000):
        for name, version in sorted(changed.items()):
            recorded_on, rebuild = MODEL_USED_BY[name]
            wanted = f"{name}:{version.version}"
            if _recorded_version(context.instance, recorded_on, case.id) in (None, wanted):
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"{wanted}:{case.id}",
                    partition_key=case.id,
                    asset_selection=[dg.AssetKey(a) for a in rebuild],
                    tags={"surg/trigger": "model-approved", "surg/model_version": wanted},
                )
            )
    return dg.SensorResult(run_requests=requests, cursor=cursor)
