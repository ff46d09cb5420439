"""Report writers: the offline template, any OpenAI-compatible endpoint, or Amazon Bedrock.

One interface (:class:`ReportWriter`), picked by settings (:func:`report_writer_from_env`):

- :class:`TemplateReportWriter` (default): deterministic prose, no network;
- :class:`OpenAICompatibleReportWriter`: ``POST {base_url}/chat/completions`` with
  ``response_format`` carrying the report's JSON Schema (vLLM, Ollama, llama.cpp server, OpenAI);
- :class:`BedrockReportWriter`: the Bedrock Converse API, structured output through a forced tool
  whose input schema is the report's JSON Schema.

An LLM writer's output is parsed, validated against the schema and grounding-checked; invalid or
ungrounded output, a refusal, a timeout or a server error is retried (the rejection reason is fed
back to the model), and after the last attempt the template writes the report, with every
attempt's reason in ``generated_by.fallback_reason``. A report is always produced.

Only the de-identified analysis (:func:`llm_payload`: phases, instruments, events, anomalies; no
case id, no frames, no file names, no event details) ever leaves the process.

Settings (environment variables):
    SURG_REPORT_WRITER: ``template`` (default), ``openai`` or ``bedrock``.
    SURG_LLM_BASE_URL, SURG_LLM_MODEL, SURG_LLM_API_KEY: the OpenAI-compatible endpoint
        (``http://127.0.0.1:11434/v1`` for Ollama); the key is optional for local servers.
    SURG_LLM_TIMEOUT_S (60), SURG_LLM_MAX_ATTEMPTS (3): per call, and calls before the template.
    SURG_BEDROCK_MODEL_ID, SURG_BEDROCK_REGION (else AWS_REGION), SURG_BEDROCK_ENDPOINT_URL
        (a VPC endpoint; tests point it at a local server). AWS credentials come from the usual
        boto3 chain (instance role, AWS_PROFILE...).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from typing import Any

import dagster as dg
from pydantic import ValidationError

from ml_models.analysis import Analysis, parse_clock, state_at
from ml_models.answers import Answer, answer, between, instrument_use, phase_duration
from ml_models.errors import InputError
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, PHASES
from ml_models.report import (
    TEMPLATE_VERSION,
    TIME_RE,
    GeneratedBy,
    Report,
    ReportContent,
    assemble_report,
    check_grounding,
    known_times,
    template_report,
)
from resources.settings import env_float, env_int

SYSTEM_PROMPT = (
    "You are a surgical documentation assistant. You receive the structured analysis of one "
    "de-identified laparoscopic video (phase timeline, instrument usage, video events, anomalies "
    "against Cholec80 reference statistics). Write a concise clinical report for a surgeon. "
    "Use only facts in the analysis: every timestamp you write (HH:MM:SS) must be a time stated "
    "in the analysis, name only phases and instruments that appear in it, and copy durations and "
    "counts exactly. Do not speculate about the patient or the surgeon."
)
ANSWER_PROMPT = (
    "You answer a surgeon's question about one de-identified laparoscopic video. Use the tools "
    "to look things up; never guess. Answer in one or two sentences and cite the HH:MM:SS "
    "timestamps the tools returned."
)
TOOL_NAME = "record_case_report"


def llm_payload(analysis: Analysis) -> dict[str, Any]:
    """The only data a model sees: the analysis without the case id (nothing identifying)."""
    # The case id is opaque, but a model has no use for it, so it never leaves the process.
    return analysis.model_dump(mode="json", exclude={"case_id"})


def report_content_schema() -> dict[str, Any]:
    """The JSON Schema an LLM's report must follow (strict: all fields required, no others).

    ``$ref``s are inlined: not every server's structured-output engine (llama.cpp grammars,
    some Bedrock models' tool schemas) resolves references.
    """
    schema = ReportContent.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


class AttemptFailed(Exception):
    """One LLM call gave nothing usable; ``retry`` says whether another call could help."""

    def __init__(self, reason: str, retry: bool = True) -> None:
        super().__init__(reason)
        self.retry = retry


class ReportWriter(dg.ConfigurableResource, ABC):
    """Turns a case analysis into a grounded report; answers questions about a case."""

    @abstractmethod
    def write(self, analysis: Analysis) -> Report:
        """The report of a case (always produced; see ``generated_by`` for who wrote it)."""

    def ask(self, question: str, analysis: Analysis) -> Answer:
        """Answer a question about the case (deterministic unless a subclass uses a model)."""
        return answer(question, analysis)


class TemplateReportWriter(ReportWriter):
    """Deterministic, offline prose from the analysis (the default)."""

    def write(self, analysis: Analysis) -> Report:
        """The template report."""
        return assemble_report(
            template_report(analysis),
            analysis,
            GeneratedBy(writer="template", version=TEMPLATE_VERSION),
        )


class LLMReportWriter(ReportWriter, ABC):
    """What the LLM writers share: attempts, validation, grounding, feedback and fallback."""

    timeout_s: float = 60.0
    max_attempts: int = 3

    @property
    @abstractmethod
    def writer_name(self) -> str:
        """``openai_compatible`` or ``bedrock`` (the ``generated_by.writer`` value)."""

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model id, recorded in ``generated_by``."""

    @abstractmethod
    def _generate(
        self, payload: dict[str, Any], schema: dict[str, Any], feedback: str | None
    ) -> Any:
        """One call: the model's report as a dict (or a JSON string). Raises AttemptFailed."""

    def write(self, analysis: Analysis) -> Report:
        """Ask the model; retry invalid or ungrounded output; fall back to the template."""
        payload = llm_payload(analysis)
        schema = report_content_schema()
        reasons: list[str] = []
        feedback = None
        attempts = 0
        for attempt in range(1, max(1, self.max_attempts) + 1):
            attempts = attempt
            try:
                raw = self._generate(payload, schema, feedback)
                if isinstance(raw, str):
                    try:
                        raw = json.loads(raw)
                    except json.JSONDecodeError as exc:
                        raise AttemptFailed(f"invalid JSON ({exc.msg} at char {exc.pos})") from None
                content = ReportContent.model_validate(raw)
            except AttemptFailed as exc:
                reasons.append(f"attempt {attempt}: {exc}")
                feedback = str(exc)
                if not exc.retry:
                    break
                continue
            except ValidationError as exc:
                detail = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]
                )
                reasons.append(f"attempt {attempt}: output does not match the schema ({detail})")
                feedback = f"your JSON does not match the schema: {detail}"
                continue
            grounding = check_grounding(content, analysis)
            if grounding.passed:
                return assemble_report(
                    content,
                    analysis,
                    GeneratedBy(
                        writer=self.writer_name,
                        model=self.model_name,
                        version=self.model_name,
                        attempts=attempt,
                    ),
                )
            problems = "; ".join(grounding.problems[:5])
            reasons.append(f"attempt {attempt}: ungrounded ({problems})")
            feedback = f"these statements are not supported by the analysis: {problems}"
        return assemble_report(
            template_report(analysis),
            analysis,
            GeneratedBy(
                writer="template",
                version=TEMPLATE_VERSION,
                attempts=attempts,
                fallback_reason=f"{self.writer_name} model {self.model_name}: "
                + " | ".join(reasons),
            ),
        )

    def _user_text(self, payload: dict[str, Any], feedback: str | None) -> str:
        text = "Case analysis (JSON):\n" + json.dumps(payload, separators=(",", ":"))
        if feedback:
            text += (
                f"\n\nYour previous report was rejected: {feedback}. Write it again, using only "
                "facts from the analysis."
            )
        return text


# -- tools over the analysis, for answering questions ----------------------------------------

ANSWER_TOOLS: list[dict[str, Any]] = [
    {
        "name": "state_at",
        "description": "Phase, visible instruments and video events at one time.",
        "parameters": {
            "type": "object",
            "properties": {"t_s": {"type": "number", "description": "seconds from video start"}},
            "required": ["t_s"],
            "additionalProperties": False,
        },
    },
    {
        "name": "phase_duration",
        "description": "How long a surgical phase lasted and when.",
        "parameters": {
            "type": "object",
            "properties": {"phase": {"type": "string", "enum": list(PHASES)}},
            "required": ["phase"],
            "additionalProperties": False,
        },
    },
    {
        "name": "instrument_use",
        "description": "When an instrument was first and last seen and how long it was visible.",
        "parameters": {
            "type": "object",
            "properties": {
                "instrument": {"type": "string", "enum": list(INSTRUMENT_CLASSES)},
                "last": {"type": "boolean", "description": "ask about the last use"},
            },
            "required": ["instrument"],
            "additionalProperties": False,
        },
    },
    {
        "name": "between",
        "description": "Phases, instruments, events and anomalies between two times.",
        "parameters": {
            "type": "object",
            "properties": {"start_s": {"type": "number"}, "end_s": {"type": "number"}},
            "required": ["start_s", "end_s"],
            "additionalProperties": False,
        },
    },
]


def run_tool(name: str, args: dict[str, Any], analysis: Analysis) -> dict[str, Any]:
    """Execute one of :data:`ANSWER_TOOLS` over the analysis (errors become tool output)."""
    try:
        if name == "state_at":
            return state_at(analysis, float(args["t_s"]))
        if name == "phase_duration":
            a = phase_duration(analysis, PHASES.index(args["phase"]))
        elif name == "instrument_use":
            a = instrument_use(
                analysis, INSTRUMENT_CLASSES.index(args["instrument"]), bool(args.get("last"))
            )
        elif name == "between":
            a = between(analysis, float(args["start_s"]), float(args["end_s"]))
        else:
            return {"error": f"unknown tool {name}"}
        return {"answer": a.text, "timestamps": a.citations}
    except (KeyError, ValueError, TypeError) as exc:
        return {"error": f"bad arguments for {name}: {exc}"}


def grounded_answer(text: str, analysis: Analysis, cited: set[str]) -> list[str]:
    """Problems with a model's answer: no timestamp, or one neither the tools nor analysis gave."""
    stamps = [m.group(1) for m in TIME_RE.finditer(text)]
    if not stamps:
        return ["the answer cites no timestamp"]
    known = known_times(analysis) + [parse_clock(c) or 0.0 for c in cited]
    out = []
    for s in stamps:
        t = parse_clock(s)
        if t is None or not any(abs(t - k) <= 1.0 for k in known):
            out.append(f"timestamp {s} is not in the analysis")
    return out


def question_text(question: str, analysis: Analysis) -> str:
    """The user turn of a question: a few de-identified facts, then the question."""
    facts = {
        "video_duration_s": analysis.video.duration_s,
        "phases": [p.phase for p in analysis.phases],
        "instruments": [i.instrument for i in analysis.instruments],
    }
    return f"Case facts: {json.dumps(facts)}\nQuestion: {question}"


def deterministic_fallback(question: str, analysis: Analysis, reason: str) -> Answer:
    """The offline answer, noting why the model's was not used."""
    fallback = answer(question, analysis)
    fallback.intent = f"deterministic (model answer not used: {reason})"
    return fallback


MAX_TOOL_ROUNDS = 6


# -- OpenAI-compatible ------------------------------------------------------------------------


class OpenAICompatibleReportWriter(LLMReportWriter):
    """Any OpenAI-compatible chat-completions endpoint, with structured output.

    Attributes:
        base_url: e.g. ``https://api.openai.com/v1``, ``http://127.0.0.1:8000/v1`` (vLLM).
        model: The model name the server knows.
        api_key: Bearer token (``SURG_LLM_API_KEY``; optional for local servers).
        timeout_s: Per call.
        max_attempts: Calls before the template takes over.
    """

    base_url: str
    model: str
    api_key: str | None = None

    @property
    def writer_name(self) -> str:
        """``openai_compatible``."""
        return "openai_compatible"

    @property
    def model_name(self) -> str:
        """The configured model."""
        return self.model

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = self.base_url.rstrip("/") + "/chat/completions"
        try:
            resp = httpx.post(url, json=body, headers=headers, timeout=self.timeout_s)
        except httpx.TimeoutException:
            raise AttemptFailed(f"no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise AttemptFailed(f"cannot reach the endpoint ({type(exc).__name__})") from None
        if resp.status_code in (401, 403, 404):
            # Wrong key, model or URL: another call will not fix a setting.
            raise AttemptFailed(f"HTTP {resp.status_code} from the endpoint", retry=False)
        if resp.status_code >= 400:
            raise AttemptFailed(f"HTTP {resp.status_code} from the endpoint")
        try:
            return resp.json()
        except ValueError:
            raise AttemptFailed("the endpoint's response is not JSON") from None

    def _generate(
        self, payload: dict[str, Any], schema: dict[str, Any], feedback: str | None
    ) -> Any:
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": self._user_text(payload, feedback)},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "case_report", "strict": True, "schema": schema},
            },
        }
        data = self._post(body)
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise AttemptFailed("the response has no choices") from None
        if message.get("refusal"):
            raise AttemptFailed(f"the model refused: {str(message['refusal'])[:200]}")
        if choice.get("finish_reason") == "content_filter":
            raise AttemptFailed("the model's output was filtered")
        if choice.get("finish_reason") == "length":
            raise AttemptFailed("the model's output was cut off (length)")
        content = message.get("content")
        if not content:
            raise AttemptFailed("the model returned no content")
        return content

    def ask(self, question: str, analysis: Analysis) -> Answer:
        """Let the model answer with tool calls over the analysis; deterministic on failure."""
        tools = [{"type": "function", "function": t} for t in ANSWER_TOOLS]
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": ANSWER_PROMPT},
            {"role": "user", "content": question_text(question, analysis)},
        ]
        cited: set[str] = set()
        reason = "no answer"
        for _round in range(MAX_TOOL_ROUNDS):
            try:
                data = self._post(
                    {"model": self.model, "temperature": 0, "messages": messages, "tools": tools}
                )
                message = data["choices"][0]["message"]
            except AttemptFailed as exc:
                reason = str(exc)
                break
            except (KeyError, IndexError, TypeError):
                reason = "the response has no choices"
                break
            calls = message.get("tool_calls") or []
            if not calls:
                text = (message.get("content") or "").strip()
                problems = grounded_answer(text, analysis, cited)
                if not problems:
                    return Answer(text, sorted(cited), "llm")
                reason = "; ".join(problems)
                break
            messages.append(
                {"role": "assistant", "content": message.get("content"), "tool_calls": calls}
            )
            for call in calls:
                fn = call.get("function", {})
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except json.JSONDecodeError:
                    args = {}
                result = run_tool(fn.get("name", ""), args, analysis)
                cited.update(result.get("timestamps", []))
                if "timestamp" in result:
                    cited.add(result["timestamp"])
                messages.append(
                    {"role": "tool", "tool_call_id": call.get("id"), "content": json.dumps(result)}
                )
        return deterministic_fallback(question, analysis, reason)


# -- Amazon Bedrock ----------------------------------------------------------------------------


class BedrockReportWriter(LLMReportWriter):
    """Amazon Bedrock's Converse API; the report is the input of a forced tool call.

    Attributes:
        model_id: A Bedrock model or inference-profile id.
        region_name: AWS region (else boto3's default).
        endpoint_url: Override (VPC endpoint; tests point it at a local server).
    """

    model_id: str
    region_name: str | None = None
    endpoint_url: str | None = None

    @property
    def writer_name(self) -> str:
        """``bedrock``."""
        return "bedrock"

    @property
    def model_name(self) -> str:
        """The Bedrock model id."""
        return self.model_id

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=min(10.0, self.timeout_s),
            read_timeout=self.timeout_s,
            # Our own attempts feed the rejection reason back; botocore's would only repeat.
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        return boto3.client(
            "bedrock-runtime",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            config=config,
        )

    def _generate(
        self, payload: dict[str, Any], schema: dict[str, Any], feedback: str | None
    ) -> Any:

        resp = self._converse(
            system=[{"text": SYSTEM_PROMPT}],
            messages=[{"role": "user", "content": [{"text": self._user_text(payload, feedback)}]}],
            inferenceConfig={"temperature": 0.0, "maxTokens": 4096},
            toolConfig={
                "tools": [
                    {
                        "toolSpec": {
                            "name": TOOL_NAME,
                            "description": "Record the case report.",
                            "inputSchema": {"json": schema},
                        }
                    }
                ],
                "toolChoice": {"tool": {"name": TOOL_NAME}},
            },
        )
        stop = resp.get("stopReason")
        if stop in ("guardrail_intervened", "content_filtered"):
            raise AttemptFailed(f"the model refused ({stop})")
        blocks = resp.get("output", {}).get("message", {}).get("content", [])
        for block in blocks:
            use = block.get("toolUse")
            if use and use.get("name") == TOOL_NAME:
                return use.get("input")
        text = " ".join(b.get("text", "") for b in blocks).strip()
        raise AttemptFailed(f"the model did not call {TOOL_NAME} (said: {text[:160]!r})")

    def _converse(self, **request: Any) -> dict[str, Any]:
        """One Converse call; failures become :class:`AttemptFailed`."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        try:
            return self._client().converse(modelId=self.model_id, **request)
        except (ReadTimeoutError, ConnectTimeoutError):
            raise AttemptFailed(f"no answer within {self.timeout_s:g} s") from None
        except NoCredentialsError:
            raise AttemptFailed("no AWS credentials", retry=False) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            fatal = code in {"AccessDeniedException", "ResourceNotFoundException",
                             "ValidationException", "UnrecognizedClientException"}  # fmt: skip
            raise AttemptFailed(f"Bedrock {code}", retry=not fatal) from None
        except BotoCoreError as exc:
            raise AttemptFailed(f"cannot reach Bedrock ({type(exc).__name__})") from None

    def ask(self, question: str, analysis: Analysis) -> Answer:
        """Let the model answer with Converse tool use over the analysis; else deterministic."""
        tools = [
            {"toolSpec": {"name": t["name"], "description": t["description"],
                          "inputSchema": {"json": t["parameters"]}}}
            for t in ANSWER_TOOLS
        ]  # fmt: skip
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"text": question_text(question, analysis)}]}
        ]
        cited: set[str] = set()
        reason = "no answer"
        for _round in range(MAX_TOOL_ROUNDS):
            try:
                resp = self._converse(
                    system=[{"text": ANSWER_PROMPT}],
                    messages=messages,
                    inferenceConfig={"temperature": 0.0, "maxTokens": 1024},
                    toolConfig={"tools": tools},
                )
            except AttemptFailed as exc:
                reason = str(exc)
                break
            message = resp.get("output", {}).get("message", {})
            blocks = message.get("content", [])
            uses = [b["toolUse"] for b in blocks if "toolUse" in b]
            if not uses:
                text = " ".join(b.get("text", "") for b in blocks).strip()
                problems = grounded_answer(text, analysis, cited)
                if not problems:
                    return Answer(text, sorted(cited), "llm")
                reason = "; ".join(problems)
                break
            messages.append({"role": "assistant", "content": blocks})
            results = []
            for use in uses:
                result = run_tool(use.get("name", ""), use.get("input") or {}, analysis)
                cited.update(result.get("timestamps", []))
                if "timestamp" in result:
                    cited.add(result["timestamp"])
                results.append(
                    {
                        "toolResult": {
                            "toolUseId": use.get("toolUseId"),
                            "content": [{"json": result}],
                        }
                    }
                )
            messages.append({"role": "user", "content": results})
        return deterministic_fallback(question, analysis, reason)


# -- selection by settings ---------------------------------------------------------------------

WRITER_KINDS = ("template", "openai", "bedrock")


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        kind = os.environ.get("SURG_REPORT_WRITER")
        raise InputError(f"setting {name} is required when SURG_REPORT_WRITER={kind}; set it.")
    return value


def report_writer_from_env(deferred: bool = False) -> ReportWriter:
    """The report writer the settings ask for (``SURG_REPORT_WRITER``, template by default).

    Args:
        deferred: Keep the API key as ``dg.EnvVar`` (for ``Definitions``: resolved at run
            time, never shown in the UI); resolve it now otherwise.
    """
    kind = (os.environ.get("SURG_REPORT_WRITER") or "template").strip().lower()
    if kind not in WRITER_KINDS:
        raise InputError(
            f"setting SURG_REPORT_WRITER={kind!r} is unknown; use one of {', '.join(WRITER_KINDS)}."
        )
    if kind == "template":
        return TemplateReportWriter()
    timeout_s = env_float("SURG_LLM_TIMEOUT_S", 60.0)
    max_attempts = env_int("SURG_LLM_MAX_ATTEMPTS", 3)
    if kind == "openai":
        key: Any = None
        if os.environ.get("SURG_LLM_API_KEY"):
            key = dg.EnvVar("SURG_LLM_API_KEY") if deferred else os.environ["SURG_LLM_API_KEY"]
        return OpenAICompatibleReportWriter(
            base_url=_required("SURG_LLM_BASE_URL"),
            model=_required("SURG_LLM_MODEL"),
            api_key=key,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
        )
    return BedrockReportWriter(
        model_id=_required("SURG_BEDROCK_MODEL_ID"),
        region_name=os.environ.get("SURG_BEDROCK_REGION")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or None,
        endpoint_url=os.environ.get("SURG_BEDROCK_ENDPOINT_URL") or None,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
    )
