"""deploy/bootstrap_database.py against the machine's real PostgreSQL (127.0.0.1:5432)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from types import ModuleType

import psycopg
import pytest

from .conftest import DEPLOY

pytestmark = pytest.mark.postgres

ADMIN_DSN = os.environ.get("SURG_TEST_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bootstrap_database", DEPLOY / "bootstrap_database.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def admin() -> Iterator[psycopg.Connection]:
    try:
        connection = psycopg.connect(ADMIN_DSN, dbname="postgres", autocommit=True)
    except psycopg.OperationalError as error:
        message = f"PostgreSQL at {ADMIN_DSN} is not reachable: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with connection:
        yield connection


def test_bootstrap_creates_role_and_databases_once(admin: psycopg.Connection) -> None:
    script = load_script()
    suffix = uuid.uuid4().hex[:8]
    role, databases = f"surg_app_{suffix}", [f"surg_catalog_{suffix}", f"dagster_{suffix}"]
    password = "it's-a-test-password"  # the quote checks literal escaping
    try:
        first = script.bootstrap(admin, role, password, databases)
        assert first == [f"created role {role}", *(f"created database {d}" for d in databases)]
        owners = admin.execute(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY(%s)",
            (databases,),
        ).fetchall()
        assert sorted(owners) == sorted((d, role) for d in databases)
        # The application role can log in with the password from its secret.
        with psycopg.connect(ADMIN_DSN, user=role, password=password, dbname=databases[1]) as app:
            app.execute("CREATE TABLE runs (id int)")
        # Idempotent: a second run creates nothing.
        second = script.bootstrap(admin, role, password, databases)
        assert not any(action.startswith("created") for action in second)
        # What multi-user rotation does: a clone login that is a member of the role. Tables
        # it creates still belong to the application role, so both logins keep working.
        admin.execute(f"CREATE ROLE \"{role}_clone\" LOGIN PASSWORD 'clone'")
        admin.execute(f'GRANT "{role}" TO "{role}_clone"')
        clone_dsn = {"user": f"{role}_clone", "password": "clone", "dbname": databases[1]}
        with psycopg.connect(ADMIN_DSN, **clone_dsn) as clone:
            clone.execute("CREATE TABLE events (id int)")
        with psycopg.connect(ADMIN_DSN, user=role, password=password, dbname=databases[1]) as app:
            owners = app.execute(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
            app.execute("INSERT INTO events VALUES (1)")
        assert sorted(owners) == [("events", role), ("runs", role)]
    finally:
        for database in databases:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        admin.execute(f'DROP ROLE IF EXISTS "{role}_clone"')
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_missing_settings_end_in_one_sentence() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SURG_DB", "DAGSTER_PG"))}
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "bootstrap_database.py")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "SURG_DB_HOST" in result.stderr and "Traceback" not in result.stderr
