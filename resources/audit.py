"""The audit trail: who did what to which case, when, from where, and how it ended.

Every entry is appended to the catalog's ``audit_log`` table and chained to the one before it:
``hash = sha256(prev_hash | canonical JSON of the entry, id included)``. Altering a row breaks
its own hash; deleting or inserting one breaks the next row's ``prev_hash`` or the id sequence.
:meth:`AuditLog.verify` walks the chain and names the first entry that does not fit. The
database also refuses UPDATE and DELETE on the table (triggers of migration 0002).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text

from resources.catalog import AuditEntry, Catalog, utcnow

GENESIS = "0" * 64
# One writer at a time inside a process; the database lock below covers other processes.
_APPEND_LOCK = threading.Lock()
# Any fixed 64-bit number: the key of PostgreSQL's advisory lock that serialises appends.
_PG_LOCK_KEY = 0x5A17_A0D1


def _ts_text(ts: dt.datetime) -> str:
    # SQLite hands back naive datetimes (stored as UTC), PostgreSQL aware ones in the session's
    # zone: both are normalised to one UTC text form so the hash does not depend on the backend.
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    """The chain hash of ``entry`` given the hash of the entry before it."""
    body = {
        "id": entry.id,
        "ts": _ts_text(entry.ts),
        "actor": entry.actor,
        "action": entry.action,
        "case_id": entry.case_id,
        "source": entry.source,
        "outcome": entry.outcome,
        "detail": entry.detail or {},
    }
    return hashlib.sha256(f"{prev_hash}|{_canonical(body)}".encode()).hexdigest()


def entry_dict(entry: AuditEntry) -> dict[str, Any]:
    """An entry as a JSON-ready dict (the export format)."""
    return {
        "id": entry.id,
        "ts": _ts_text(entry.ts),
        "actor": entry.actor,
        "action": entry.action,
        "case_id": entry.case_id,
        "source": entry.source,
        "outcome": entry.outcome,
        "detail": entry.detail or {},
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`."""

    entries: int
    first_bad_id: int | None
    reason: str | None

    @property
    def ok(self) -> bool:
        """True when the whole chain is intact."""
        return self.first_bad_id is None


@dataclass
class AuditLog:
    """Append-only, hash-chained audit log on the catalog's ``audit_log`` table."""

    catalog: Catalog

    def record(
        self,
        actor: str,
        action: str,
        outcome: str = "ok",
        case_id: str | None = None,
        source: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry and return it.

        Args:
            actor: The user name (``anonymous`` before login, ``system`` for the platform).
            action: What was done (``case.view``, ``video.stream``, ``login``, ``model.approve``).
            outcome: ``ok``, ``denied``, ``failed``, ``not_found``...
            case_id: The case touched, if any.
            source: Where from (client address, ``cli``).
            detail: Small JSON-able facts (never file names or patient data).
        """
        # A JSON round trip makes the hashed detail exactly what the database will hand back.
        clean = json.loads(_canonical(detail or {}))
        with _APPEND_LOCK, self.catalog.session() as s:
            self._lock_chain(s)
            last = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).first()
            prev = last.hash if last is not None and last.hash else GENESIS
            entry = AuditEntry(
                id=(last.id + 1) if last is not None else 1,
                ts=utcnow(),
                actor=(actor or "anonymous")[:64],
                action=action[:64],
                case_id=case_id,
                source=(source or None) and source[:128],
                outcome=outcome[:32],
                detail=clean,
                prev_hash=prev,
            )
            entry.hash = entry_hash(prev, entry)
            s.add(entry)
            return entry

    def _lock_chain(self, s: Any) -> None:
        # Two writers must not both chain onto the same last entry. PostgreSQL: an advisory lock
        # held to the end of the transaction. SQLite: a write statement that matches nothing
        # still takes the database's write lock before we read the last entry.
        dialect = s.get_bind().dialect.name
        if dialect == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        elif dialect == "sqlite":
            s.execute(text("UPDATE audit_log SET id = id WHERE 0"))

    def entries(self, since: dt.datetime | None = None) -> Iterator[AuditEntry]:
        """Entries in chain order, optionally only those at or after ``since``."""
        q = select(AuditEntry).order_by(AuditEntry.id)
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=dt.UTC)
            q = q.where(AuditEntry.ts >= since.astimezone(dt.UTC))
        with self.catalog.session() as s:
            yield from s.scalars(q.execution_options(yield_per=1000))

    def verify(self) -> VerifyResult:
        """Walk the chain; the first entry whose hash, link or id does not fit is named."""
        prev, expected_id, count = GENESIS, 1, 0
        for entry in self.entries():
            count += 1
            if entry.id != expected_id:
                why = f"entry ids jump from {expected_id - 1} to {entry.id} (an entry was removed)"
                return VerifyResult(count, entry.id, why)
            if entry.prev_hash != prev:
                why = "its link to the previous entry is broken (an entry was removed or inserted)"
                return VerifyResult(count, entry.id, why)
            if entry.hash != entry_hash(prev, entry):
                return VerifyResult(count, entry.id, "its content does not match its hash")
            prev, expected_id = entry.hash, entry.id + 1
        return VerifyResult(count, None, None)

    def export(self, since: dt.datetime | None = None) -> Iterator[str]:
        """JSON lines, one per entry at or after ``since``, in chain order."""
        for entry in self.entries(since):
            yield _canonical(entry_dict(entry))
