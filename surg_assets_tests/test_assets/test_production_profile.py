"""The production profile end to end: PostgreSQL-backed Dagster instance, multiprocess executor,
S3 (moto's server over HTTP, SSE-KMS) as the blob store and PostgreSQL as the catalog."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pytest
from sqlalchemy import create_engine, text

from surg_assets_tests.conftest import PG_ADMIN_URL, create_bucket


@pytest.fixture
def dagster_pg_url(pg_database: str) -> Iterator[str]:
    """A second throw-away database: Dagster's storage must not share the catalog's."""
    name = f"surg_dagster_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql").rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_analyze_case_on_postgres_s3_and_the_multiprocess_executor(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moto_s3: str,
    pg_database: str,
    dagster_pg_url: str,
    synthetic_case: Path,
    tiny_models: dict[str, Path],
) -> None:
    bucket = f"surg-prod-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    key_id = boto3.client("kms", endpoint_url=moto_s3, region_name="us-east-1").create_key()[
        "KeyMetadata"
    ]["KeyId"]
    create_bucket(moto_s3, bucket, key_id)
    env = {
        "SURG_ENV": "prod",
        "SURG_HOME": str(tmp_path / "home"),
        "SURG_S3_BUCKET": bucket,
        "SURG_S3_PREFIX": "hospital-a",
        "SURG_S3_ENDPOINT_URL": moto_s3,
        "SURG_S3_KMS_KEY_ID": key_id,
        "SURG_CATALOG_URL": pg_database,
        "AWS_DEFAULT_REGION": "us-east-1",
        # 24 s of video in chunks of 12 s: detection fans out over two steps (and processes).
        "SURG_DETECTION_CHUNK_MINUTES": "0.2",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    from resources.settings import load_settings
    from surg_assets.definitions import analyze_case_job
    from surg_assets.intake import ingest_file
    from surg_assets.settings import build_resources, video_limits_from_env

    resources = build_resources(load_settings())
    for name, path in tiny_models.items():
        resources["registry"].register(
            name, {"weights.pt": path}, card={}, status="Approved", decided_by="test"
        )
    case_id = ingest_file(
        synthetic_case / "video.mp4",
        resources["blob_store"],
        resources["catalog"],
        video_limits_from_env(),
    ).case_id

    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: {dagster_pg_url}\ntelemetry:\n  enabled: false\n"
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("cases", [case_id])
        result = dg.execute_job(
            dg.reconstructable(analyze_case_job),
            instance=instance,
            tags={"dagster/partition": case_id},
            run_config={"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}},
        )
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run.tags["dagster/partition"] == case_id
        steps = {e.step_key for e in result.all_events if e.is_step_success}
        assert {"raw_video", "instrument_tracks", "phase_timeline", "deidentified_video"} <= steps
        assert {
            f"instrument_detections.detect_instrument_chunk[chunk_000{i}]" for i in range(2)
        } <= steps
        # Steps ran in their own processes.
        pids = {e.pid for e in result.all_events if e.is_step_start}
        assert len(pids) > 1 and os.getpid() not in pids

    keys = {
        o["Key"]
        for o in s3.list_objects_v2(
            Bucket=bucket, Prefix=f"hospital-a/processed-metadata/{case_id}/"
        )["Contents"]
    }
    for name in ("detections.parquet", "tracks.parquet", "phases.parquet", "events.parquet"):
        assert f"hospital-a/processed-metadata/{case_id}/{name}" in keys
    # The chunks handed from step to step through S3 are gone once merged.
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="hospital-a/tmp/")
    head = s3.head_object(Bucket=bucket, Key=f"hospital-a/processed-videos/{case_id}/video.mp4")
    assert head["ServerSideEncryption"] == "aws:kms"
    with create_engine(pg_database).connect() as conn:
        status = conn.execute(
            text("SELECT status FROM cases WHERE id = :id"), {"id": case_id}
        ).scalar_one()
    assert status == "analysing"  # 'ready' is set by the run-status sensor in the daemon
