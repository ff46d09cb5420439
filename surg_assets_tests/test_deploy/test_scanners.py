"""Linters and scanners over everything in deploy/ and .github/workflows/."""

from __future__ import annotations

from pathlib import Path

from .conftest import CDK_APP, DEPLOY, ENVIRONMENTS, REPO, STACK_KINDS, require_tool, run_tool


def test_cfn_lint_passes_on_every_template(cdk_out: Path) -> None:
    cfn_lint = require_tool("cfn-lint")
    templates = sorted(cdk_out.glob("*.template.json"))
    assert len(templates) == len(ENVIRONMENTS) * len(STACK_KINDS)
    # Run from deploy/aws so its .cfnlintrc.yaml (ignored rules, with reasons) applies.
    run_tool([cfn_lint, *templates], cwd=CDK_APP)


def test_checkov_passes_on_every_template(cdk_out: Path) -> None:
    checkov = require_tool("checkov")
    output = run_tool(
        [
            checkov,
            "--directory",
            cdk_out,
            "--framework",
            "cloudformation",
            "--quiet",
            "--compact",
            # Offline: no Prisma Cloud guideline download, no telemetry.
            "--skip-download",
            "--output",
            "cli",
        ]
    )
    assert "Failed checks: 0" in output
    assert "Passed checks:" in output


def test_dockerfile_passes_hadolint() -> None:
    hadolint = require_tool("hadolint")
    run_tool([hadolint, DEPLOY / "Dockerfile"])


def test_dockerfile_runs_as_a_non_root_user_on_python_311_slim() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}


def test_workflows_pass_actionlint() -> None:
    actionlint = require_tool("actionlint")
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert {w.name for w in workflows} >= {"ci.yml", "release.yml"}
    run_tool([actionlint, "-color=false", *workflows])


def test_release_uses_oidc_and_gates_production_on_an_environment() -> None:
    import yaml

    release = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
    text = (REPO / ".github" / "workflows" / "release.yml").read_text()
    assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    jobs = release["jobs"]
    promote = jobs["promote-production"]
    assert promote["environment"] == "production"
    assert promote["permissions"]["id-token"] == "write"
    assert "retrain-staging" in promote["needs"]
    assert jobs["build-image"]["needs"] == "tests"
    assert jobs["tests"]["uses"] == "./.github/workflows/ci.yml"
