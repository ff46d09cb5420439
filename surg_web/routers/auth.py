"""Health, login and logout, the current user, API tokens, and the user list."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from pydantic import Field

from resources.accounts import Principal
from surg_web.bodies import DB_INT_MAX, ApiBody
from surg_web.security import (
    SESSION_COOKIE,
    audit,
    cookie_secure,
    ctx,
    current_user,
    iso,
    require_roles,
)

public = APIRouter(prefix="/api", tags=["auth"])
router = APIRouter(prefix="/api", tags=["auth"], dependencies=[Depends(current_user)])


class LoginRequest(ApiBody):
    """User name and password."""

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenRequest(ApiBody):
    """What a new API token is for."""

    label: str = Field(default="script", min_length=1, max_length=64)


def _me(user: Principal, request: Request) -> dict[str, Any]:
    uploads = ctx(request).uploads
    return {
        "name": user.name,
        "role": user.role,
        "csrf_token": user.csrf_token,
        # What the browser's uploader needs before it creates an upload.
        "upload": {
            "part_size": max(uploads.part_size, uploads.min_part_size),
            "min_part_size": uploads.min_part_size,
        },
    }


@public.get("/health")
def health() -> dict[str, str]:
    """Liveness: the app answers (no database call, no authentication)."""
    return {"status": "ok"}


@public.post("/auth/login")
def login(body: LoginRequest, request: Request, response: Response) -> dict[str, Any]:
    """Check the password and open a session (HttpOnly, SameSite=Strict cookie).

    The response carries the CSRF token the page must send with every unsafe request.
    """
    c = ctx(request)
    user = c.accounts.authenticate(body.name, body.password)
    if user is None:
        # The name is recorded only when it is an existing account's (never a typed password).
        known = c.accounts.get_user(body.name) if len(body.name) <= 64 else None
        audit(request, known.name if known else "anonymous", "login", "failed")
        raise HTTPException(401, "the user name or password is wrong.")
    token, principal = c.accounts.open_session(user, source=request.client and request.client.host)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(c.accounts.session_ttl.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, c.config),
        path="/",
    )
    audit(request, user.name, "login", "ok")
    return _me(principal, request)


@router.post("/auth/logout")
def logout(request: Request, response: Response, user: Principal = Depends(current_user)) -> dict:
    """End the session and clear the cookie."""
    if user.session_id:
        ctx(request).accounts.close_session(user.session_id)
    response.delete_cookie(SESSION_COOKIE, path="/")
    audit(request, user.name, "logout")
    return {"status": "logged out"}


@router.get("/auth/me")
def me(request: Request, user: Principal = Depends(current_user)) -> dict[str, Any]:
    """The current user, role and CSRF token (the page calls this after a reload)."""
    return _me(user, request)


@router.get("/tokens")
def list_tokens(request: Request, user: Principal = Depends(current_user)) -> list[dict]:
    """The caller's API tokens (never the token text)."""
    return [
        {
            "id": t.id,
            "label": t.label,
            "created_at": iso(t.created_at),
            "last_used_at": iso(t.last_used_at),
            "revoked": t.revoked_at is not None,
        }
        for t in ctx(request).accounts.list_tokens(user.id)
    ]


@router.post("/tokens", status_code=201)
def create_token(
    body: TokenRequest, request: Request, user: Principal = Depends(current_user)
) -> dict[str, Any]:
    """A new bearer token for the caller, shown once."""
    token, row = ctx(request).accounts.create_token(user.name, body.label)
    audit(request, user.name, "token.create", token_id=row.id)
    return {"id": row.id, "label": row.label, "token": token}


@router.delete("/tokens/{token_id}")
def revoke_token(
    request: Request,
    user: Principal = Depends(current_user),
    token_id: int = Path(ge=1, le=DB_INT_MAX),
) -> dict[str, Any]:
    """Revoke one of the caller's tokens."""
    if not ctx(request).accounts.revoke_token(user.id, token_id):
        raise HTTPException(404, f"you have no API token {token_id}.")
    audit(request, user.name, "token.revoke", token_id=token_id)
    return {"id": token_id, "revoked": True}


@router.get("/users")
def list_users(request: Request, user: Principal = Depends(require_roles("admin"))) -> list[dict]:
    """Every account (admin only)."""
    audit(request, user.name, "users.list")
    return [
        {"name": u.name, "role": u.role, "disabled": u.disabled, "created_at": iso(u.created_at)}
        for u in ctx(request).accounts.list_users()
    ]


def session_hours(hours: float) -> dt.timedelta:
    """A session lifetime from the configured hours."""
    return dt.timedelta(hours=max(0.05, hours))
