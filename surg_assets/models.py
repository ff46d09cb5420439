"""Which model version a case asset uses: the newest Approved one, bootstrapped on first use.

The project ships default weights trained only on synthetic data (``ml_models/default_weights``,
written by ``make models``). When the registry has no Approved version of a model, those are
registered as its first version (Approved, decided by ``bootstrap``) so a fresh install analyses
its first video without a training step.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_models
from ml_models.errors import InputError
from resources.catalog import ModelVersion
from resources.registry import MODEL_NAMES, ModelRegistry

DEFAULT_WEIGHTS = Path(ml_models.__file__).resolve().parent / "default_weights"


def default_weights_file(name: str) -> Path:
    """Where ``make models`` puts the synthetic-only default of ``name``."""
    return DEFAULT_WEIGHTS / f"{name}.pt"


def ensure_default_models(registry: ModelRegistry) -> list[str]:
    """Register the shipped defaults of models that have no Approved version; return their names."""
    cards_file = DEFAULT_WEIGHTS / "cards.json"
    cards = json.loads(cards_file.read_text()) if cards_file.exists() else {}
    registered = []
    for name in MODEL_NAMES:
        weights = default_weights_file(name)
        if registry.newest_approved(name) is not None or not weights.exists():
            continue
        card = cards.get(name, {})
        registry.register(
            name,
            {"weights.pt": weights},
            card={
                **card,
                "origin": "default weights shipped with surg-assets (synthetic data only)",
            },
            metrics=card.get("metrics", {}),
            dataset_version=card.get("dataset_version", "synthetic-default"),
            status="Approved",
            decided_by="bootstrap",
        )
        registered.append(name)
    return registered


def approved_model(registry: ModelRegistry, name: str) -> tuple[ModelVersion, Path]:
    """The newest Approved version of ``name`` and its local weights (bootstrapping if needed)."""
    if name not in MODEL_NAMES:
        raise InputError(f"no model is called {name!r}; the models are {', '.join(MODEL_NAMES)}.")
    if registry.newest_approved(name) is None:
        ensure_default_models(registry)
    if registry.newest_approved(name) is None:
        raise InputError(
            f"no Approved {name} and no default weights; train the defaults with `surg models "
            "train-defaults --recipe quick` (under 15 minutes on 2 cores) or `make models`."
        )
    return registry.approved_file(name)
