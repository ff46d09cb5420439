"""The LLM report writers against local servers speaking the OpenAI and Bedrock APIs.

What we send (the schema; no case id, no names, no frames, no event details) and how we handle
what comes back: valid output, invalid JSON, schema violations, ungrounded text, refusals,
timeouts and server errors, retried and then replaced by the template with the reason recorded.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from ml_models.errors import InputError
from ml_models.report import template_report
from ml_models.schemas import load_schema
from resources.report_writers import (
    BedrockReportWriter,
    OpenAICompatibleReportWriter,
    TemplateReportWriter,
    report_content_schema,
    report_writer_from_env,
)
from surg_assets_tests.test_cognition.cases import CASE, LLM_SUMMARY, hand_analysis, llm_report
from surg_assets_tests.test_cognition.llm_servers import (
    ScriptedServer,
    chat_completion,
    converse,
    converse_tool_use,
)

GOOD = chat_completion(json.dumps(llm_report()))


def _openai(server: ScriptedServer, **kw: Any) -> OpenAICompatibleReportWriter:
    return OpenAICompatibleReportWriter(
        base_url=server.url + "/v1", model="test-model", api_key="sk-test",
        **{"timeout_s": 5.0, "max_attempts": 3, **kw},
    )  # fmt: skip


def _assert_deidentified(raw: str) -> None:
    assert CASE not in raw  # the opaque id has no use to a model
    assert "never sent anywhere" not in raw  # events' detail (burned-in text boxes)
    assert "video.mp4" not in raw and "image_url" not in raw and "base64" not in raw


def test_openai_writer_sends_the_schema_and_only_deidentified_data() -> None:
    with ScriptedServer([GOOD]) as server:
        report = _openai(server).write(hand_analysis())
    assert report.procedure_summary == LLM_SUMMARY
    g = report.generated_by
    assert (g.writer, g.model, g.attempts, g.fallback_reason) == (
        "openai_compatible", "test-model", 1, None
    )  # fmt: skip
    assert report.grounding.passed
    jsonschema.validate(report.model_dump(mode="json"), load_schema("report"))
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = json.loads(request["raw"])
    assert body["model"] == "test-model" and body["temperature"] == 0
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == report_content_schema()
    assert "$ref" not in json.dumps(fmt["json_schema"]["schema"])  # inlined for every server
    jsonschema.validate(llm_report(), fmt["json_schema"]["schema"])
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert all(isinstance(m["content"], str) for m in body["messages"])  # text only, no images
    assert '"Calot triangle dissection"' in body["messages"][1]["content"]
    _assert_deidentified(request["raw"])


def test_invalid_json_is_retried_with_the_reason() -> None:
    broken = chat_completion('{"procedure_summary": "cut off')
    with ScriptedServer([broken, GOOD]) as server:
        report = _openai(server).write(hand_analysis())
    assert report.generated_by.writer == "openai_compatible"
    assert report.generated_by.attempts == 2
    retry = server.bodies()[1]["messages"][1]["content"]
    assert "rejected: invalid JSON" in retry


def test_a_slow_model_times_out_and_is_retried() -> None:
    slow = {**GOOD, "delay": 1.5}
    with ScriptedServer([slow, GOOD]) as server:
        report = _openai(server, timeout_s=0.4).write(hand_analysis())
    assert report.generated_by.writer == "openai_compatible"
    assert report.generated_by.attempts == 2


def test_refusals_fall_back_to_the_template_with_every_reason() -> None:
    refusal = chat_completion(None, refusal="I cannot help with medical records.")
    with ScriptedServer([refusal]) as server:
        report = _openai(server).write(hand_analysis())
    g = report.generated_by
    assert g.writer == "template" and g.attempts == 3 and len(server.requests) == 3
    assert g.fallback_reason.startswith("openai_compatible model test-model: attempt 1: ")
    assert g.fallback_reason.count("the model refused: I cannot help") == 3
    assert report.procedure_summary == template_report(hand_analysis()).procedure_summary
    assert report.grounding.passed


def test_ungrounded_and_schema_violating_output_falls_back() -> None:
    made_up = chat_completion(
        json.dumps(llm_report(procedure_summary="A stapler was fired at 00:00:57."))
    )
    missing = chat_completion(json.dumps({"procedure_summary": "short"}))
    with ScriptedServer([made_up, missing, made_up]) as server:
        report = _openai(server).write(hand_analysis())
    reason = report.generated_by.fallback_reason
    assert report.generated_by.writer == "template"
    assert "attempt 1: ungrounded (" in reason and "time 00:00:57" in reason
    assert "'stapler'" in reason
    assert "attempt 2: output does not match the schema (key_events: Field required" in reason
    assert "not supported by the analysis" in server.bodies()[1]["messages"][1]["content"]


def test_server_errors_are_retried_but_a_wrong_key_is_not() -> None:
    with ScriptedServer([{"status": 503, "json": {"error": "busy"}}, GOOD]) as server:
        report = _openai(server).write(hand_analysis())
    assert report.generated_by.writer == "openai_compatible" and len(server.requests) == 2
    with ScriptedServer([{"status": 401, "json": {"error": "bad key"}}]) as server:
        report = _openai(server).write(hand_analysis())
    assert len(server.requests) == 1
    assert report.generated_by.fallback_reason.endswith("attempt 1: HTTP 401 from the endpoint")


def test_nothing_listening_falls_back() -> None:
    with ScriptedServer([GOOD]) as server:
        url = server.url
    writer = OpenAICompatibleReportWriter(base_url=url, model="m", max_attempts=2, timeout_s=2)
    report = writer.write(hand_analysis())
    assert report.generated_by.writer == "template"
    assert "cannot reach the endpoint (ConnectError)" in report.generated_by.fallback_reason


# -- Bedrock ----------------------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials: the local server does not check signatures, boto3 needs some."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _bedrock(server: ScriptedServer, **kw: Any) -> BedrockReportWriter:
    return BedrockReportWriter(
        model_id="anthropic.claude-test-v1:0", region_name="eu-west-1",
        endpoint_url=server.url, **{"timeout_s": 5.0, "max_attempts": 3, **kw},
    )  # fmt: skip


def test_bedrock_writer_forces_the_report_tool_with_the_schema(aws_env: None) -> None:
    with ScriptedServer([converse_tool_use(llm_report())]) as server:
        report = _bedrock(server).write(hand_analysis())
    g = report.generated_by
    assert (g.writer, g.model, g.attempts) == ("bedrock", "anthropic.claude-test-v1:0", 1)
    assert report.procedure_summary == LLM_SUMMARY and report.grounding.passed
    (request,) = server.requests
    assert request["path"] == "/model/anthropic.claude-test-v1%3A0/converse"
    assert request["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256")
    body = json.loads(request["raw"])
    tool = body["toolConfig"]["tools"][0]["toolSpec"]
    assert tool["name"] == "record_case_report"
    assert tool["inputSchema"]["json"] == report_content_schema()
    assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "record_case_report"}}
    assert [list(c) for c in body["messages"][0]["content"]] == [["text"]]  # no image blocks
    _assert_deidentified(request["raw"])


def test_bedrock_text_answers_guardrails_and_throttling(aws_env: None) -> None:
    prose = converse([{"text": "Here is a summary of the case..."}], "end_turn")
    guardrail = converse([{"text": "Sorry."}], "guardrail_intervened")
    throttled = {
        "status": 429,
        "json": {"message": "slow down"},
        "headers": {"x-amzn-ErrorType": "ThrottlingException"},
    }
    with ScriptedServer([prose, guardrail, throttled]) as server:
        report = _bedrock(server).write(hand_analysis())
    reason = report.generated_by.fallback_reason
    assert report.generated_by.writer == "template" and len(server.requests) == 3
    assert "attempt 1: the model did not call record_case_report" in reason
    assert "attempt 2: the model refused (guardrail_intervened)" in reason
    assert "attempt 3: Bedrock ThrottlingException" in reason


def test_bedrock_timeout_then_success(aws_env: None) -> None:
    good = converse_tool_use(llm_report())
    with ScriptedServer([{**good, "delay": 1.5}, good]) as server:
        report = _bedrock(server, timeout_s=0.4).write(hand_analysis())
    assert report.generated_by.writer == "bedrock" and report.generated_by.attempts == 2
    assert (
        "rejected: no answer within 0.4 s"
        in server.bodies()[1]["messages"][0]["content"][0]["text"]
    )


# -- questions with tool calls ----------------------------------------------------------------


def test_openai_answers_questions_through_tool_calls() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "instrument_use", "arguments": '{"instrument": "clipper"}'},
    }
    with ScriptedServer(
        [
            chat_completion(None, tool_calls=[call], finish="tool_calls"),
            chat_completion("The clipper was first used at 00:00:02, during Preparation."),
        ]
    ) as server:
        reply = _openai(server).ask("when did they start clipping?", hand_analysis())
    assert reply.text == "The clipper was first used at 00:00:02, during Preparation."
    assert reply.intent == "llm" and "00:00:02" in reply.citations
    first, second = server.bodies()
    assert {t["function"]["name"] for t in first["tools"]} == {
        "state_at", "phase_duration", "instrument_use", "between"
    }  # fmt: skip
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
    assert "first seen at 00:00:02" in json.loads(tool_message["content"])["answer"]
    _assert_deidentified(server.requests[0]["raw"])


def test_an_ungrounded_model_answer_gives_way_to_the_deterministic_one() -> None:
    with ScriptedServer([chat_completion("The clipper was first used at 00:00:57.")]) as server:
        reply = _openai(server).ask("when was the clipper first used?", hand_analysis())
    assert reply.text.startswith("The clipper was first seen at 00:00:02")
    assert "timestamp 00:00:57 is not in the analysis" in reply.intent


def test_bedrock_answers_questions_through_tool_use(aws_env: None) -> None:
    use = {"toolUse": {"toolUseId": "t-1", "name": "phase_duration",
                       "input": {"phase": "Clipping and cutting"}}}  # fmt: skip
    final = [{"text": "Clipping and cutting lasted 10 s, from 00:00:40 to 00:00:50."}]
    with ScriptedServer([converse([use], "tool_use"), converse(final, "end_turn")]) as server:
        reply = _bedrock(server).ask("how long was clipping?", hand_analysis())
    assert reply.intent == "llm" and reply.text == final[0]["text"]
    first, second = server.bodies()
    assert {t["toolSpec"]["name"] for t in first["toolConfig"]["tools"]} >= {"phase_duration"}
    result = second["messages"][-1]["content"][0]["toolResult"]
    assert result["toolUseId"] == "t-1"
    assert "00:00:40-00:00:50" in result["content"][0]["json"]["answer"]
    _assert_deidentified(server.requests[0]["raw"])


# -- selection by settings --------------------------------------------------------------------


def test_writer_selection_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SURG_REPORT_WRITER", "SURG_LLM_API_KEY", "SURG_BEDROCK_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(report_writer_from_env(), TemplateReportWriter)
    monkeypatch.setenv("SURG_REPORT_WRITER", "openai")
    with pytest.raises(InputError, match="SURG_LLM_BASE_URL is required"):
        report_writer_from_env()
    monkeypatch.setenv("SURG_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("SURG_LLM_MODEL", "llama3.1")
    monkeypatch.setenv("SURG_LLM_API_KEY", "sk-secret")
    monkeypatch.setenv("SURG_LLM_TIMEOUT_S", "12.5")
    monkeypatch.setenv("SURG_LLM_MAX_ATTEMPTS", "2")
    writer = report_writer_from_env()
    assert isinstance(writer, OpenAICompatibleReportWriter)
    assert (writer.model, writer.api_key, writer.timeout_s, writer.max_attempts) == (
        "llama3.1", "sk-secret", 12.5, 2
    )  # fmt: skip
    monkeypatch.setenv("SURG_REPORT_WRITER", "bedrock")
    monkeypatch.setenv("SURG_BEDROCK_MODEL_ID", "amazon.nova-pro-v1:0")
    monkeypatch.setenv("SURG_BEDROCK_REGION", "eu-central-1")
    writer = report_writer_from_env()
    assert isinstance(writer, BedrockReportWriter) and writer.region_name == "eu-central-1"
    monkeypatch.setenv("SURG_REPORT_WRITER", "gpt")
    with pytest.raises(InputError, match="SURG_REPORT_WRITER='gpt' is unknown"):
        report_writer_from_env()
