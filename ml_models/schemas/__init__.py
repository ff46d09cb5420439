"""JSON Schemas of ``analysis.json`` and ``report.json``, generated from the pydantic models.

The generated files are committed beside this module so other tools (the web app, a hospital's
data warehouse) can validate our outputs without Python; a test keeps them equal to the models.
Regenerate after changing a model (and bump its ``schema_version``)::

    python -m ml_models.schemas
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

SCHEMA_DIR = Path(__file__).resolve().parent


def _models() -> dict[str, type[BaseModel]]:
    from ml_models.analysis import Analysis
    from ml_models.report import Report

    return {"analysis": Analysis, "report": Report}


def generate(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``name`` (``analysis`` or ``report``), from its model."""
    model = _models()[name]
    schema = model.model_json_schema(mode="serialization")
    version = model.model_fields["schema_version"].default
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://surg-assets.local/schemas/{name}-{version}.schema.json",
        **schema,
    }


def schema_path(name: str) -> Path:
    """Where the committed schema of ``name`` lives."""
    return SCHEMA_DIR / f"{name}.schema.json"


def load_schema(name: str) -> dict[str, Any]:
    """The committed JSON Schema of ``name``."""
    return json.loads(schema_path(name).read_text())


def dumps(schema: dict[str, Any]) -> str:
    """The committed text form (stable key order, trailing newline)."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_all() -> list[Path]:
    """(Re)write every committed schema file; returns the paths."""
    paths = []
    for name in _models():
        path = schema_path(name)
        path.write_text(dumps(generate(name)))
        paths.append(path)
    return paths
