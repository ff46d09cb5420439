"""Fixtures for the deployment tests: the tools venv and one CDK synthesis per session.

The deployment tools (aws-cdk-lib, cdk-nag, cfn-lint, checkov, actionlint, hadolint,
kubernetes-validate) live in ``<repo>/.venv-tools`` because checkov pins packages older than
the project's own. Without that venv these tests skip with the command that creates it,
except under CI (``CI=true``), where a missing tool is a failure: CI must prove the
deployment, not quietly skip it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CDK_APP = DEPLOY / "aws"
TOOLS_BIN = REPO / ".venv-tools" / "bin"
ENVIRONMENTS = ("dev", "staging", "prod")
STACK_KINDS = ("network", "data", "compute", "audit", "cicd")

INSTALL_HINT = (
    "python3 -m venv .venv-tools && .venv-tools/bin/pip install -r deploy/requirements-tools.txt"
)


def require_tool(name: str) -> Path:
    """Path of a tool in .venv-tools; skip (locally) or fail (CI) when it is missing."""
    path = TOOLS_BIN / name
    if path.exists():
        return path
    message = f"{path} is missing; create the tools venv with: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_tool(args: list[str | Path], *, cwd: Path = REPO, timeout: int = 300) -> str:
    """Run a tool and return its output; fail the test with that output on a non-zero exit."""
    env = {**os.environ, "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1"}
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"{Path(str(args[0])).name} exited {result.returncode}:\n{output[-8000:]}")
    return output


@pytest.fixture(scope="session")
def cdk_out() -> Iterator[Path]:
    """Synthesise every environment once, into deploy/aws/cdk.out (CI keeps it as an artifact).

    The synth script itself exits non-zero on any unsuppressed cdk-nag error, so a failure
    here already names the offending resource and rule.
    """
    python = require_tool("python")
    if shutil.which("node") is None:
        message = "Node.js is required by jsii (AWS CDK) and is not on PATH"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    outdir = CDK_APP / "cdk.out"
    shutil.rmtree(outdir, ignore_errors=True)
    run_tool([python, "-m", "surg_deploy.synth", "--outdir", outdir], cwd=CDK_APP, timeout=600)
    yield outdir


class Templates:
    """The synthesised CloudFormation templates, indexed by environment and stack kind."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self._cache: dict[str, dict[str, Any]] = {}

    def get(self, env: str, kind: str) -> dict[str, Any]:
        """Template of stack ``surg-<env>-<kind>``."""
        name = f"surg-{env}-{kind}"
        if name not in self._cache:
            self._cache[name] = json.loads((self.outdir / f"{name}.template.json").read_text())
        return self._cache[name]

    def resources(self, env: str, kind: str, cfn_type: str) -> dict[str, dict[str, Any]]:
        """Resources of one CloudFormation type in one stack, by logical id."""
        return {
            logical_id: resource
            for logical_id, resource in self.get(env, kind)["Resources"].items()
            if resource["Type"] == cfn_type
        }

    def all_resources(self, cfn_type: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(stack name, logical id, resource) of one type across every stack."""
        found = []
        for env in ENVIRONMENTS:
            for kind in STACK_KINDS:
                for logical_id, resource in self.resources(env, kind, cfn_type).items():
                    found.append((f"surg-{env}-{kind}", logical_id, resource))
        return found


@pytest.fixture(scope="session")
def templates(cdk_out: Path) -> Templates:
    """Parsed templates of the session's synthesis."""
    return Templates(cdk_out)
