"""The experiment tracker: Weights & Biases through dagster-wandb, offline unless a key is set.

Offline runs are written under ``SURG_HOME/wandb`` (``wandb sync`` uploads them later), so
training never needs the network; with ``WANDB_API_KEY`` set the same runs go online.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster_wandb import wandb_resource

from resources.settings import Settings, load_settings

DEFAULT_PROJECT = "surg-assets"


def wandb_mode() -> str:
    """``WANDB_MODE`` when set, else ``online`` with an API key and ``offline`` without one."""
    explicit = os.environ.get("WANDB_MODE", "").strip().lower()
    if explicit:
        return explicit
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_dir(settings: Settings | None = None) -> Path:
    """Where runs are written: ``WANDB_DIR``, else ``SURG_HOME/wandb``."""
    explicit = os.environ.get("WANDB_DIR")
    path = Path(explicit) if explicit else (settings or load_settings()).home / "wandb"
    path.mkdir(parents=True, exist_ok=True)
    return path


def wandb_project() -> str:
    """The W&B project (``SURG_WANDB_PROJECT``)."""
    return os.environ.get("SURG_WANDB_PROJECT") or DEFAULT_PROJECT


def experiment_tracker() -> dg.ResourceDefinition:
    """dagster-wandb's ``wandb_resource``: the key from ``WANDB_API_KEY`` at run time if set.

    Without a key the resource still gives the ``wandb`` SDK to the training assets, which start
    their runs offline (``wandb.login`` does not contact the server in offline mode).
    """
    if os.environ.get("WANDB_API_KEY"):
        config = {"api_key": {"env": "WANDB_API_KEY"}}
    else:
        # wandb.login checks the key against the server unless the SDK is in offline mode.
        os.environ.setdefault("WANDB_MODE", "offline")
        config = {"api_key": "offline"}
    if os.environ.get("WANDB_BASE_URL"):
        config["host"] = os.environ["WANDB_BASE_URL"]
    return wandb_resource.configured(config)
