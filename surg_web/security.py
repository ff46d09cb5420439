"""Who is calling, what they may do, and the audit entry every access leaves.

Authentication: a session cookie (browser) or an ``Authorization: Bearer`` API token (scripts).
Cookie-authenticated unsafe methods must echo the session's CSRF token in ``X-CSRF-Token``
(a cross-site form or script cannot read it). Roles: admin, surgeon (own and shared cases),
reviewer (corrects), data_scientist (decides on models).
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select

from resources.accounts import Accounts, Principal
from resources.audit import AuditLog
from resources.blob_store import BlobStore
from resources.catalog import Case, CaseShare, Catalog
from resources.uploads import UploadService
from surg_web.config import WebConfig

SESSION_COOKIE = "surg_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Roles that see every case; a surgeon sees the cases they own or that were shared with them.
ALL_CASES_ROLES = {"admin", "reviewer", "data_scientist"}


@dataclass
class WebContext:
    """Everything a request handler needs, built once per app."""

    config: WebConfig
    blob_store: BlobStore
    catalog: Catalog
    accounts: Accounts
    audit: AuditLog
    uploads: UploadService
    registry: Any  # resources.registry.ModelRegistry


def ctx(request: Request) -> WebContext:
    """The app's context."""
    return request.app.state.ctx


def client_address(request: Request) -> str | None:
    """Where the request came from (uvicorn resolves trusted proxy headers)."""
    return request.client.host if request.client else None


def audit(
    request: Request,
    actor: str,
    action: str,
    outcome: str = "ok",
    case_id: str | None = None,
    **detail: Any,
) -> None:
    """Append one audit entry for this request."""
    ctx(request).audit.record(
        actor, action, outcome, case_id=case_id, source=client_address(request), detail=detail
    )


def _resolve(request: Request) -> Principal | None:
    c = ctx(request)
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return c.accounts.token_principal(auth[7:].strip())
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    principal = c.accounts.session_principal(token)
    if principal is not None and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not principal.csrf_token or not hmac.compare_digest(sent, principal.csrf_token):
            raise HTTPException(
                403, "the request lacks a valid X-CSRF-Token header; reload the page and retry."
            )
    return principal


def current_user(request: Request) -> Principal:
    """The authenticated principal, or 401.

    Used as a dependency of every ``/api`` router except login and health. A sync function:
    FastAPI runs it in the thread pool, so the catalog lookup does not block the event loop.
    """
    principal = _resolve(request)
    if principal is None:
        raise HTTPException(401, "you are not logged in; log in or send an API token.")
    request.state.principal = principal
    return principal


def require_roles(*roles: str) -> Any:
    """A dependency that lets only ``roles`` through (403 for anyone else, audited)."""

    def check(request: Request, user: Principal = Depends(current_user)) -> Principal:
        if user.role not in roles:
            audit(request, user.name, f"deny:{request.url.path[:48]}", "denied")
            raise HTTPException(403, f"this needs the role {' or '.join(roles)}.")
        return user

    return check


def can_see(catalog: Catalog, user: Principal, case: Case) -> bool:
    """True if ``user`` may see ``case``."""
    if user.role in ALL_CASES_ROLES or case.owner == user.name:
        return True
    if user.role != "surgeon":
        return False
    with catalog.session() as s:
        share = s.scalars(
            select(CaseShare).where(CaseShare.case_id == case.id, CaseShare.user_name == user.name)
        ).first()
    return share is not None


def visible_case_ids(catalog: Catalog, user: Principal) -> set[str] | None:
    """Ids of the cases shared with a surgeon; None when the role sees every case."""
    if user.role in ALL_CASES_ROLES:
        return None
    if user.role != "surgeon":
        return set()
    with catalog.session() as s:
        shared = s.scalars(select(CaseShare.case_id).where(CaseShare.user_name == user.name))
        owned = s.scalars(select(Case.id).where(Case.owner == user.name))
        return set(shared) | set(owned)


def authorised_case(request: Request, user: Principal, case_id: str, action: str) -> Case:
    """The case if ``user`` may see it; the access (or its refusal) is audited.

    A case that does not exist and one the user may not see get the same 404, so case ids
    cannot be probed.
    """
    c = ctx(request)
    case = c.catalog.get_case(case_id) if len(case_id) <= 32 else None
    if case is None or not can_see(c.catalog, user, case):
        outcome = "not_found" if case is None else "denied"
        audit(request, user.name, action, outcome, case_id=case.id if case else None)
        raise HTTPException(404, f"case {case_id[:32]} does not exist or is not shared with you.")
    audit(request, user.name, action, "ok", case_id=case.id)
    return case


def cookie_secure(request: Request, config: WebConfig) -> bool:
    """Whether session cookies get the Secure flag."""
    if config.secure_cookies in ("1", "true", "yes", "always"):
        return True
    return request.url.scheme == "https"


def iso(ts: dt.datetime | None) -> str | None:
    """ISO-8601 text of a catalog timestamp (UTC)."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return ts.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
