"""The catalog on SQLite and on the machine's PostgreSQL, through the same Alembic migrations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from resources.catalog import Catalog

TABLES = {"cases", "uploads", "annotations", "model_versions", "users", "audit_log"}


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    if request.param == "sqlite":
        cat = Catalog(url=f"sqlite:///{tmp_path / 'catalog.db'}")
    else:
        cat = Catalog(url=request.getfixturevalue("pg_database"))
        # Each test starts from an empty schema on the shared throw-away database.
        with cat.engine.begin() as conn:
            for table in (
                "audit_log",
                "annotations",
                "model_versions",
                "users",
                "uploads",
                "cases",
            ):
                # The audit log refuses row deletes (migration 0002's trigger); TRUNCATE is the
                # administrator's way to empty it.
                verb = "TRUNCATE" if table == "audit_log" else "DELETE FROM"
                conn.exec_driver_sql(f"{verb} {table}")
    yield cat
    cat.dispose()


def test_migrations_create_every_table_at_head(catalog: Catalog) -> None:
    assert catalog.schema_revision() == "0002"
    assert set(inspect(catalog.engine).get_table_names()) >= TABLES
    catalog.migrate()  # idempotent
    assert catalog.schema_revision() == "0002"


def test_same_bytes_map_to_the_same_case(catalog: Catalog) -> None:
    first, created = catalog.create_case(sha256="a" * 64, duration_s=12.5)
    again, created_again = catalog.create_case(sha256="a" * 64)
    other, _ = catalog.create_case(sha256="b" * 64)
    assert created and not created_again
    assert again.id == first.id != other.id
    assert first.id.startswith("c") and len(first.id) == 17


def test_status_and_failure_reason(catalog: Catalog) -> None:
    case, _ = catalog.create_case(sha256="c" * 64)
    assert catalog.get_case(case.id).status == "queued"
    catalog.set_status(case.id, "failed", "the video is truncated")
    failed = catalog.get_case(case.id)
    assert (failed.status, failed.failure_reason) == ("failed", "the video is truncated")
    catalog.set_status(case.id, "ready", "ignored for non-failed states")
    assert catalog.get_case(case.id).failure_reason is None
    with pytest.raises(ValueError, match="unknown case status"):
        catalog.set_status(case.id, "exploded")
    assert [c.id for c in catalog.list_cases(status="ready")] == [case.id]


@pytest.mark.parametrize("fresh", [True, False], ids=["first-use", "warm"])
def test_concurrent_ingest_of_the_same_bytes_creates_one_case(
    catalog: Catalog, fresh: bool
) -> None:
    if not fresh:
        _ = catalog.engine
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            case, created = catalog.create_case(sha256="d" * 64)
        except BaseException as exc:  # collected: a thread's exception would not fail the test
            errors.append(exc)
            return
        results.append((case.id, created))

    threads = [threading.Thread(target=ingest) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({case_id for case_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
