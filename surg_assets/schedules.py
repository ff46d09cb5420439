"""Retraining: a weekly schedule that retrains only the models that have new corrections."""

import dagster as dg
from sqlalchemy import func, select

from resources import datasets as snapshots
from resources.blob_store import BlobStore
from resources.catalog import Annotation, Catalog
from surg_assets.jobs import retrain_models

# Mondays at 03:00 UTC, when no one is reviewing and the GPU nodes are idle.
WEEKLY_RETRAINING_CRON = "0 3 * * 1"

# Which reviewer corrections feed which dataset, and what is retrained from it.
RETRAINED_FROM = {
    "detector_dataset": (("box",), ["detector_dataset", "instrument_detector"]),
    "phase_dataset": (("phase",), ["phase_dataset", "phase_model", "out_of_body_model"]),
}


def new_corrections(catalog: Catalog, blob_store: BlobStore) -> dict[str, int]:
    """Per dataset, how many reviewer corrections are newer than its newest snapshot."""
    out = {}
    for dataset, (kinds, _assets) in RETRAINED_FROM.items():
        manifest = snapshots.newest_manifest(blob_store, dataset)
        since = manifest.get("newest_annotation_id", 0) if manifest else 0
        q = select(func.count(Annotation.id)).where(
            Annotation.source == "review", Annotation.kind.in_(kinds), Annotation.id > since
        )
        with catalog.session() as s:
            count = int(s.scalar(q) or 0)
        if count:
            out[dataset] = count
    return out


@dg.schedule(
    cron_schedule=WEEKLY_RETRAINING_CRON,
    job=retrain_models,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekly: snapshot and retrain the models whose datasets have new corrections.",
)
def weekly_retraining(
    context: dg.ScheduleEvaluationContext, catalog: Catalog, blob_store: BlobStore
) -> dg.RunRequest | dg.SkipReason:
    """One retraining run for the datasets with corrections since their last version."""
    pending = new_corrections(catalog, blob_store)
    if not pending:
        return dg.SkipReason("no new corrections since the last dataset versions")
    assets = [a for dataset in sorted(pending) for a in RETRAINED_FROM[dataset][1]]
    when = context.scheduled_execution_time
    stamp = when.strftime("%Y-%m-%d") if when else "now"
    return dg.RunRequest(
        run_key=f"weekly-retraining-{stamp}",
        asset_selection=[dg.AssetKey(a) for a in assets],
        tags={
            "surg/trigger": "weekly-retraining",
            "surg/new_corrections": ",".join(f"{d}={n}" for d, n in sorted(pending.items())),
        },
    )
