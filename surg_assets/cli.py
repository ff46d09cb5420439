"""The ``surg`` command: ingest and analyse videos, list cases, run the demo.

User errors (a bad file, a bad setting) end as one line on stderr starting with ``error:`` and
exit status 2; no traceback. A catalog database that fails (down, unreachable) ends as one such
line with status 1. Output never contains an input's file name: inputs are named by
position, cases by id.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import OperationalError

from ml_models.errors import InputError

app = typer.Typer(
    name="surg",
    help="Surgical video analysis: ingest, analyse, review.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cases_app = typer.Typer(help="Cases in the catalog.", no_args_is_help=True)
app.add_typer(cases_app, name="cases")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def _context() -> tuple[Any, Any, Any]:
    """Settings, blob store and catalog for the current environment (resolved, not deferred)."""
    from resources.settings import load_settings
    from surg_assets.settings import build_resources

    settings = load_settings()
    res = build_resources(settings, deferred=False)
    return settings, res["blob_store"], res["catalog"]


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(..., help="Video files to ingest.", show_default=False),
) -> None:
    """Store videos as new cases (raw-videos/{case_id}/source.{ext}); print each case id.

    The same bytes ingested twice map to the same case. The last line printed is the case id of
    the last input.
    """
    from surg_assets.intake import ingest_file
    from surg_assets.settings import video_limits_from_env

    _, blob_store, catalog = _context()
    limits = video_limits_from_env()
    last = None
    for n, path in enumerate(paths, start=1):
        label = f"input {n} of {len(paths)}" if len(paths) > 1 else "the input file"
        outcome = ingest_file(path, blob_store, catalog, limits, label=label)
        if outcome.created:
            err.print(
                f"{label}: stored as case {outcome.case_id} "
                f"({outcome.probe.codec} {outcome.probe.width}x{outcome.probe.height}, "
                f"{outcome.probe.duration_s:.1f} s); the new-video sensor will analyse it"
            )
        else:
            err.print(f"{label}: the same video was already ingested as case {outcome.case_id}")
        last = outcome.case_id
        out.print(outcome.case_id)
    if last is None:  # pragma: no cover - typer requires at least one path
        raise InputError("no input given; pass the path of a video file.")


def dagster_instance(settings: Any) -> Any:
    """The persistent Dagster instance under ``SURG_HOME/dagster`` (or ``DAGSTER_HOME``)."""
    import dagster as dg

    home = Path(os.environ.get("DAGSTER_HOME") or settings.dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    project_config = Path(__file__).resolve().parents[1] / "dagster.yaml"
    if not config.exists() and project_config.exists():
        # The project's dagster.yaml (run concurrency, pools); a wheel install runs on defaults.
        shutil.copyfile(project_config, config)
    return dg.DagsterInstance.from_config(str(home))


def run_case(case_id: str, settings: Any, catalog: Any) -> Any:
    """Materialize every case asset for ``case_id`` in this process; returns the run result."""
    from surg_assets.definitions import defs

    definitions = defs()
    job = definitions.resolve_job_def("analyze_case")
    instance = dagster_instance(settings)
    with instance:
        from surg_assets.recovery import release_orphaned_runs, run_owner_tags

        release_orphaned_runs(instance)  # a killed earlier run must not hold the gpu pool
        instance.add_dynamic_partitions("cases", [case_id])
        catalog.set_status(case_id, "analysing")
        result = job.execute_in_process(
            partition_key=case_id,
            instance=instance,
            raise_on_error=False,
            tags=run_owner_tags(),
            # Step-level progress, not Dagster's DEBUG event stream, on the terminal.
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        )
        if result.success:
            catalog.set_status(case_id, "ready")
        else:
            case = catalog.get_case(case_id)
            if case is None or case.status != "failed":
                failure = _first_failure(result)
                catalog.set_status(case_id, "failed", failure)
        return result


def _first_failure(result: Any) -> str:
    """One sentence on why a run failed: a failed blocking check's description, or a step's."""
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                return f"check {evaluation.check_name} failed: {evaluation.description}"
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            desc = (data.user_failure_data.description if data.user_failure_data else None) or (
                data.error.message.strip() if data.error else "unknown error"
            )
            return f"step {event.step_key} failed: {desc}"
    return "the analysis run failed"


def copy_case_outputs(blob_store: Any, case_id: str, out_dir: Path) -> list[str]:
    """Copy ``processed-metadata/{case_id}/*`` into ``out_dir``; returns the file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    prefix = f"processed-metadata/{case_id}/"
    for info in blob_store.list_prefix(prefix):
        name = info.key[len(prefix) :]
        if "/" in name:
            continue
        blob_store.download(info.key, out_dir / name)
        copied.append(name)
    return sorted(copied)


@app.command()
def analyze(
    path: Path = typer.Argument(..., help="The video to analyse.", show_default=False),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the case's outputs."),
) -> None:
    """Ingest a video and run every case asset now, in this process; copy the outputs to --out."""
    import json

    from surg_assets.intake import ingest_file
    from surg_assets.settings import video_limits_from_env

    settings, blob_store, catalog = _context()
    limits = video_limits_from_env()
    started = time.perf_counter()
    outcome = ingest_file(
        path,
        blob_store,
        catalog,
        limits,
        label="the input file",
        status="analysing",
    )
    err.print(f"case {outcome.case_id}: analysing ({outcome.probe.duration_s:.1f} s of video)")
    result = run_case(outcome.case_id, settings, catalog)
    case = catalog.get_case(outcome.case_id)
    copied = copy_case_outputs(blob_store, outcome.case_id, out_dir)
    elapsed = time.perf_counter() - started
    width, height, fps = limits.normalised(case.width or 0, case.height or 0, case.fps or 0.0)
    summary = {
        "case_id": case.id,
        "status": case.status,
        "failure_reason": case.failure_reason,
        "video": {
            "duration_s": case.duration_s,
            "width": case.width,
            "height": case.height,
            "fps": case.fps,
        },
        # Boxes and masks are in the pixels of the normalised video, which is smaller than the
        # upload's when the upload is taller than the transcode limit (a 1080p recording).
        "processed_video": {"width": width, "height": height, "fps": fps},
        "outputs": copied,
        "processed_video_key": f"processed-videos/{case.id}/video.mp4",
        "wall_time_s": round(elapsed, 2),
        "x_real_time": round((case.duration_s or 0) / elapsed, 2) if elapsed else None,
    }
    (out_dir / "case.json").write_text(json.dumps(summary, indent=2))
    if not result.success:
        raise AnalysisFailed(f"case {case.id} failed: {case.failure_reason}")
    err.print(
        f"case {case.id}: ready in {elapsed:.1f} s ({summary['x_real_time']}x real time); "
        f"outputs in the --out folder: {', '.join(copied + ['case.json'])}"
    )
    out.print(case.id)


class AnalysisFailed(Exception):
    """The pipeline ran but a step failed (exit status 1: not necessarily the user's fault)."""


@cases_app.command("list")
def cases_list(
    status: str | None = typer.Option(None, help="Only cases with this status."),
) -> None:
    """List cases, newest first."""
    _, _, catalog = _context()
    table = Table()
    # Case ids are what users copy into other commands: never wrap or truncate them.
    table.add_column("case", no_wrap=True, min_width=17)
    for name in ("status", "created (UTC)", "duration", "size", "reason"):
        table.add_column(name)
    for case in catalog.list_cases(status=status):
        table.add_row(
            case.id,
            case.status,
            case.created_at.strftime("%Y-%m-%d %H:%M"),
            f"{case.duration_s:.0f} s" if case.duration_s else "",
            f"{case.width}x{case.height}" if case.width else "",
            case.failure_reason or "",
        )
    out.print(table)


@app.command()
def demo(
    minutes: float = typer.Option(1.0, help="Length of the generated synthetic laparoscopy."),
    seed: int = typer.Option(2024, help="Seed of the synthetic case."),
) -> None:
    """Generate a synthetic laparoscopy and run the whole case pipeline on it (`make demo`)."""
    from ml_models.synthetic import generate

    settings, _, _ = _context()
    folder = settings.home / "demo"
    case_dir = folder / f"synthetic-seed-{seed}"
    if not (case_dir / "video.mp4").exists():
        err.print(f"rendering a {minutes:g}-minute synthetic laparoscopy (seed {seed})")
        generate(case_dir, minutes=minutes, seed=seed)
    analyze(case_dir / "video.mp4", folder / "out")


def _register_optional_commands() -> None:
    """Commands kept in their own modules: models, the lab, the web app."""
    import importlib.util

    from surg_assets import cli_cognition, cli_compliance, cli_models

    app.command("ask")(cli_cognition.ask_command)
    app.add_typer(cli_compliance.compliance_app, name="compliance")
    app.add_typer(cli_models.train_app, name="train")
    app.add_typer(cli_models.models_app, name="models")

    if importlib.util.find_spec("surg_assets.cli_lab"):
        from surg_assets import cli_lab

        app.command("synth")(cli_lab.synth_command)
        app.add_typer(cli_lab.eval_app, name="eval")
        app.add_typer(cli_lab.annotations_app, name="annotations")
    if importlib.util.find_spec("surg_assets.cli_web"):
        from surg_assets import cli_web

        app.command("serve")(cli_web.serve_command)
        app.add_typer(cli_web.users_app, name="users")
        app.add_typer(cli_web.audit_app, name="audit")


_register_optional_commands()


def main() -> None:
    """Entry point of the ``surg`` console script."""
    if os.environ.get("SURG_DEBUG", "").lower() in ("1", "true", "yes"):
        sys.exit(app())  # tracebacks as they are
    try:
        code = app(standalone_mode=False)
    except InputError as exc:
        _fail(str(exc), 2)
    except AnalysisFailed as exc:
        _fail(str(exc), 1)
    except OperationalError as exc:
        # Not the user's input and not a bug: a database did not answer, refused a write, or
        # is full. The driver's first line says which; the URL is not repeated.
        lines = str(exc.orig or exc).strip().splitlines()
        _fail(
            f"the database failed: {_redacted(lines[0] if lines else type(exc).__name__)}. "
            "Check that the catalog database (SURG_CATALOG_URL) is running, reachable and "
            "writable; SURG_DEBUG=1 shows the traceback.",
            1,
        )
    except typer.Abort:
        _fail("aborted.", 130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: missing argument, unknown option...
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _fail(message, 2)
    sys.exit(code if isinstance(code, int) else 0)


def _redacted(text: str) -> str:
    """``text`` without the catalog URL's credentials: a driver may echo part of a URL it could
    not parse (a password with an unescaped ``@`` ends up in the host name)."""
    url = os.environ.get("SURG_CATALOG_URL", "")
    password = url.split("://", 1)[-1].rpartition("@")[0].partition(":")[2]
    # The whole password, and each part an unescaped "@" splits it into (shorter parts would
    # blank out ordinary words).
    for secret in sorted({password, *password.split("@")}, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def _fail(message: str, status: int) -> None:
    err.print(f"error: {message}", markup=False, soft_wrap=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
