"""deploy/dagster-ecs.yaml and deploy/dagster-k8s.yaml, validated by Dagster's own schema.

`dagster_instance_config` is what `DagsterInstance.get()` runs on $DAGSTER_HOME/dagster.yaml;
the run launcher and compute-log manager sections are then checked against their classes'
config schemas, with the environment variables resolved, as Dagster does when it
instantiates them. Nothing connects to PostgreSQL, ECS or Kubernetes.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema

from .conftest import DEPLOY

# What ECS task definitions / the Kubernetes ConfigMap and Secret provide at run time.
PRODUCTION_ENV = {
    "DAGSTER_PG_HOST": "surg-db.internal",
    "DAGSTER_PG_USER": "surg_admin",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_RUN_TASK_DEFINITION": "arn:aws:ecs:eu-central-1:333333333333:task-definition/run:1",
    "SURG_ECS_CLUSTER": "surg-prod",
    "DAGSTER_COMPUTE_LOG_BUCKET": "surg-prod-videos",
    "DAGSTER_COMPUTE_LOG_PREFIX": "dagster-compute-logs",
    "AWS_REGION": "eu-central-1",
    "DAGSTER_K8S_NAMESPACE": "surg",
}


@pytest.fixture()
def production_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)


def load_instance_config(source: Path, home: Path) -> dict[str, Any]:
    """Validate a dagster.yaml the way DagsterInstance does, from a DAGSTER_HOME copy.

    Then resolve it once more with the environment, as instantiating the storage does, so a
    variable the deployment forgot to set fails here rather than at the first run.
    """
    shutil.copy(source, home / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(home))
    assert custom_class is None
    errors = unresolved(dict(config))
    assert not errors, errors
    return dict(config)


def unresolved(config: dict[str, Any]) -> list[str]:
    """Errors of resolving the instance config's env-var sources against os.environ."""
    schema = resolve_to_config_type(dagster_instance_config_schema())
    return [error.message for error in process_config(schema, config).errors or []]


def validate_class_section(section: dict[str, Any]) -> None:
    """Check a `module/class/config` section against that class's own config schema."""
    cls = getattr(importlib.import_module(section["module"]), section["class"])
    result = process_config(resolve_to_config_type(cls.config_type()), section["config"])
    assert result.success, [error.message for error in result.errors]


@pytest.mark.usefixtures("production_env")
def test_ecs_instance_validates_with_postgres_storage_and_ecs_launcher(tmp_path: Path) -> None:
    config = load_instance_config(DEPLOY / "dagster-ecs.yaml", tmp_path)
    postgres = config["storage"]["postgres"]["postgres_db"]
    assert postgres["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert postgres["params"] == {"sslmode": "require"}
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_aws.ecs", "EcsRunLauncher")
    validate_class_section(launcher)
    validate_class_section(config["compute_logs"])


@pytest.mark.usefixtures("production_env")
def test_k8s_instance_validates_with_k8s_launcher(tmp_path: Path) -> None:
    config = load_instance_config(DEPLOY / "dagster-k8s.yaml", tmp_path)
    assert (
        config["storage"] == load_instance_config(DEPLOY / "dagster-ecs.yaml", tmp_path)["storage"]
    )
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    pod_security = launcher["config"]["run_k8s_config"]["pod_spec_config"]["security_context"]
    assert pod_security["run_as_non_root"] is True
    validate_class_section(config["compute_logs"])
    pytest.importorskip("dagster_k8s", reason="dagster-k8s is needed to check K8sRunLauncher")
    validate_class_section(launcher)


@pytest.mark.parametrize("name", ["dagster-ecs.yaml", "dagster-k8s.yaml"])
def test_run_queue_limits_runs_and_gpu_work(name: str) -> None:
    config = yaml.safe_load((DEPLOY / name).read_text())
    runs = config["concurrency"]["runs"]
    assert 0 < runs["max_concurrent_runs"] <= 50
    limits = {
        (limit["key"], str(limit.get("value"))): limit["limit"]
        for limit in runs["tag_concurrency_limits"]
    }
    assert limits[("surg/accelerator", "gpu")] >= 1
    assert limits[("surg/pipeline", "training")] == 1
    # Every limit names a job, or a tag some job carries: a misspelt name limits nothing.
    from surg_assets.jobs import (
        analyze_case,
        retrain_detector,
        retrain_models,
        retrain_phase_models,
    )

    jobs = [analyze_case, retrain_detector, retrain_phase_models, retrain_models]
    tags = {(k, str(v)) for job in jobs for k, v in job.tags.items()}
    names = {job.name for job in jobs}
    for key, value in limits:
        if key == "dagster/job_name":
            assert value in names, value
        elif key.startswith("surg/") and key != "surg/accelerator":
            assert (key, value) in tags, (key, value)
    assert config["concurrency"]["pools"]["granularity"] == "op"
    assert config["telemetry"]["enabled"] is False


@pytest.mark.usefixtures("production_env")
def test_a_misspelt_launcher_option_is_refused(tmp_path: Path) -> None:
    broken = yaml.safe_load((DEPLOY / "dagster-ecs.yaml").read_text())
    broken["run_launcher"]["config"]["task_defintion"] = broken["run_launcher"]["config"].pop(
        "task_definition"
    )
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    config = load_instance_config(tmp_path / "broken.yaml", tmp_path)
    with pytest.raises(AssertionError):
        validate_class_section(config["run_launcher"])


def test_a_missing_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    config = yaml.safe_load((DEPLOY / "dagster-ecs.yaml").read_text())
    errors = unresolved(config)
    assert any("DAGSTER_PG_PASSWORD" in error for error in errors), errors
