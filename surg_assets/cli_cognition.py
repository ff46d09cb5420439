"""``surg ask CASE "question"``: answers about a case, from its analysis.

Offline the deterministic answerer handles the common questions; with an LLM configured
(``SURG_REPORT_WRITER=openai`` or ``bedrock``) the model answers through tool calls over the
analysis, and its answer is used only when every timestamp it cites exists in the analysis
(otherwise the deterministic answer is printed, with a note on stderr).
"""

from __future__ import annotations

import typer
from rich.console import Console

from ml_models.errors import InputError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def ask_command(
    case: str = typer.Argument(
        ..., help="The case id (from `surg cases list`).", show_default=False
    ),
    question: str = typer.Argument(
        ..., help='e.g. "which instrument at 15:30?"', show_default=False
    ),
) -> None:
    """Answer a question about a case: instruments or phase at a time, how long a phase took,
    when an instrument was first used, what happened between two times."""
    from resources.report_writers import report_writer_from_env
    from resources.settings import load_settings
    from surg_assets.assets.cognition import analysis_key, load_analysis
    from surg_assets.intake import CASE_ID_RE
    from surg_assets.settings import build_resources

    if not CASE_ID_RE.match(case):
        raise InputError(f"{case!r} is not a case id; copy one from `surg cases list`.")
    res = build_resources(load_settings(), deferred=False)
    blob_store, catalog = res["blob_store"], res["catalog"]
    if catalog.get_case(case) is None:
        raise InputError(f"case {case} is not in the catalog; copy an id from `surg cases list`.")
    if not blob_store.exists(analysis_key(case)):
        raise InputError(
            f"case {case} has no analysis yet; wait for its analysis run (or `surg analyze`)."
        )
    analysis = load_analysis(blob_store, case)
    writer = res.get("report_writer") or report_writer_from_env(deferred=False)
    result = writer.ask(question, analysis)
    if result.intent.startswith("deterministic ("):
        err.print(f"note: {result.intent}")
    out.print(result.text, soft_wrap=True)
