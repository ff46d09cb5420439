"""The review API against hostile callers: schemathesis walks the OpenAPI spec with generated
valid and invalid requests (no answer may be a 5xx), then hand-written requests with wrong types,
non-finite numbers, out-of-range integers and huge bodies, each refused with one clear 4xx.

Everything runs against a real uvicorn server with a SQLite catalog and a folder lake.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from surg_assets_tests.conftest import REPO
from surg_assets_tests.test_web.conftest import WebServer, start_server
from surg_assets_tests.test_web.helpers import write_perception

pytest.importorskip("schemathesis", reason="pip install schemathesis (the dev extra)")

CASE_ID = "c00000000000000ab"
# Enough generated requests per operation to reach past validation, few enough for < 2 min.
EXAMPLES_PER_OPERATION = 10


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """A server holding one analysed case, so generated requests reach the real code paths."""
    for server in start_server(tmp_path_factory.mktemp("hostile-home")):
        write_perception(server.blob_store, CASE_ID, duration_s=2.0)
        server.blob_store.put_bytes(f"processed-videos/{CASE_ID}/video.mp4", b"\0" * 4096)
        server.catalog.ensure_case(CASE_ID)
        server.catalog.update_case(CASE_ID, status="ready", duration_s=2.0, fps=25.0, owner="ada")
        yield server


@pytest.fixture(scope="module")
def admin_token(hostile: WebServer) -> dict[str, Any]:
    """A bearer token of the admin (every role's routes open to it; no CSRF for tokens).

    Tokens 1-4 are decoys: schemathesis' boundary cases revoke token 1, and must not hit ours.
    """
    c = hostile.client("ada")
    for n in range(4):
        assert c.post("/api/tokens", json={"label": f"decoy-{n}"}).status_code == 201
    r = c.post("/api/tokens", json={"label": "schemathesis"})
    assert r.status_code == 201, r.text
    return r.json()


def test_schemathesis_finds_no_server_error_in_the_openapi_spec(
    hostile: WebServer, admin_token: dict[str, Any], tmp_path: Path
) -> None:
    """``schemathesis run`` (examples, boundary coverage, fuzzing; valid and invalid data) on
    every operation of /openapi.json, as the admin's bearer token: no 5xx, one error shape."""
    c = _client(hostile, admin_token)
    upload = c.post("/api/uploads", json={"name": "open.mp4", "size": 300_000}).json()
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "surg_assets_tests.test_web.schemathesis_hooks",
        "SURG_ST_TOKEN_ID": str(admin_token["id"]),
        "PYTHONPATH": str(REPO),
        "NO_COLOR": "1",
    }
    # Half the generated ids name the analysed case and the open upload, in every phase, so
    # handlers run past their 404 (schemathesis' dictionaries, read from schemathesis.toml).
    (tmp_path / "schemathesis.toml").write_text(
        f'[dictionaries.cases]\nvalues = ["{CASE_ID}"]\n'
        f'[dictionaries.uploads]\nvalues = ["{upload["upload_id"]}"]\n'
        "[parameters]\n"
        '"path.case_id" = { dictionary = "cases", probability = 0.5 }\n'
        '"path.upload_id" = { dictionary = "uploads", probability = 0.5 }\n'
    )
    junit = tmp_path / "schemathesis.xml"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{hostile.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {admin_token['token']}",
            "--checks",
            "not_a_server_error,one_clear_error",
            "--phases",
            "examples,coverage,fuzzing",
            "--mode",
            "all",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--generation-deterministic",  # the same requests every run: a failure reproduces
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--max-time",
            "80",
            "--report",
            "junit",
            "--report-junit-path",
            str(junit),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # its .schemathesis/ cache stays out of the repository
        timeout=170,
    )
    out = run.stdout + run.stderr
    (tmp_path / "schemathesis.log").write_text(out)
    assert run.returncode == 0, out[-8000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert generated and int(generated.group(1)) >= 500, out[-3000:]
    assert generated.group(1) == generated.group(2), out[-3000:]
    # The token survived the run, and the prepared objects were really reached.
    assert c.get("/api/auth/me").status_code == 200
    refused = re.search(r"401 Unauthorized \(\d+ operations?\):\n((?:  - .*\n)+)", out)
    assert refused is None or refused.group(1).split() == ["-", "POST", "/api/auth/login"], out
    tested = re.search(r"Tested: (\d+)", out)
    assert tested and int(tested.group(1)) >= 20, out[-3000:]


# -- wrong types, non-finite numbers, out-of-range integers ----------------------------------


def _client(hostile: WebServer, token: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=hostile.url, headers={"Authorization": f"Bearer {token['token']}"}, timeout=30
    )


def _assert_one_clear_error(r: httpx.Response, status: int | tuple[int, ...]) -> str:
    expected = (status,) if isinstance(status, int) else status
    assert r.status_code in expected, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"].endswith("."), body
    assert "Traceback" not in body["error"]
    return body["error"]


BOX = {"action": "add", "box": [1.0, 2.0, 30.0, 40.0], "class_name": "grasper", "class_id": 0}
WRONG_TYPES: list[tuple[str, str, Any]] = [
    ("POST", "/api/uploads", {"name": ["a.mp4"], "size": 10}),
    ("POST", "/api/uploads", {"name": "a.mp4", "size": {"n": 10}}),
    ("POST", "/api/uploads", {"name": "a.mp4", "size": True}),
    ("POST", "/api/uploads", {"name": "a.mp4", "size": 10.5}),
    ("POST", "/api/uploads", [1, 2, 3]),
    ("POST", "/api/uploads", "a.mp4"),
    ("POST", "/api/uploads", None),
    ("POST", "/api/tokens", {"label": 12}),
    ("POST", f"/api/cases/{CASE_ID}/shares", {"user": None}),
    ("POST", f"/api/cases/{CASE_ID}/annotations", {"kind": "box", "payload": "x"}),
    ("POST", f"/api/cases/{CASE_ID}/annotations", {"kind": 7, "payload": {}}),
    (
        "POST",
        f"/api/cases/{CASE_ID}/annotations",
        {"kind": "box", "frame_index": "ten", "t_s": 0.4, "payload": BOX},
    ),
    (
        "POST",
        f"/api/cases/{CASE_ID}/annotations",
        {"kind": "phase", "payload": {"segments": {"start_s": 0}}},
    ),
    ("POST", "/api/models/1/decision", {"decision": True}),
    ("POST", "/api/auth/login", {"name": 1, "password": 2}),
    ("GET", "/api/cases?limit=many", None),
    ("GET", "/api/cases?created_from=yesterday", None),
    ("GET", f"/api/cases/{CASE_ID}/overlays?from_s=soon", None),
    ("GET", f"/api/cases/{CASE_ID}/at?t=noon", None),
    ("GET", "/api/uploads/x/parts/first", None),
    ("DELETE", "/api/tokens/mine", None),
    ("POST", "/api/models/first/decision", {"decision": "Approved"}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRONG_TYPES)
def test_wrong_types_get_422_naming_the_field(
    hostile: WebServer, admin_token: dict[str, Any], method: str, path: str, body: Any
) -> None:
    with _client(hostile, admin_token) as c:
        kwargs = {} if method == "GET" or method == "DELETE" else {"json": body}
        r = c.request(method, path, **kwargs)
    _assert_one_clear_error(r, 422)


HUGE_INT = 10**30  # beyond every integer column of the catalog
NON_FINITE_AND_HUGE: list[tuple[str, str, str]] = [
    # Python's json module (and so FastAPI's body parser) reads NaN and Infinity.
    ("POST", "/api/uploads", '{"name": "a.mp4", "size": Infinity}'),
    ("POST", "/api/uploads", '{"name": "a.mp4", "size": NaN}'),
    ("POST", "/api/uploads", f'{{"name": "a.mp4", "size": 10, "part_size": {HUGE_INT}}}'),
    (
        "POST",
        f"/api/cases/{CASE_ID}/annotations",
        json.dumps({"kind": "box", "frame_index": 1, "t_s": 0.04, "payload": BOX}).replace(
            "0.04", "Infinity"
        ),
    ),
    (
        "POST",
        f"/api/cases/{CASE_ID}/annotations",
        json.dumps({"kind": "box", "frame_index": 1, "t_s": 0.04, "payload": BOX}).replace(
            '"frame_index": 1', f'"frame_index": {HUGE_INT}'
        ),
    ),
    (
        "POST",
        f"/api/cases/{CASE_ID}/annotations",
        json.dumps(
            {"kind": "box", "frame_index": 1, "t_s": 0.04, "payload": BOX, "supersedes_id": 1}
        ).replace('"supersedes_id": 1', f'"supersedes_id": {HUGE_INT}'),
    ),
    (
        "POST",
        f"/api/cases/{CASE_ID}/annotations",
        '{"kind": "phase", "payload": {"segments": [{"phase_name": "Preparation",'
        ' "start_s": 0, "end_s": Infinity}]}}',
    ),
    (
        "POST",
        f"/api/cases/{CASE_ID}/annotations",
        '{"kind": "box", "frame_index": 1, "t_s": 0.04, "payload": {"action": "delete",'
        f' "target": {{"frame_index": 1, "track_id": {HUGE_INT}}}}}}}',
    ),
    ("POST", f"/api/models/{HUGE_INT}/decision", '{"decision": "Approved"}'),
    ("DELETE", f"/api/tokens/{HUGE_INT}", ""),
    ("GET", f"/api/uploads/x/parts/{HUGE_INT}", ""),
    ("GET", f"/api/cases/{CASE_ID}/overlays?from_s=inf&to_s=inf", ""),
    ("GET", f"/api/cases/{CASE_ID}/overlays?from_s=nan&to_s=1", ""),
    ("GET", f"/api/cases/{CASE_ID}/at?t=nan", ""),
    ("GET", "/api/cases?min_phase_s=nan&phase=Preparation", ""),
    ("GET", f"/api/cases?limit={HUGE_INT}", ""),
]


@pytest.mark.parametrize(("method", "path", "raw"), NON_FINITE_AND_HUGE)
def test_non_finite_numbers_and_huge_integers_are_refused_not_crashed_on(
    hostile: WebServer, admin_token: dict[str, Any], method: str, path: str, raw: str
) -> None:
    with _client(hostile, admin_token) as c:
        headers = {"Content-Type": "application/json"} if raw else {}
        r = c.request(method, path, content=raw.encode() or None, headers=headers)
    _assert_one_clear_error(r, (400, 404, 422))
    # Nothing non-finite was stored: every annotation of the case still serialises as JSON.
    with _client(hostile, admin_token) as c:
        assert c.get(f"/api/cases/{CASE_ID}/annotations").status_code == 200
        assert c.get(f"/api/cases/{CASE_ID}/overlays").status_code == 200


# -- huge bodies -----------------------------------------------------------------------------


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    yield b'{"name": "a.mp4", "size": 10, "procedure": "'
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}'


def test_a_huge_json_body_is_refused_with_413_with_or_without_content_length(
    hostile: WebServer, admin_token: dict[str, Any]
) -> None:
    limit = hostile.app.state.ctx.config.max_json_kb * 1024
    with _client(hostile, admin_token) as c:
        declared = c.post("/api/uploads", json={"name": "a.mp4", "size": 10, "x": "y" * limit})
        assert "too large" in _assert_one_clear_error(declared, 413)
        # Chunked transfer: no Content-Length to judge by, so the body is counted as it arrives.
        chunked = c.post(
            "/api/uploads",
            content=_chunks(8 * limit),
            headers={"Content-Type": "application/json"},
        )
        assert "too large" in _assert_one_clear_error(chunked, 413)
        # A lying Content-Length (small) with a huge body cannot get past either.
        assert c.get("/api/health").status_code == 200


def test_deeply_nested_and_wide_json_is_refused_cleanly(
    hostile: WebServer, admin_token: dict[str, Any]
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with _client(hostile, admin_token) as c:
        r = c.post(
            f"/api/cases/{CASE_ID}/annotations",
            content=('{"kind": "phase", "payload": ' + deep + "}").encode(),
            headers={"Content-Type": "application/json"},
        )
        assert "JSON" in _assert_one_clear_error(r, 400)
        wide = {
            "kind": "phase",
            "payload": {"segments": [{"phase_name": "P", "start_s": 0}] * 5000},
        }
        r = c.post(f"/api/cases/{CASE_ID}/annotations", json=wide)
        _assert_one_clear_error(r, (413, 422))


def test_a_huge_upload_part_is_cut_off_at_its_size(
    hostile: WebServer, admin_token: dict[str, Any]
) -> None:
    with _client(hostile, admin_token) as c:
        up = c.post("/api/uploads", json={"name": "big.mp4", "size": 100_000}).json()
        url = up["part_urls"][0]["url"]
        part_size = up["part_size"]

        def endless() -> Iterator[bytes]:
            for _ in range(2000):  # 128 MiB offered; the server stops reading at the part size
                yield b"\0" * (64 * 1024)

        r = httpx.put(url, content=endless(), timeout=60)
        assert r.status_code == 413 and str(part_size) in r.json()["error"]
        state = c.get(f"/api/uploads/{up['upload_id']}").json()
        assert state["parts"] == []  # nothing of the oversized part was kept
        staging = Path(hostile.blob_store.root) / "uploads-staging" / up["upload_id"]
        assert not staging.exists() or not any(staging.rglob("*"))
