"""The safeguards a deployment can verify about itself, each a pass or a fail with a reason.

``surg compliance check`` runs :func:`run_checks` on the configured resources: for an S3 lake the
bucket's default encryption (SSE-KMS), versioning, public access block, TLS-only bucket policy,
a lifecycle rule moving ``raw-videos/`` to colder storage and server access logging with retained
logs; for a local lake its encryption at rest; for both, the catalog's connection. Each check
names the HIPAA Security Rule safeguard it supports. Nothing here changes a setting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from resources.blob_store import (
    DROP_PREFIX,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    bucket_default_encryption,
)
from resources.lake_crypto import BlobIntegrityError

# HIPAA asks for documentation to be kept six years (45 CFR 164.316(b)(2)).
DEFAULT_LOG_RETENTION_DAYS = 2190
COLD_STORAGE_CLASSES = {
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "GLACIER_IR",
    "DEEP_ARCHIVE",
}
SECURE_SSLMODES = {"require", "verify-ca", "verify-full"}


@dataclass(frozen=True)
class CheckResult:
    """One safeguard: its name, the HIPAA provision it supports, pass or fail, and why."""

    name: str
    safeguard: str
    passed: bool
    detail: str


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or type(exc).__name__)


def _guarded(name: str, safeguard: str, check: Callable[[], tuple[bool, str]]) -> CheckResult:
    # A check that cannot read its setting fails (with the service's error code), never passes.
    try:
        passed, detail = check()
    except Exception as exc:  # noqa: BLE001 - every failure to verify is a failed check
        passed, detail = False, f"could not be read ({_error_code(exc)})"
    return CheckResult(name, safeguard, passed, detail)


def _missing(exc: Exception, *codes: str) -> bool:
    return _error_code(exc) in codes


def _default_encryption(s3: Any, bucket: str) -> tuple[bool, str]:
    algorithm = bucket_default_encryption(s3, bucket)
    if algorithm == "aws:kms" or algorithm == "aws:kms:dsse":
        return True, "new objects are encrypted with SSE-KMS by default"
    if algorithm:
        return False, f"default encryption is {algorithm}, not SSE-KMS; set a KMS key"
    return False, "the bucket has no default encryption; turn on SSE-KMS"


def _versioning(s3: Any, bucket: str) -> tuple[bool, str]:
    status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    if status == "Enabled":
        return True, "versioning is enabled (overwritten or deleted objects are kept)"
    return False, f"versioning is {(status or 'off').lower()}; enable it"


def _public_access_block(s3: Any, bucket: str) -> tuple[bool, str]:
    flags = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
    try:
        config = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except Exception as exc:
        if _missing(exc, "NoSuchPublicAccessBlockConfiguration"):
            return False, "the bucket has no public access block; block all public access"
        raise
    off = [f for f in flags if not config.get(f)]
    if off:
        return False, f"public access is not fully blocked ({', '.join(off)} off)"
    return True, "all four public access block settings are on"


def _denies_plain_http(statement: dict[str, Any]) -> bool:
    if statement.get("Effect") != "Deny":
        return False
    principal = statement.get("Principal")
    if principal not in ("*", {"AWS": "*"}):
        return False
    actions = statement.get("Action")
    actions = [actions] if isinstance(actions, str) else list(actions or [])
    if not any(a in ("*", "s3:*") for a in actions):
        return False
    for operator in ("Bool", "BoolIfExists"):
        value = statement.get("Condition", {}).get(operator, {}).get("aws:SecureTransport")
        if str(value).lower() == "false":
            return True
    return False


def _tls_only_policy(s3: Any, bucket: str) -> tuple[bool, str]:
    try:
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except Exception as exc:
        if _missing(exc, "NoSuchBucketPolicy"):
            return False, "the bucket has no policy; deny every request without TLS"
        raise
    statements = policy.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    if any(_denies_plain_http(s) for s in statements):
        return True, "the bucket policy denies every request made without TLS"
    return False, "no policy statement denies s3:* when aws:SecureTransport is false"


def _rule_prefix(rule: dict[str, Any]) -> str:
    f = rule.get("Filter") or {}
    return str(f.get("Prefix", f.get("And", {}).get("Prefix", rule.get("Prefix", ""))) or "")


def _lifecycle(s3: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        return s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except Exception as exc:
        if _missing(exc, "NoSuchLifecycleConfiguration"):
            return []
        raise


def _raw_videos_lifecycle(s3: Any, bucket: str, raw_prefix: str) -> tuple[bool, str]:
    for rule in _lifecycle(s3, bucket):
        if rule.get("Status") != "Enabled" or not raw_prefix.startswith(_rule_prefix(rule)):
            continue
        transitions = rule.get("Transitions") or (
            [rule["Transition"]] if "Transition" in rule else []
        )
        cold = [t for t in transitions if t.get("StorageClass") in COLD_STORAGE_CLASSES]
        if cold:
            t = cold[0]
            return (
                True,
                f"{raw_prefix} moves to {t['StorageClass']} after {t.get('Days', '?')} days",
            )
    return False, f"no enabled lifecycle rule moves {raw_prefix} to colder storage; add one"


def _log_retention(s3: Any, bucket: str, minimum_days: int) -> tuple[bool, str]:
    logging = s3.get_bucket_logging(Bucket=bucket).get("LoggingEnabled")
    if not logging:
        return False, "server access logging is off; send access logs to a log bucket"
    target, prefix = logging["TargetBucket"], logging.get("TargetPrefix", "")
    for rule in _lifecycle(s3, target):
        expiry = (rule.get("Expiration") or {}).get("Days")
        applies = prefix.startswith(_rule_prefix(rule)) or _rule_prefix(rule).startswith(prefix)
        if rule.get("Status") == "Enabled" and applies and expiry and expiry < minimum_days:
            return False, (
                f"access logs in {target} expire after {expiry} days, "
                f"fewer than the {minimum_days} required"
            )
    return True, f"access logs go to {target} and are kept at least {minimum_days} days"


def s3_checks(
    store: S3BlobStore, log_retention_days: int = DEFAULT_LOG_RETENTION_DAYS
) -> list[CheckResult]:
    """The bucket's safeguards, read with the store's own credentials (nothing is changed)."""
    s3, bucket = store.s3_client(), store.bucket
    base = store.prefix.strip("/")
    raw_prefix = f"{base}/{DROP_PREFIX}" if base else DROP_PREFIX
    return [
        _guarded(
            "bucket default encryption (SSE-KMS)",
            "164.312(a)(2)(iv) encryption",
            lambda: _default_encryption(s3, bucket),
        ),
        _guarded("bucket versioning", "164.312(c)(1) integrity", lambda: _versioning(s3, bucket)),
        _guarded(
            "public access block",
            "164.312(a)(1) access control",
            lambda: _public_access_block(s3, bucket),
        ),
        _guarded(
            "TLS-only bucket policy",
            "164.312(e)(1) transmission security",
            lambda: _tls_only_policy(s3, bucket),
        ),
        _guarded(
            "raw videos to colder storage",
            "164.310(d)(2)(iv) data storage",
            lambda: _raw_videos_lifecycle(s3, bucket, raw_prefix),
        ),
        _guarded(
            "access log retention",
            "164.312(b) audit controls; 164.316(b)(2) retention",
            lambda: _log_retention(s3, bucket, log_retention_days),
        ),
    ]


def catalog_check(url: str) -> CheckResult:
    """Whether the catalog is reached over TLS (PostgreSQL ``sslmode``) or is a local file."""
    from sqlalchemy.engine import make_url

    def check() -> tuple[bool, str]:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                return False, "the SQLite catalog is in memory; nothing would be kept"
            return True, "SQLite file on local disk (no network connection to protect)"
        if backend == "postgresql":
            mode = str(parsed.query.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer")
            if mode in SECURE_SSLMODES:
                return True, f"PostgreSQL over TLS (sslmode={mode})"
            return False, (
                f"PostgreSQL sslmode={mode} allows an unencrypted connection; "
                "add ?sslmode=verify-full to SURG_CATALOG_URL"
            )
        return False, f"{backend} catalog: TLS cannot be verified; use PostgreSQL with sslmode"

    return _guarded(
        "catalog on an encrypted connection", "164.312(e)(1) transmission security", check
    )


def _lake_encryption(store: LocalBlobStore) -> tuple[bool, str]:
    if not store.encrypt_at_rest:
        return False, "SURG_LAKE_ENCRYPTION=off: new objects are written unencrypted"
    store.lake_key()  # a missing or malformed key fails here
    if not store.encryption_key:
        key_file = Path(store.encryption_key_file or store.default_key_file()).resolve()
        if key_file.stat().st_mode & 0o077:
            return False, f"the key file {key_file} is readable by others; chmod 600 it"
        if key_file.is_relative_to(Path(store.root).resolve()):
            return False, "the key file is inside the lake; move it out (SURG_LAKE_KEY_FILE)"
    plain = 0
    for info in store.list_prefix(""):
        if info.key.startswith(DROP_PREFIX):
            continue  # files dropped by hand are encrypted when they are adopted
        try:
            plain += not store.is_encrypted(info.key)
        except BlobIntegrityError:  # a plain file where only encrypted objects are trusted
            plain += 1
    if plain:
        return False, f"{plain} stored objects are unencrypted; re-materialize their assets"
    return True, "AES-256-GCM in authenticated chunks; every stored object is encrypted"


def run_checks(
    blob_store: BlobStore,
    catalog_url: str,
    log_retention_days: int = DEFAULT_LOG_RETENTION_DAYS,
) -> list[CheckResult]:
    """Every safeguard this deployment can verify about its lake and catalog."""
    results: list[CheckResult] = []
    if isinstance(blob_store, S3BlobStore):
        results += s3_checks(blob_store, log_retention_days)
    elif isinstance(blob_store, LocalBlobStore):
        results.append(
            _guarded(
                "local lake encryption at rest",
                "164.312(a)(2)(iv) encryption",
                lambda: _lake_encryption(blob_store),
            )
        )
    results.append(catalog_check(catalog_url))
    return results


def as_json(results: list[CheckResult]) -> str:
    """The report as one JSON document: ``passed`` overall and every check."""
    return json.dumps(
        {"passed": all(r.passed for r in results), "checks": [asdict(r) for r in results]},
        indent=2,
    )
