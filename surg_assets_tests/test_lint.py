"""House rules that tools can check: ruff (lint and format) and the rooms of DESIGN.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUFF = str(Path(sys.executable).with_name("ruff"))


def test_ruff_lint_is_clean() -> None:
    proc = subprocess.run([RUFF, "check", "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_ruff_format_is_clean() -> None:
    proc = subprocess.run(
        [RUFF, "format", "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-4000:]


def _imports(folder: str, pattern: str) -> list[str]:
    rx = re.compile(pattern, re.MULTILINE)
    return [
        str(p.relative_to(REPO))
        for p in (REPO / folder).rglob("*.py")
        if rx.search(p.read_text(encoding="utf-8"))
    ]


def test_ml_models_never_imports_dagster() -> None:
    assert _imports("ml_models", r"^\s*(import|from)\s+dagster") == []


def test_web_app_never_imports_torch() -> None:
    assert _imports("surg_web", r"^\s*(import|from)\s+(torch|ultralytics)") == []


def test_no_legacy_dagster_apis() -> None:
    legacy = (
        r"@repository|required_resource_keys|compute_kind=|config_schema=|@resource\b"
        r"|AutoMaterializePolicy"
    )
    assert _imports("surg_assets", legacy) == []
    assert _imports("resources", legacy) == []


def test_loading_the_definitions_does_not_import_torch() -> None:
    # The multiprocess executor loads the definitions once per step: torch (about 2 s) is
    # imported by the steps that run a model, not by every step.
    code = (
        "import sys, surg_assets.definitions; "
        "print(sorted({'torch', 'ultralytics'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
