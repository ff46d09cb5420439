"""``surg serve``, ``surg users ...`` and ``surg audit ...``: the web app's commands.

Registered by ``surg_assets.cli._register_optional_commands``.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ml_models.errors import InputError

users_app = typer.Typer(help="Accounts of the review web app.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def _catalog() -> Any:
    from surg_assets.settings import build_resources

    return build_resources(deferred=False)["catalog"]


def _accounts() -> Any:
    from resources.accounts import Accounts

    return Accounts(_catalog())


def _audit() -> Any:
    from resources.audit import AuditLog

    return AuditLog(_catalog())


def serve_command(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    tls_cert: str | None = typer.Option(
        None, envvar="SURG_TLS_CERT", help="TLS certificate (PEM); serves HTTPS with the key."
    ),
    tls_key: str | None = typer.Option(None, envvar="SURG_TLS_KEY", help="TLS private key."),
) -> None:
    """Serve the review web app (upload, cases, player, corrections, models) with uvicorn."""
    import uvicorn

    from surg_web import create_app

    if bool(tls_cert) != bool(tls_key):
        raise InputError("TLS needs both --tls-cert and --tls-key (or neither).")
    app = create_app()
    scheme = "https" if tls_cert else "http"
    err.print(f"review app on {scheme}://{host}:{port}/ (API spec at /openapi.json)")
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        # Request lines carry only case ids and upload ids; no file names ever reach a URL.
        access_log=True,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        proxy_headers=True,
    )


@users_app.command("add")
def users_add(
    name: str = typer.Argument(..., help="Login name (lower case, digits, . _ -)."),
    role: str = typer.Option(..., help="admin, surgeon, reviewer or data_scientist."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input (one line)."
    ),
) -> None:
    """Create a user. The password comes from stdin (``--password-stdin``) or a prompt."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    accounts = _accounts()
    user = accounts.add_user(name, role, password)
    _audit().record("cli", "user.add", detail={"user": user.name, "role": user.role}, source="cli")
    err.print(f"user {user.name} ({user.role}) added")


@users_app.command("list")
def users_list() -> None:
    """List users and their roles."""
    table = Table()
    for column in ("name", "role", "status", "created (UTC)"):
        table.add_column(column)
    for u in _accounts().list_users():
        table.add_row(
            u.name,
            u.role,
            "disabled" if u.disabled else "active",
            u.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@users_app.command("disable")
def users_disable(name: str = typer.Argument(..., help="The user to disable.")) -> None:
    """Disable a user: their sessions end and their API tokens are revoked."""
    _accounts().set_disabled(name, True)
    _audit().record("cli", "user.disable", detail={"user": name}, source="cli")
    err.print(f"user {name} disabled")


@users_app.command("enable")
def users_enable(name: str = typer.Argument(..., help="The user to enable again.")) -> None:
    """Enable a disabled user."""
    _accounts().set_disabled(name, False)
    _audit().record("cli", "user.enable", detail={"user": name}, source="cli")
    err.print(f"user {name} enabled")


@users_app.command("token")
def users_token(
    name: str = typer.Argument(..., help="The user the token acts as."),
    label: str = typer.Option("script", help="What the token is for."),
) -> None:
    """Create an API token (``Authorization: Bearer ...``); printed once, stored hashed."""
    token, row = _accounts().create_token(name, label)
    _audit().record("cli", "token.create", detail={"user": name, "token_id": row.id}, source="cli")
    out.print(token, markup=False)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain: exit 0 when intact, 1 naming the first bad entry."""
    result = _audit().verify()
    if result.ok:
        err.print(f"audit log intact: {result.entries} entries")
        return
    err.print(f"audit log broken at entry {result.first_bad_id}: {result.reason}", markup=False)
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    since: str | None = typer.Option(
        None, help="ISO date or time (UTC if no zone): only entries at or after it."
    ),
) -> None:
    """Write entries as JSON lines to stdout, oldest first."""
    start = None
    if since:
        try:
            start = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(
                f"--since {since!r} is not an ISO date or time; use e.g. 2026-01-31T08:00."
            ) from None
    for line in _audit().export(start):
        sys.stdout.write(line + "\n")
