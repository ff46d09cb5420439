"""The audit trail and the accounts: hash chain on SQLite and PostgreSQL, tamper detection, the
append-only triggers, concurrent writers, and the `surg users` / `surg audit` commands."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from resources.accounts import Accounts
from resources.audit import AuditLog
from resources.catalog import Catalog
from surg_assets_tests.test_cli import SURG, assert_user_error


def surg(home: Path, *args: str, input: str = "") -> subprocess.CompletedProcess:
    """Run the `surg` command in a fresh SURG_HOME, with ``input`` on stdin."""
    env = {**os.environ, "SURG_HOME": str(home), "SURG_ENV": "local"}
    env.pop("SURG_CATALOG_URL", None)
    return subprocess.run(
        [SURG, *args], input=input, capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    if request.param == "sqlite":
        cat = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    else:
        cat = Catalog(url=request.getfixturevalue("pg_database"))
        # The database is shared by the tests: empty the log and restore the triggers that a
        # tampering test dropped (statements of migration 0002).
        migration = importlib.import_module("resources.migrations.versions.0002_web")
        with cat.engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE audit_log")
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log")
            for sql in migration._PG_TRIGGERS:
                conn.exec_driver_sql(sql)
    yield cat
    cat.dispose()


def _raw(catalog: Catalog, *statements: str) -> None:
    """Run SQL as someone with database access would, triggers dropped first."""
    drop = (
        ["DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log"]
        if catalog.engine.dialect.name == "postgresql"
        else [
            "DROP TRIGGER IF EXISTS audit_log_no_update",
            "DROP TRIGGER IF EXISTS audit_log_no_delete",
        ]
    )
    with catalog.engine.begin() as conn:
        for sql in [*drop, *statements]:
            conn.exec_driver_sql(sql)


def _fill(log: AuditLog, n: int = 5) -> None:
    for i in range(n):
        log.record("rey", "case.view", case_id=f"c{i:016x}", source="10.0.0.1", detail={"i": i})


def test_an_intact_chain_verifies_and_exports(catalog: Catalog) -> None:
    log = AuditLog(catalog)
    _fill(log)
    result = log.verify()
    assert result.ok and result.entries == 5
    lines = [json.loads(x) for x in log.export()]
    assert [e["id"] for e in lines] == [1, 2, 3, 4, 5]
    assert lines[1]["prev_hash"] == lines[0]["hash"] and lines[0]["source"] == "10.0.0.1"
    future = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    assert list(log.export(since=future)) == []


@pytest.mark.parametrize(
    ("tamper", "bad_id"),
    [
        ("UPDATE audit_log SET actor = 'mallory' WHERE id = 3", 3),
        ("UPDATE audit_log SET outcome = 'ok', hash = hash WHERE id = 2", None),
        ("DELETE FROM audit_log WHERE id = 2", 3),
        (
            "INSERT INTO audit_log (id, ts, actor, action, outcome, detail, prev_hash, hash) "
            "VALUES (6, '2026-01-01 00:00:00', 'mallory', 'case.view', 'ok', '{}', 'x', 'y')",
            6,
        ),
    ],
)
def test_verify_names_the_first_altered_deleted_or_inserted_entry(
    catalog: Catalog, tamper: str, bad_id: int | None
) -> None:
    log = AuditLog(catalog)
    _fill(log)
    _raw(catalog, tamper)
    result = log.verify()
    assert result.first_bad_id == bad_id, result.reason


def test_the_database_refuses_to_rewrite_the_log(catalog: Catalog) -> None:
    log = AuditLog(catalog)
    _fill(log, 2)
    for sql in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), catalog.engine.begin() as conn:
            conn.exec_driver_sql(sql)
    assert log.verify().ok and log.verify().entries == 2


def test_concurrent_writers_keep_one_unbroken_chain(catalog: Catalog) -> None:
    log = AuditLog(catalog)
    other = AuditLog(Catalog(url=catalog.url))  # a second engine, as another process would have

    def write(target: AuditLog, who: str) -> None:
        for _ in range(15):
            target.record(who, "case.view")

    threads = [
        threading.Thread(target=write, args=(t, f"u{i}")) for i, t in enumerate([log, other] * 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.catalog.dispose()
    result = log.verify()
    assert result.ok and result.entries == 60


def test_passwords_are_argon2_hashes_and_disabling_ends_sessions(tmp_path: Path) -> None:
    catalog = Catalog(url=f"sqlite:///{tmp_path / 'c.db'}")
    accounts = Accounts(catalog)
    user = accounts.add_user("rey", "reviewer", "long enough pw")
    assert user.password_hash.startswith("$argon2id$") and "long enough" not in user.password_hash
    assert accounts.authenticate("rey", "long enough pw") is not None
    assert accounts.authenticate("rey", "wrong password") is None
    assert accounts.authenticate("nobody", "long enough pw") is None
    token, principal = accounts.open_session(user)
    bearer, _ = accounts.create_token("rey")
    assert accounts.session_principal(token).name == "rey"
    assert accounts.token_principal(bearer).role == "reviewer"
    accounts.set_disabled("rey")
    assert accounts.session_principal(token) is None and accounts.token_principal(bearer) is None
    assert accounts.authenticate("rey", "long enough pw") is None
    db = sqlite3.connect(tmp_path / "c.db")
    stored = [
        r[0]
        for r in db.execute("SELECT id FROM web_sessions UNION SELECT token_hash FROM api_tokens")
    ]
    assert token not in stored and bearer not in stored
    catalog.dispose()


def test_users_and_audit_commands(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = surg(
        home, "users", "add", "ada", "--role", "admin", "--password-stdin", input="pw-for-ada-1\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert_user_error(
        surg(
            home,
            "users",
            "add",
            "bob",
            "--role",
            "janitor",
            "--password-stdin",
            input="pw-for-bob-1\n",
        ),
        "role 'janitor' is unknown",
    )
    assert_user_error(
        surg(
            home,
            "users",
            "add",
            "ada",
            "--role",
            "admin",
            "--password-stdin",
            input="another-pw-1\n",
        ),
        "exists already",
    )
    assert_user_error(
        surg(home, "users", "add", "cy", "--role", "surgeon", "--password-stdin", input="short\n"),
        "too short",
    )
    assert "ada" in surg(home, "users", "list").stdout
    assert surg(home, "users", "disable", "ada").returncode == 0
    assert "disabled" in surg(home, "users", "list").stdout
    assert_user_error(surg(home, "users", "disable", "nobody"), "there is no user nobody")

    ok = surg(home, "audit", "verify")
    assert ok.returncode == 0 and "intact: 2 entries" in ok.stderr
    exported = [
        json.loads(x)
        for x in surg(home, "audit", "export", "--since", "2000-01-01").stdout.splitlines()
    ]
    assert [e["action"] for e in exported] == ["user.add", "user.disable"]
    assert surg(home, "audit", "export", "--since", "2999-01-01T00:00Z").stdout == ""
    assert_user_error(surg(home, "audit", "export", "--since", "yesterday"), "not an ISO date")

    catalog = Catalog(url=f"sqlite:///{home / 'catalog.db'}")
    _raw(catalog, 'UPDATE audit_log SET detail = \'{"user": "eve"}\' WHERE id = 1')
    catalog.dispose()
    bad = surg(home, "audit", "verify")
    assert bad.returncode == 1 and "broken at entry 1" in bad.stderr
