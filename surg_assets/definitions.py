"""The Dagster code location: every asset, check, job and sensor, with resources by SURG_ENV."""

import dagster as dg

from surg_assets import checks, checks_cognition, schedules, sensors
from surg_assets.assets import cognition, datasets, ingest, perception, privacy, training
from surg_assets.jobs import analyze_case, retrain_detector, retrain_models, retrain_phase_models
from surg_assets.settings import build_resources, run_executor


@dg.definitions
def defs() -> dg.Definitions:
    """Assembled at load time so ``SURG_ENV``/``SURG_HOME`` are read when Dagster loads us."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules(
            [ingest, perception, privacy, cognition, datasets, training]
        ),
        asset_checks=dg.load_asset_checks_from_modules([checks, checks_cognition]),
        jobs=[analyze_case, retrain_detector, retrain_phase_models, retrain_models],
        schedules=[schedules.weekly_retraining],
        sensors=[
            sensors.new_video_sensor,
            sensors.case_ready_sensor,
            sensors.case_failed_sensor,
            sensors.detection_drift_sensor,
            sensors.model_approved_sensor,
        ],
        resources=build_resources(deferred=True),
        executor=run_executor(),
    )


def analyze_case_job() -> dg.JobDefinition:
    """The resolved ``analyze_case`` job, for ``dg.reconstructable`` (multiprocess executors)."""
    return defs().resolve_job_def("analyze_case")
