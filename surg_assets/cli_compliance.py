"""``surg compliance check``: pass or fail for each safeguard the deployment can verify.

Exit status 0 when every check passes, 1 when any fails (a bad setting is exit 2, as everywhere).
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

compliance_app = typer.Typer(no_args_is_help=True, help="Check the deployment's safeguards.")
out = Console(highlight=False)


@compliance_app.command("check")
def check_command(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Bucket encryption, versioning, public access block, TLS-only policy, raw-video lifecycle,
    log retention (S3), lake encryption (local), and the catalog's connection."""
    from resources import compliance
    from resources.settings import env_int, load_settings
    from surg_assets.settings import build_resources

    settings = load_settings()
    resources = build_resources(settings, deferred=False)
    catalog_url = resources["catalog"].url
    days = env_int("SURG_LOG_RETENTION_DAYS", compliance.DEFAULT_LOG_RETENTION_DAYS)
    results = compliance.run_checks(resources["blob_store"], catalog_url, days)
    if as_json:
        typer.echo(compliance.as_json(results))
    else:
        table = Table(title=f"Safeguards of the {settings.env} deployment")
        for column in ("check", "HIPAA safeguard", "result", "detail"):
            table.add_column(column, overflow="fold")
        for r in results:
            mark = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
            table.add_row(r.name, r.safeguard, mark, r.detail)
        out.print(table)
    raise typer.Exit(0 if all(r.passed for r in results) else 1)
