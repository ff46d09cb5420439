"""The catalog survives a restart with nothing lost: engines closed, or the writer killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from resources.audit import AuditLog
from resources.catalog import Catalog
from surg_assets_tests.conftest import REPO

# Runs in a child process: writes cases, statuses, annotations and audit entries, prints what it
# committed, then SIGKILLs itself (no clean shutdown, no engine disposal, no atexit).
WRITER = r"""
import json, os, signal, sys
from resources.audit import AuditLog
from resources.catalog import Catalog
catalog = Catalog(url=os.environ["CATALOG_URL"])
audit = AuditLog(catalog)
written = {"cases": {}, "annotations": []}
for i in range(5):
    case, _ = catalog.create_case(sha256=f"{os.environ['TAG']}-{i:064d}"[:64], status="queued")
    catalog.set_status(case.id, "ready" if i % 2 else "failed", None if i % 2 else "bad file")
    written["cases"][case.id] = "ready" if i % 2 else "failed"
    audit.record("alice", "case.view", case_id=case.id, source="cli", detail={"i": i})
written["annotations"] = catalog.add_annotations(
    [{"kind": "box", "frame_index": k, "t_s": k / 25} for k in range(7)], "restart", "bob"
)
audit.record("system", "model.approve", detail={"name": "phase_model"})
print(json.dumps(written), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _state(catalog: Catalog) -> dict:
    audit = AuditLog(catalog)
    result = audit.verify()
    return {
        "cases": {c.id: (c.status, c.failure_reason) for c in catalog.list_cases()},
        "annotations": sorted(a.id for a in catalog.annotations("restart")),
        "audit": [(e.id, e.actor, e.action, e.case_id, e.hash) for e in audit.entries()],
        "chain_ok": result.ok,
    }


def _survives(url: str, tag: str) -> None:
    # 1. Write in this process, close every pooled connection, reopen with a new resource.
    first = Catalog(url=url)
    case, _ = first.create_case(sha256=f"{tag}-in-process".ljust(64, "0")[:64], status="queued")
    first.set_status(case.id, "analysing")
    AuditLog(first).record("alice", "case.upload", case_id=case.id, source="127.0.0.1")
    before = _state(first)
    first.dispose()
    again = Catalog(url=url)
    assert _state(again) == before
    again.dispose()

    # 2. A writer process killed outright after its commits; a new process reads it all back.
    env = {**os.environ, "CATALOG_URL": url, "TAG": tag, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", WRITER], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    written = json.loads(proc.stdout.strip().splitlines()[-1])
    reopened = Catalog(url=url)
    after = _state(reopened)
    for case_id, status in written["cases"].items():
        assert after["cases"][case_id][0] == status
    assert set(written["annotations"]) <= set(after["annotations"])
    assert len(written["annotations"]) == 7
    assert after["audit"][: len(before["audit"])] == before["audit"]
    assert len(after["audit"]) == len(before["audit"]) + 6
    assert after["chain_ok"], "the audit chain must verify after the restart"
    # ... and the chain goes on from where the killed writer left it.
    AuditLog(reopened).record("alice", "case.view", case_id=case.id)
    assert AuditLog(reopened).verify().ok
    reopened.dispose()


def test_sqlite_catalog_survives_restart_and_a_killed_writer(tmp_path: Path) -> None:
    _survives(f"sqlite:///{tmp_path / 'catalog.db'}", "sqlite")


def test_postgresql_catalog_survives_restart_and_a_killed_writer(pg_database: str) -> None:
    _survives(pg_database, "postgres")


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SURG_HOME", str(tmp_path / "home"))
