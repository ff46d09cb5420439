"""Small real HTTP servers speaking the OpenAI chat-completions and Bedrock Converse APIs.

Each answers from a script (one response per request, the last one repeated) and records every
request it received, so tests can check what we send and how we handle what comes back.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedServer:
    """A local HTTP server replying with scripted responses; ``requests`` records what came in.

    A response is a dict: ``json`` (an object) or ``text`` (raw body), ``status`` (200),
    ``headers``, and ``delay`` (seconds to wait first: a slow model).
    """

    def __init__(self, responses: list[dict[str, Any]]) -> None:
        self.responses = list(responses)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "raw": body.decode()}
                    )
                    n = len(server.requests) - 1
                    spec = server.responses[min(n, len(server.responses) - 1)]
                time.sleep(spec.get("delay", 0))
                payload = spec["text"] if "text" in spec else json.dumps(spec["json"])
                data = payload.encode()
                try:
                    self.send_response(spec.get("status", 200))
                    for k, v in spec.get("headers", {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out first, which is what the test wanted

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda *a: None  # type: ignore[method-assign]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the requests received."""
        return [json.loads(r["raw"]) for r in self.requests]

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def chat_completion(content: str | None, refusal: str | None = None, finish: str = "stop",
                    tool_calls: list | None = None) -> dict[str, Any]:  # fmt: skip
    """An OpenAI chat-completions response."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "json": {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "test-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }
    }


def converse_tool_use(report: dict[str, Any], name: str = "record_case_report") -> dict[str, Any]:
    """A Bedrock Converse response whose assistant message calls the report tool."""
    return converse([{"toolUse": {"toolUseId": "tooluse-1", "name": name, "input": report}}],
                    "tool_use")  # fmt: skip


def converse(content: list[dict[str, Any]], stop: str) -> dict[str, Any]:
    """A Bedrock Converse response."""
    return {
        "json": {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": {"inputTokens": 10, "outputTokens": 10, "totalTokens": 20},
            "metrics": {"latencyMs": 5},
        }
    }
