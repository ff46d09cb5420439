"""`surg compliance check` against moto's S3 server: a compliant bucket, a bad one, and a lake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3

from resources.blob_store import LocalBlobStore, S3BlobStore
from resources.compliance import catalog_check, run_checks
from surg_assets_tests.conftest import REPO, create_bucket

S3_CHECKS = [
    "bucket default encryption (SSE-KMS)",
    "bucket versioning",
    "public access block",
    "TLS-only bucket policy",
    "raw videos to colder storage",
    "access log retention",
    "catalog on an encrypted connection",
]
PG_TLS = "postgresql+psycopg://surg@db.internal/surg?sslmode=verify-full"


def _s3(endpoint: str) -> object:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _put_rule(s3: object, bucket: str, rule: dict) -> None:
    s3.put_bucket_lifecycle_configuration(  # type: ignore[attr-defined]
        Bucket=bucket, LifecycleConfiguration={"Rules": [rule]}
    )


def _log_to(s3: object, bucket: str, logs: str, target_prefix: str) -> None:
    s3.create_bucket(Bucket=logs, ACL="log-delivery-write")  # type: ignore[attr-defined]
    s3.put_bucket_logging(  # type: ignore[attr-defined]
        Bucket=bucket,
        BucketLoggingStatus={
            "LoggingEnabled": {"TargetBucket": logs, "TargetPrefix": target_prefix}
        },
    )


def _compliant_bucket(endpoint: str, prefix: str) -> str:
    s3 = _s3(endpoint)
    kms = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    bucket, logs = f"surg-good-{uuid.uuid4().hex[:8]}", f"surg-logs-{uuid.uuid4().hex[:8]}"
    create_bucket(endpoint, bucket, key_id)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    _put_rule(
        s3,
        bucket,
        {
            "ID": "raw-videos-to-glacier",
            "Status": "Enabled",
            "Filter": {"Prefix": f"{prefix}/raw-videos/"},
            "Transitions": [{"Days": 30, "StorageClass": "GLACIER_IR"}],
        },
    )
    _log_to(s3, bucket, logs, "s3/")
    _put_rule(
        s3,
        logs,
        {
            "ID": "keep-six-years",
            "Status": "Enabled",
            "Filter": {"Prefix": "s3/"},
            "Expiration": {"Days": 2200},
        },
    )
    return bucket


def _bad_bucket(endpoint: str) -> str:
    """Encrypted with SSE-S3 only, a policy without the TLS deny, logs kept 30 days."""
    s3 = _s3(endpoint)
    bucket, logs = f"surg-bad-{uuid.uuid4().hex[:8]}", f"surg-logs-{uuid.uuid4().hex[:8]}"
    create_bucket(endpoint, bucket)
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": False,
            "RestrictPublicBuckets": True,
        },
    )
    allow_all = {
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Statement": [allow_all]}))
    _put_rule(
        s3,
        bucket,
        {
            "ID": "processed",
            "Status": "Enabled",
            "Filter": {"Prefix": "processed-videos/"},
            "Transitions": [{"Days": 30, "StorageClass": "STANDARD_IA"}],
        },
    )
    _log_to(s3, bucket, logs, "")
    _put_rule(
        s3, logs, {"ID": "short", "Status": "Enabled", "Filter": {}, "Expiration": {"Days": 30}}
    )
    return bucket


def _by_name(results: list) -> dict[str, bool]:
    return {r.name: r.passed for r in results}


def test_a_compliant_bucket_passes_every_check(moto_s3: str) -> None:
    bucket = _compliant_bucket(moto_s3, "hospital-a")
    store = S3BlobStore(bucket=bucket, prefix="hospital-a", endpoint_url=moto_s3)
    results = run_checks(store, PG_TLS)
    assert [r.name for r in results] == S3_CHECKS
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_a_bad_bucket_fails_exactly_the_safeguards_it_lacks(moto_s3: str) -> None:
    store = S3BlobStore(bucket=_bad_bucket(moto_s3), endpoint_url=moto_s3)
    results = run_checks(store, "postgresql+psycopg://surg@db.internal/surg")
    assert _by_name(results) == dict.fromkeys(S3_CHECKS, False)
    detail = {r.name: r.detail for r in results}
    assert "AES256, not SSE-KMS" in detail["bucket default encryption (SSE-KMS)"]
    assert "versioning is off" in detail["bucket versioning"]
    assert "BlockPublicPolicy" in detail["public access block"]
    assert "expire after 30 days" in detail["access log retention"]
    assert "sslmode=prefer" in detail["catalog on an encrypted connection"]
    # A bucket with nothing configured at all fails every check too, each with its reason.
    bare = f"surg-bare-{uuid.uuid4().hex[:8]}"
    _s3(moto_s3).create_bucket(Bucket=bare)
    bare_results = run_checks(S3BlobStore(bucket=bare, endpoint_url=moto_s3), PG_TLS)
    assert [r.passed for r in bare_results] == [False] * 6 + [True]
    assert "no default encryption" in bare_results[0].detail
    assert "logging is off" in bare_results[5].detail


def test_catalog_connections_and_the_local_lake(tmp_path: Path) -> None:
    assert catalog_check(PG_TLS).passed
    assert catalog_check("postgresql+psycopg://u@h/db?sslmode=require").passed
    assert not catalog_check("postgresql+psycopg://u@h/db?sslmode=disable").passed
    assert catalog_check(f"sqlite:///{tmp_path / 'c.db'}").passed
    assert not catalog_check("sqlite://").passed
    sqlite = f"sqlite:///{tmp_path / 'c.db'}"
    lake = LocalBlobStore(root=str(tmp_path / "lake"))
    lake.put_bytes("processed-metadata/c0123456789abcdef/a.json", b"{}")
    assert [r.passed for r in run_checks(lake, sqlite)] == [True, True]
    (tmp_path / "lake.key").chmod(0o644)
    assert "readable by others" in run_checks(lake, sqlite)[0].detail
    (tmp_path / "lake.key").chmod(0o600)
    planted = tmp_path / "lake" / "processed-metadata" / "c0123456789abcdef" / "b.json"
    planted.write_bytes(b"{}")
    assert "1 stored objects are unencrypted" in run_checks(lake, sqlite)[0].detail
    off = LocalBlobStore(root=str(tmp_path / "lake"), encrypt_at_rest=False)
    assert "SURG_LAKE_ENCRYPTION=off" in run_checks(off, sqlite)[0].detail


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "surg_assets.cli", "compliance", "check", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=120,
    )


def test_the_cli_exits_0_when_all_pass_and_1_naming_what_failed(
    moto_s3: str, tmp_path: Path
) -> None:
    env = {
        "SURG_ENV": "prod",
        "SURG_HOME": str(tmp_path),
        "SURG_S3_ENDPOINT_URL": moto_s3,
        "SURG_S3_PREFIX": "hospital-a",
        "SURG_CATALOG_URL": PG_TLS,
    }
    good = _cli({**env, "SURG_S3_BUCKET": _compliant_bucket(moto_s3, "hospital-a")}, "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["passed"] is True
    bad = _cli({**env, "SURG_S3_BUCKET": _bad_bucket(moto_s3)})
    assert bad.returncode == 1, bad.stderr
    assert "FAIL" in bad.stdout and "public access block" in bad.stdout
    wrong = _cli({**env, "SURG_S3_BUCKET": "x", "SURG_LOG_RETENTION_DAYS": "many"})
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("error: setting SURG_LOG_RETENTION_DAYS")


def test_a_whole_bucket_lifecycle_rule_covers_raw_videos(moto_s3: str) -> None:
    bucket = _compliant_bucket(moto_s3, "hospital-a")
    _put_rule(
        _s3(moto_s3),
        bucket,
        {
            "ID": "everything",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "Transitions": [{"Days": 90, "StorageClass": "DEEP_ARCHIVE"}],
        },
    )
    store = S3BlobStore(bucket=bucket, prefix="hospital-a", endpoint_url=moto_s3)
    assert _by_name(run_checks(store, PG_TLS))["raw videos to colder storage"]
