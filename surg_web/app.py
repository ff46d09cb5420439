"""The FastAPI application: API routers, error shape, security headers, and the static front end."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml_models.errors import InputError
from resources.accounts import Accounts
from resources.audit import AuditLog
from resources.blob_store import S3BlobStore
from resources.settings import Settings, load_settings
from resources.uploads import MiB, UploadService
from surg_web.config import WebConfig
from surg_web.routers import auth, cases, models, uploads
from surg_web.security import SESSION_COOKIE, WebContext

STATIC = Path(__file__).with_name("static")
# Routes that answer without a session; every other /api route needs one (issue 7).
PUBLIC_API = ("/api/health", "/api/auth/login")
TOO_LARGE = "the request body is too large."
# FastAPI's words (a Starlette HTTPException) when a body cannot be decoded at all, e.g. JSON
# nested past Python's recursion limit.
_UNPARSABLE_BODY = "There was an error parsing the body"


def error_body(message: str) -> dict[str, str]:
    """The one JSON shape of every error: ``{"error": "one sentence"}``."""
    return {"error": message}


def _validation_message(exc: RequestValidationError) -> str:
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "the request"
    msg = str(first.get("msg", "is not valid")).removeprefix("Value error, ")
    return f"{where}: {msg}; fix the request and send it again."


class ApiGuard:
    """Pure ASGI middleware in front of the routers.

    * ``/api`` requests that carry neither a session cookie nor a bearer token get 401 before
      any parsing, so unauthenticated callers learn nothing (not even a 422 or 404).
    * JSON bodies larger than ``max_json_kb`` are refused with 413: from ``Content-Length``
      when it is sent, else by counting the bytes as they arrive (chunked transfer).
    * Security headers on every response; HSTS when the request came over TLS.
    """

    def __init__(self, app: ASGIApp, config: WebConfig, connect_src: str) -> None:
        self.app = app
        self.max_json = config.max_json_kb * 1024
        self.csp = (
            "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
            "font-src 'self' data:; "
            f"connect-src 'self' {connect_src}; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
        ).replace("  ", " ")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path.startswith("/api") and path not in PUBLIC_API and scope["method"] != "OPTIONS":
            has_cookie = f"{SESSION_COOKIE}=" in headers.get("cookie", "")
            has_token = headers.get("authorization", "")[:7].lower() == "bearer "
            if not (has_cookie or has_token):
                await self._reply(scope, send, 401, "you are not logged in; log in first.")
                return
        if headers.get("content-type", "").startswith("application/json"):
            length = headers.get("content-length", "0")
            if length.isdigit() and int(length) > self.max_json:
                await self._reply(scope, send, 413, TOO_LARGE)
                return
            if "content-length" not in headers:
                body = await self._read_at_most(receive, self.max_json)
                if body is None:
                    await self._reply(scope, send, 413, TOO_LARGE)
                    return
                receive = _replay(body, receive)
        tls = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", self.csp.encode()),
                ]
                if tls:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    async def _read_at_most(receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None as soon as it grows past ``limit`` bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _reply(self, scope: Scope, send: Send, status: int, message: str) -> None:
        response = JSONResponse(error_body(message), status_code=status)
        await response(scope, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app a body already read, then the client's own messages
    (the disconnect a streaming response listens for)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def create_app(
    settings: Settings | None = None,
    *,
    resources: dict[str, Any] | None = None,
    config: WebConfig | None = None,
) -> FastAPI:
    """Build the web app for ``settings`` (the current SURG_HOME / SURG_ENV by default).

    Args:
        settings: Where things live (``resources.settings.load_settings()`` when omitted).
        resources: ``blob_store``, ``catalog`` and ``registry`` to use; built for ``settings``
            by the one resource builder (``surg_assets.settings.build_resources``) when omitted.
        config: Web settings (from the environment when omitted).
    """
    settings = settings or load_settings()
    config = config or WebConfig.from_env()
    if resources is None:
        # Imported here, not at module level: the builder lives with the Dagster wiring, and
        # the web app needs only its result (it pulls in no torch).
        from surg_assets.settings import build_resources

        resources = build_resources(settings, deferred=False)
    blob_store, catalog = resources["blob_store"], resources["catalog"]
    catalog.migrate()
    context = WebContext(
        config=config,
        blob_store=blob_store,
        catalog=catalog,
        accounts=Accounts(catalog, session_ttl=dt.timedelta(hours=config.session_hours)),
        audit=AuditLog(catalog),
        uploads=UploadService(
            blob_store,
            catalog,
            part_size=int(config.part_mb * MiB),
            max_size=int(config.max_upload_gb * 1024 * MiB),
            url_ttl_s=config.url_ttl_s,
        ),
        registry=resources["registry"],
    )
    app = FastAPI(
        title="surg-assets review",
        version="0.1.0",
        description="Upload surgical videos, review analyses, correct them, approve models.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = context

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(_validation_message(exc)), status_code=422)

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404 for unknown paths, 405 for wrong methods: the same JSON shape as ours.
        message = str(exc.detail)
        if exc.status_code == 400 and message == _UNPARSABLE_BODY:
            message = "the request body could not be read as JSON; send a plain JSON object."
        return JSONResponse(error_body(message), status_code=exc.status_code, headers=exc.headers)

    for module in (auth, cases, uploads, models):
        for name in ("public", "router", "blob"):
            router = getattr(module, name, None)
            if router is not None:
                app.include_router(router)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-CSRF-Token", "Range"],
            # Uploaders read each part's ETag from the PUT response.
            expose_headers=["ETag", "Content-Range"],
        )
    # Parts go straight to the bucket in S3 mode, so the page may talk to that origin too.
    connect_src = "https:" if isinstance(blob_store, S3BlobStore) else ""
    if isinstance(blob_store, S3BlobStore) and blob_store.endpoint_url:
        connect_src = f"https: {blob_store.endpoint_url}"
    app.add_middleware(ApiGuard, config=config, connect_src=connect_src)
    return app
