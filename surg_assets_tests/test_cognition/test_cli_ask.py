"""`surg ask CASE "question"` (the command as `surg_assets.cli` registers it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ml_models.errors import InputError
from resources.settings import load_settings
from surg_assets import cli_cognition
from surg_assets.assets.cognition import analysis_key
from surg_assets.settings import build_resources
from surg_assets_tests.test_cognition.cases import CASE, hand_analysis
from surg_assets_tests.test_cognition.llm_servers import ScriptedServer, chat_completion

app = typer.Typer()
app.command("ask")(cli_cognition.ask_command)
app.command("noop")(lambda: None)  # two commands: `ask` stays a sub-command, as in `surg`


@pytest.fixture
def stored_case(surg_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-written case in the catalog, with its analysis in the blob store."""
    monkeypatch.delenv("SURG_REPORT_WRITER", raising=False)
    res = build_resources(load_settings())
    res["catalog"].ensure_case(CASE, duration_s=100.0)
    res["blob_store"].put_bytes(analysis_key(CASE), hand_analysis().model_dump_json().encode())


def test_surg_ask_answers_with_timestamps(stored_case: None) -> None:
    result = CliRunner().invoke(app, ["ask", CASE, "when was the clipper first used?"])
    assert result.exit_code == 0, result.output
    assert "The clipper was first seen at 00:00:02 (during Preparation)" in result.output


def test_surg_ask_uses_the_configured_llm(
    stored_case: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ScriptedServer([chat_completion("The hook was visible from 00:00:12.")]) as server:
        monkeypatch.setenv("SURG_REPORT_WRITER", "openai")
        monkeypatch.setenv("SURG_LLM_BASE_URL", server.url)
        monkeypatch.setenv("SURG_LLM_MODEL", "test-model")
        result = CliRunner().invoke(app, ["ask", CASE, "when is the hook visible?"])
    assert result.exit_code == 0, result.output
    assert "The hook was visible from 00:00:12." in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-a-case", "which instrument at 0:10?"], "is not a case id"),
        (["c0000000000000000", "which instrument at 0:10?"], "is not in the catalog"),
        ([CASE, "what is the weather?"], "not understood"),
    ],
)
def test_surg_ask_refuses_with_one_sentence(
    stored_case: None, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["ask", *args])
    assert isinstance(result.exception, InputError)
    assert message in str(result.exception)


def test_surg_ask_on_a_case_without_analysis(surg_home: Path) -> None:
    build_resources(load_settings())["catalog"].ensure_case(CASE)
    result = CliRunner().invoke(app, ["ask", CASE, "which instrument at 0:10?"])
    assert isinstance(result.exception, InputError)
    assert "has no analysis yet" in str(result.exception)
