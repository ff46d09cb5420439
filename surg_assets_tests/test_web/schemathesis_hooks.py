"""Hooks of the schemathesis run in ``test_hostile_api.py`` (loaded with ``SCHEMATHESIS_HOOKS``).

The caller's own API token is never revoked by a generated ``DELETE /api/tokens/{id}``: the rest
of the run needs it. The check ``one_clear_error`` holds every refusal to the API's one error
shape.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    """Keep the run's own token alive (its id comes in ``SURG_ST_TOKEN_ID``)."""
    own = os.environ.get("SURG_ST_TOKEN_ID")
    if not path_parameters or not own or str(path_parameters.get("token_id")) != own:
        return path_parameters
    return {**path_parameters, "token_id": int(own) + 10_000}


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
