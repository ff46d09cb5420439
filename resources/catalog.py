"""The catalog: what cases, uploads, annotations, model versions, users and audit entries exist.

SQLAlchemy 2 models migrated by Alembic. SQLite (a file under ``SURG_HOME``) by default,
PostgreSQL by URL in production; the same code and migrations serve both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

CASE_STATUSES = ("uploading", "queued", "analysing", "ready", "failed")


def utcnow() -> dt.datetime:
    """Timezone-aware now (stored as UTC)."""
    return dt.datetime.now(dt.UTC)


def new_case_id() -> str:
    """A server-generated opaque case id: 'c' + 16 hex digits, nothing derived from the file."""
    return "c" + secrets.token_hex(8)


class Base(DeclarativeBase):
    """Declarative base of the catalog tables."""


class Case(Base):
    """One surgical video and everything computed from it."""

    __tablename__ = "cases"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    source_key: Mapped[str | None] = mapped_column(String(256))
    procedure: Mapped[str] = mapped_column(String(64), default="cholecystectomy")
    owner: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    duration_s: Mapped[float | None] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    fps: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Upload(Base):
    """A (resumable, multipart) upload that becomes a case's raw video."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str | None] = mapped_column(String(128))
    part_size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="open")
    backend_upload_id: Mapped[str | None] = mapped_column(String(1024))
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Where the assembled object goes (raw-videos/{case_id}/source.{ext}); the extension is the
    # only thing kept from the client's file name (migration 0002).
    target_key: Mapped[str | None] = mapped_column(String(256))


class Annotation(Base):
    """One label: imported from a dataset or made by a reviewer; corrections supersede."""

    __tablename__ = "annotations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str | None] = mapped_column(String(32), index=True)
    dataset: Mapped[str | None] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # box, polygon, phase, tool_presence, event
    frame_index: Mapped[int | None] = mapped_column(BigInteger)
    t_s: Mapped[float | None] = mapped_column(Float)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    author: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32), default="import")  # import, review, model
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """A registry entry: one trained model version and the decision about it."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(String(512))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="Pending")
    reason: Mapped[str | None] = mapped_column(Text)
    dataset_version: Mapped[str | None] = mapped_column(String(64))
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class User(Base):
    """An account of the review web app."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    password_hash: Mapped[str] = mapped_column(String(256))
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    """An append-only, hash-chained record of an access or a decision."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[str | None] = mapped_column(String(32), index=True)
    source: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class WebSession(Base):
    """A browser session of the review web app (migration 0002).

    Only the sha256 of the cookie's token is stored, so a copy of the database opens no session.
    """

    __tablename__ = "web_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """A bearer token for scripts (migration 0002); only its sha256 is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class CaseShare(Base):
    """A case its owner (a surgeon) shared with another user (migration 0002)."""

    __tablename__ = "case_shares"
    __table_args__ = (UniqueConstraint("case_id", "user_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    shared_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


_MIGRATIONS = Path(__file__).with_name("migrations")
_ENGINE_LOCK = threading.Lock()


class Catalog(dg.ConfigurableResource):
    """The catalog database (SQLAlchemy URL: ``sqlite:///...`` or ``postgresql+psycopg://...``).

    The schema is created and upgraded by Alembic on first use, so a fresh ``SURG_HOME`` needs no
    set-up step.
    """

    url: str

    _engine: Engine | None = PrivateAttr(default=None)
    _sessions: sessionmaker[Session] | None = PrivateAttr(default=None)

    @property
    def engine(self) -> Engine:
        """The engine, created (and the schema migrated) on first use."""
        if self._engine is None:
            with _ENGINE_LOCK:
                if self._engine is None:
                    self._open()
        return self._engine

    def _open(self) -> None:
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        engine = create_engine(self.url, **kwargs)
        if self.url.startswith("sqlite"):
            event.listen(engine, "connect", _sqlite_pragmas)
        # Publish the engine only once the schema is migrated: other threads wait on the lock.
        self._migrate(engine)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._engine = engine

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        self._migrate(self.engine)

    @staticmethod
    def _migrate(engine: Engine) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        _ = self.engine
        assert self._sessions is not None
        with self._sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        """Close pooled connections (tests, process exit)."""
        if self._engine is not None:
            self._engine.dispose()

    # -- cases -------------------------------------------------------------------------------

    def create_case(
        self, sha256: str | None = None, status: str = "queued", **fields: Any
    ) -> tuple[Case, bool]:
        """Create a case, or return the existing one with the same content hash.

        Returns:
            (case, created): ``created`` is False when these bytes were ingested before.
        """
        if sha256:
            existing = self.case_by_sha256(sha256)
            if existing is not None:
                return existing, False
        case = Case(id=new_case_id(), sha256=sha256, status=status, **fields)
        try:
            with self.session() as s:
                s.add(case)
        except IntegrityError:
            # Another process ingested the same bytes between our lookup and insert.
            existing = self.case_by_sha256(sha256) if sha256 else None
            if existing is None:
                raise
            return existing, False
        return case, True

    def ensure_case(self, case_id: str, **fields: Any) -> Case:
        """The case with this id, created if missing (objects put straight into the store)."""
        with self.session() as s:
            case = s.get(Case, case_id)
            if case is None:
                case = Case(id=case_id, status="queued", **fields)
                s.add(case)
            return case

    def get_case(self, case_id: str) -> Case | None:
        """One case, or None."""
        with self.session() as s:
            return s.get(Case, case_id)

    def case_by_sha256(self, sha256: str) -> Case | None:
        """The case holding these exact bytes, if any."""
        with self.session() as s:
            return s.scalars(select(Case).where(Case.sha256 == sha256)).first()

    def update_case(self, case_id: str, **fields: Any) -> Case:
        """Set fields of a case (status, failure_reason, video facts...)."""
        status = fields.get("status")
        if status is not None and status not in CASE_STATUSES:
            raise ValueError(f"unknown case status {status!r}")
        with self.session() as s:
            case = s.get(Case, case_id)
            if case is None:
                raise KeyError(case_id)
            for name, value in fields.items():
                setattr(case, name, value)
            return case

    def set_status(self, case_id: str, status: str, failure_reason: str | None = None) -> Case:
        """Move a case to ``status``; ``failure_reason`` is kept only for failed cases."""
        return self.update_case(
            case_id, status=status, failure_reason=failure_reason if status == "failed" else None
        )

    # -- annotations ---------------------------------------------------------------------------

    def add_annotations(
        self, records: list[dict[str, Any]], dataset: str, author: str, source: str = "import"
    ) -> list[int]:
        """Store annotation records (``ml_models.formats`` rows); returns their ids in order."""
        rows = [
            Annotation(
                case_id=r.get("case_id"),
                dataset=dataset,
                kind=str(r["kind"]),
                frame_index=r.get("frame_index"),
                t_s=r.get("t_s"),
                payload=r,
                author=r.get("author") or author,
                source=source,
            )
            for r in records
        ]
        with self.session() as s:
            s.add_all(rows)
            s.flush()
            return [row.id for row in rows]

    def annotations(self, dataset: str | None = None) -> list[Annotation]:
        """Annotations, oldest first, optionally of one dataset."""
        q = select(Annotation).order_by(Annotation.id)
        if dataset:
            q = q.where(Annotation.dataset == dataset)
        with self.session() as s:
            return list(s.scalars(q))

    def list_cases(self, status: str | None = None, limit: int = 1000) -> list[Case]:
        """Cases, newest first."""
        q = select(Case).order_by(Case.created_at.desc()).limit(limit)
        if status:
            q = q.where(Case.status == status)
        with self.session() as s:
            return list(s.scalars(q))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the Dagster daemon, the web app and the CLI read while one of them writes.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
