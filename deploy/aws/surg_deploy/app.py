"""Assemble the stacks of one or more environments into a CDK app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_cdk import App, Environment, Tags

from surg_deploy.audit import AuditStack
from surg_deploy.cicd import CiCdStack
from surg_deploy.compliance import apply_rule_packs
from surg_deploy.compute import ComputeStack
from surg_deploy.data import DataStack
from surg_deploy.network import NetworkStack
from surg_deploy.settings import CONTEXT_KEYS, DEFAULTS, settings_for

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"


def cdk_context() -> dict[str, Any]:
    """Feature flags and defaults from cdk.json, so in-process synthesis matches `cdk synth`."""
    return dict(json.loads(CDK_JSON.read_text())["context"])


def build_app(
    environments: list[str] | None = None,
    *,
    outdir: str | None = None,
    context: dict[str, Any] | None = None,
) -> App:
    """Create the app with every stack of the given environments and the nag packs applied.

    Args:
        environments: Subset of ``dev``, ``staging``, ``prod``; all when None, unless the
            context names one with ``env``.
        outdir: Cloud assembly directory (``cdk.out``); CDK's default when None.
        context: Extra CDK context (e.g. ``{"prod.account": "123456789012"}``).
    """
    merged = {**cdk_context(), **(context or {})}
    app = App(outdir=outdir, context=merged)
    # `cdk synth -c env=prod` passes context through the environment, not our argument.
    chosen = app.node.try_get_context("env")
    names = environments or ([chosen] if chosen else list(DEFAULTS))
    all_context = {**merged, **_flat_context(app)}
    image_tag = str(app.node.try_get_context("image_tag") or "bootstrap")
    start_services = str(app.node.try_get_context("start_services") or "true").lower() != "false"
    for name in names:
        settings = settings_for(name, all_context)
        env = Environment(account=settings.account, region=settings.region)
        prefix = settings.prefix
        network = NetworkStack(app, f"{prefix}-network", settings=settings, env=env)
        data = DataStack(app, f"{prefix}-data", settings=settings, network=network, env=env)
        compute = ComputeStack(
            app,
            f"{prefix}-compute",
            settings=settings,
            network=network,
            data=data,
            image_tag=image_tag,
            start_services=start_services,
            env=env,
        )
        audit = AuditStack(app, f"{prefix}-audit", settings=settings, data=data, env=env)
        cicd = CiCdStack(app, f"{prefix}-cicd", settings=settings, env=env)
        for stack in (network, data, compute, audit, cicd):
            # The budget filters on this tag (activate it as a cost allocation tag once).
            Tags.of(stack).add("project", f"surg-assets-{name}")
        for stack in (network, data, audit):
            stack.termination_protection = settings.deletion_protection
    Tags.of(app).add("data-classification", "phi")
    Tags.of(app).add("managed-by", "cdk:surg-assets/deploy/aws")
    apply_rule_packs(app)
    return app


def _flat_context(app: App) -> dict[str, Any]:
    """Context keys of the form ``<env>.<key>`` given on the command line."""
    keys = [f"{env}.{key}" for env in DEFAULTS for key in CONTEXT_KEYS]
    return {k: v for k in keys if (v := app.node.try_get_context(k)) is not None}
