"""The model registry: versions of each model, their files in the blob store, and decisions.

Files live under ``models/{name}/{version}/`` (``weights.pt``, ``model_card.json``, optionally
``model.onnx``); the catalog's ``model_versions`` table holds status (Pending, Approved,
Rejected), metrics, dataset version, who decided and when. Case assets ask for the newest
Approved version and record its id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
from sqlalchemy import select

from ml_models.errors import InputError
from resources.blob_store import BlobStore
from resources.catalog import Catalog, ModelVersion, utcnow

STATUSES = ("Pending", "Approved", "Rejected")
MODEL_NAMES = ("instrument_detector", "phase_model", "out_of_body_model")


class ModelRegistry(dg.ConfigurableResource):
    """Registered model versions over the catalog and the blob store."""

    catalog: Catalog
    blob_store: BlobStore
    cache_dir: str

    def _next_version(self, name: str) -> str:
        with self.catalog.session() as s:
            versions = s.scalars(select(ModelVersion.version).where(ModelVersion.name == name))
            numbers = [int(v[1:]) for v in versions if v.startswith("v") and v[1:].isdigit()]
        return f"v{max(numbers, default=0) + 1}"

    def register(
        self,
        name: str,
        files: dict[str, Path],
        card: dict[str, Any],
        metrics: dict[str, float] | None = None,
        dataset_version: str | None = None,
        status: str = "Pending",
        decided_by: str | None = None,
        reason: str | None = None,
    ) -> ModelVersion:
        """Store a model's files and card under a new version and record it.

        Args:
            name: Model name (``instrument_detector``...).
            files: Local files by their stored name (``weights.pt``, ``model.onnx``).
            card: The model card (data, metrics, command); written as ``model_card.json``.
            metrics: Evaluation metrics.
            dataset_version: The dataset snapshot it was trained on.
            status: Initial status (bootstrap models are registered Approved).
            decided_by: Who decided, for a status other than Pending.
            reason: Why, for a rejection.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        version = self._next_version(name)
        prefix = f"models/{name}/{version}"
        for stored, path in files.items():
            self.blob_store.put_file(f"{prefix}/{stored}", path)
        full_card = {**card, "name": name, "version": version, "metrics": metrics or {}}
        self.blob_store.put_bytes(
            f"{prefix}/model_card.json", json.dumps(full_card, indent=2, default=str).encode()
        )
        row = ModelVersion(
            name=name,
            version=version,
            uri=prefix,
            metrics=metrics or {},
            status=status,
            reason=reason,
            dataset_version=dataset_version,
            decided_by=decided_by if status != "Pending" else None,
            decided_at=utcnow() if status != "Pending" else None,
        )
        with self.catalog.session() as s:
            s.add(row)
        return row

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Registered versions, newest first."""
        q = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
        if name:
            q = q.where(ModelVersion.name == name)
        with self.catalog.session() as s:
            return list(s.scalars(q))

    def newest_approved(self, name: str) -> ModelVersion | None:
        """The newest Approved version of a model, or None."""
        return next((v for v in self.versions(name) if v.status == "Approved"), None)

    def decide(
        self, name: str, version: str, status: str, by: str, reason: str | None = None
    ) -> ModelVersion:
        """Approve or reject a version (a person's decision)."""
        if status not in ("Approved", "Rejected"):
            raise InputError(f"a decision is Approved or Rejected, not {status!r}.")
        with self.catalog.session() as s:
            row = s.scalars(
                select(ModelVersion).where(
                    ModelVersion.name == name, ModelVersion.version == version
                )
            ).first()
            if row is None:
                raise InputError(
                    f"model {name} has no version {version}; list them with `surg models list`."
                )
            row.status, row.decided_by, row.decided_at, row.reason = status, by, utcnow(), reason
            return row

    def local_file(self, version: ModelVersion, stored: str = "weights.pt") -> Path:
        """A local path of one of a version's files: a cached plaintext copy.

        The lake may be encrypted, so even a local store's file is never opened by path; a
        version's files are immutable, so the copy is made once.
        """
        key = f"{version.uri}/{stored}"
        if not self.blob_store.exists(key):
            raise InputError(f"model {version.name} {version.version} has no {stored} stored.")
        target = Path(self.cache_dir) / key
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            self.blob_store.download(key, tmp)
            tmp.replace(target)
        return target

    def approved_file(self, name: str, stored: str = "weights.pt") -> tuple[ModelVersion, Path]:
        """The newest Approved version of ``name`` and a local path of its ``stored`` file."""
        version = self.newest_approved(name)
        if version is None:
            raise InputError(
                f"no Approved version of {name}; train the default models with `make models` "
                f"(or `surg models bootstrap`)."
            )
        return version, self.local_file(version, stored)

    def register_candidate(
        self,
        name: str,
        files: dict[str, Path],
        card: dict[str, Any],
        metrics: dict[str, float],
        primary_metric: str,
        thresholds: dict[str, float] | None = None,
        tolerance: float = 0.0,
        dataset_version: str | None = None,
        auto_approve: bool = False,
        baseline: dict[str, float] | None = None,
    ) -> ModelVersion:
        """Register a newly trained version under governance.

        It is Rejected, with the reason, when a metric misses its threshold or when the primary
        metric regresses against the newest Approved version by more than ``tolerance``;
        otherwise it is Pending (a person approves), or Approved by the automatic rule when
        ``auto_approve`` is set. ``baseline`` is the newest Approved version's metrics measured
        on the candidate's own evaluation data; when given, the regression check uses it
        instead of the metrics stored with that version, which may come from other data (a
        detector trained on synthetic cases, scored on synthetic frames, against one trained
        and scored on real frames).
        """
        reasons = [
            f"{metric} {metrics.get(metric, float('nan')):.3f} is below the threshold {minimum:.3f}"
            for metric, minimum in (thresholds or {}).items()
            if not metrics.get(metric, float("-inf")) >= minimum
        ]
        current = self.newest_approved(name)
        reference = baseline if baseline is not None else current.metrics if current else {}
        if current is not None and primary_metric in reference:
            before, after = reference[primary_metric], metrics.get(primary_metric)
            if after is None or after < before - tolerance:
                on = " on the same data" if baseline is not None else ""
                reasons.append(
                    f"{primary_metric} regresses against {current.version}{on} ({before:.3f} -> "
                    f"{after if after is None else round(after, 3)})"
                )
        if reasons:
            status, by, reason = "Rejected", "evaluation", "; ".join(reasons)
        elif auto_approve:
            status, by, reason = "Approved", "auto-approval rule", None
        else:
            status, by, reason = "Pending", None, None
        return self.register(
            name,
            files,
            card,
            metrics=metrics,
            dataset_version=dataset_version,
            status=status,
            decided_by=by,
            reason=reason,
        )
