"""Hooks of the schemathesis run in ``test_hostile_api.py`` (loaded with ``SCHEMATHESIS_HOOKS``).

Generated ids would almost always miss, and every handler would stop at its 404; so half the
requests name the analysed case and the open upload the test prepared. The caller's own API token
is never revoked by a generated ``DELETE /api/tokens/{id}``: the rest of the run needs it.
The check ``one_clear_error`` holds every refusal to the API's one error shape.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import schemathesis

SUBSTITUTES = {
    "case_id": "SURG_ST_CASE_ID",
    "upload_id": "SURG_ST_UPLOAD_ID",
}


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    """Point half the generated ids at real objects; keep the run's token alive."""
    if not path_parameters:
        return path_parameters
    out = dict(path_parameters)
    coin = zlib.crc32(repr(sorted(out.items())).encode()) % 2 == 0
    for name, env in SUBSTITUTES.items():
        if name in out and coin and os.environ.get(env):
            out[name] = os.environ[env]
    own = os.environ.get("SURG_ST_TOKEN_ID")
    if own and str(out.get("token_id")) == own:
        out["token_id"] = int(own) + 10_000
    return out


@schemathesis.check
def one_clear_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx of the API is JSON ``{"error": "one sentence"}`` and never a traceback."""
    if not 400 <= response.status_code < 500 or not case.path.startswith("/api"):
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body") from None
    if not (isinstance(body, dict) and set(body) == {"error"} and str(body["error"]).strip()):
        raise AssertionError(f'{response.status_code} body is not {{"error": ...}}: {body!r}')
    if "Traceback" in body["error"]:
        raise AssertionError("the error message carries a traceback")
    return True
