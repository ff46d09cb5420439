"""Wiring of settings into the objects the assets use (resources by SURG_ENV, video limits)."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from ml_models.errors import InputError
from ml_models.video import VideoLimits
from resources.blob_store import BlobStore, LocalBlobStore, S3BlobStore
from resources.catalog import Catalog
from resources.experiments import experiment_tracker
from resources.registry import ModelRegistry
from resources.report_writers import report_writer_from_env
from resources.settings import Settings, env_flag, env_float, env_int, load_settings
from surg_assets.step_io import STEP_IO_MANAGER, BlobStepIOManager


def video_limits_from_env() -> VideoLimits:
    """Video limits from ``SURG_MAX_DURATION_S``, ``SURG_MAX_WIDTH``... (README, Settings)."""
    d = VideoLimits()
    return VideoLimits(
        max_duration_s=env_float("SURG_MAX_DURATION_S", d.max_duration_s),
        min_duration_s=env_float("SURG_MIN_DURATION_S", d.min_duration_s),
        max_width=env_int("SURG_MAX_WIDTH", d.max_width),
        max_height=env_int("SURG_MAX_HEIGHT", d.max_height),
        min_side=env_int("SURG_MIN_SIDE", d.min_side),
        max_fps=env_float("SURG_MAX_FPS", d.max_fps),
        min_fps=env_float("SURG_MIN_FPS", d.min_fps),
        transcode_max_height=env_int("SURG_TRANSCODE_MAX_HEIGHT", d.transcode_max_height),
        transcode_fps=env_float("SURG_TRANSCODE_FPS", d.transcode_fps),
    )


def lake_encryption_from_env() -> bool:
    """``SURG_LAKE_ENCRYPTION``: ``on`` (the default) or ``off``."""
    raw = (os.environ.get("SURG_LAKE_ENCRYPTION") or "on").strip().lower()
    if raw not in ("on", "off"):
        raise InputError(f"setting SURG_LAKE_ENCRYPTION={raw!r} is unknown; use 'on' or 'off'.")
    return raw == "on"


def local_blob_store(settings: Settings, deferred: bool = False) -> LocalBlobStore:
    """The embedded default store under ``SURG_HOME/lake``, encrypted at rest by default.

    The key is ``SURG_LAKE_KEY`` (base64), else the file ``SURG_LAKE_KEY_FILE``, else
    ``SURG_HOME/lake.key`` (generated, mode 0600, outside the lake folder).
    """
    key: Any = ""
    if os.environ.get("SURG_LAKE_KEY"):
        key = dg.EnvVar("SURG_LAKE_KEY") if deferred else os.environ["SURG_LAKE_KEY"]
    return LocalBlobStore(
        root=str(settings.lake_root),
        secret_key_file=str(settings.secret_key_file),
        public_base_url=os.environ.get("SURG_PUBLIC_URL", "http://127.0.0.1:8000"),
        encrypt_at_rest=lake_encryption_from_env(),
        encryption_key=key,
        encryption_key_file=os.environ.get("SURG_LAKE_KEY_FILE", ""),
    )


def _env(name: str, deferred: bool) -> Any:
    # In Definitions a secret stays an EnvVar, resolved at run time and never shown in the UI;
    # the CLI and the web app resolve it now.
    if deferred:
        return dg.EnvVar(name)
    value = os.environ.get(name)
    if not value:
        raise InputError(f"setting {name} is required when SURG_ENV=prod; set it.")
    return value


def prod_blob_store(deferred: bool = False) -> S3BlobStore:
    """The S3 store; bucket and KMS key from the environment."""
    return S3BlobStore(
        bucket=_env("SURG_S3_BUCKET", deferred),
        prefix=os.environ.get("SURG_S3_PREFIX", ""),
        endpoint_url=os.environ.get("SURG_S3_ENDPOINT_URL") or None,
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
        kms_key_id=os.environ.get("SURG_S3_KMS_KEY_ID") or None,
        allow_unencrypted_bucket=env_flag("SURG_S3_ALLOW_UNENCRYPTED_BUCKET"),
        retry_mode=(os.environ.get("SURG_S3_RETRY_MODE") or "standard").strip().lower(),
        max_attempts=env_int("SURG_S3_MAX_ATTEMPTS", 8),
    )


def build_resources(settings: Settings | None = None, deferred: bool = False) -> dict[str, Any]:
    """The resource set for ``SURG_ENV`` (DESIGN.md section 4).

    Args:
        settings: Settings to use (read from the environment when omitted).
        deferred: Keep secrets as ``dg.EnvVar`` (for ``Definitions``); resolve them otherwise.
    """
    settings = settings or load_settings()
    blob_store: BlobStore
    if settings.env == "prod":
        blob_store = prod_blob_store(deferred)
        catalog = Catalog(url=_env("SURG_CATALOG_URL", deferred))
    else:
        blob_store = local_blob_store(settings, deferred)
        catalog = Catalog(url=settings.catalog_url)
    registry = ModelRegistry(
        catalog=catalog, blob_store=blob_store, cache_dir=str(settings.home / "model-cache")
    )
    return {
        "blob_store": blob_store,
        "catalog": catalog,
        "registry": registry,
        "report_writer": report_writer_from_env(deferred),
        "wandb_resource": experiment_tracker(),
        # Values between steps (detection chunks) go through the blob store, so steps on other
        # machines (k8s_job_executor, ECS) can read them.
        STEP_IO_MANAGER: BlobStepIOManager(blob_store=blob_store),
    }


EXECUTORS = ("in_process", "multiprocess")


def run_executor(settings: Settings | None = None) -> dg.ExecutorDefinition:
    """How a run's steps execute, from ``SURG_EXECUTOR`` (default by ``SURG_ENV``).

    ``in_process`` (the local default): every step of a run in the run's own process. On one
    small machine the steps share its cores anyway, and a process per step would load the
    definitions, torch and the models again for each of a case's twenty-odd steps (seconds
    each, most of a short clip's run under ``dagster dev``). ``multiprocess`` (the ``prod``
    default): Dagster's multi-or-in-process executor, a process per step unless the run config
    asks otherwise; the Kubernetes and ECS run launchers place those steps (DESIGN.md).
    """
    settings = settings or load_settings()
    default = "in_process" if settings.env == "local" else "multiprocess"
    name = (os.environ.get("SURG_EXECUTOR") or default).strip().lower()
    if name not in EXECUTORS:
        raise InputError(
            f"setting SURG_EXECUTOR={name!r} is unknown; use one of {', '.join(EXECUTORS)}."
        )
    return dg.in_process_executor if name == "in_process" else dg.multi_or_in_process_executor
