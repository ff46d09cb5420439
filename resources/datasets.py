"""Dataset snapshots in the blob store: immutable, versioned, every file named by its sha256.

``datasets/{name}/v{N}/`` holds the files and ``manifest.json`` (written last, so a version
without a manifest is an interrupted write and is never read). A snapshot whose content equals
the newest version's is not written again: the same content keeps the same version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ml_models.errors import InputError
from resources.blob_store import BlobStore
from resources.catalog import Annotation, Catalog, utcnow
from resources.registry import ModelRegistry

PREFIX = "datasets"


def snapshot_prefix(name: str, version: str) -> str:
    """``datasets/{name}/{version}``."""
    return f"{PREFIX}/{name}/{version}"


def versions(blob_store: BlobStore, name: str) -> list[str]:
    """Complete versions of a dataset (those with a manifest), oldest first."""
    found = []
    for info in blob_store.list_prefix(f"{PREFIX}/{name}/"):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[3] == "manifest.json" and parts[2][1:].isdigit():
            found.append(parts[2])
    return sorted(set(found), key=lambda v: int(v[1:]))


def read_manifest(blob_store: BlobStore, name: str, version: str = "latest") -> dict[str, Any]:
    """A snapshot's manifest (``latest``: the newest version)."""
    if version == "latest":
        known = versions(blob_store, name)
        if not known:
            raise InputError(
                f"dataset {name} has no snapshot yet; materialize the {name} asset first."
            )
        version = known[-1]
    key = f"{snapshot_prefix(name, version)}/manifest.json"
    if not blob_store.exists(key):
        raise InputError(
            f"dataset {name} has no version {version}; its versions are "
            f"{', '.join(versions(blob_store, name)) or 'none'}."
        )
    return json.loads(blob_store.get_bytes(key))


def newest_manifest(blob_store: BlobStore, name: str) -> dict[str, Any] | None:
    """The newest snapshot's manifest, or None when there is none yet."""
    known = versions(blob_store, name)
    return read_manifest(blob_store, name, known[-1]) if known else None


@dataclass(frozen=True)
class Published:
    """The outcome of :func:`publish`: the manifest and whether a new version was written."""

    manifest: dict[str, Any]
    created: bool


def publish(
    blob_store: BlobStore, name: str, folder: Path, content_hash: str, facts: dict[str, Any]
) -> Published:
    """Store the files of ``folder`` as the next version, unless the newest has the same content.

    Args:
        blob_store: Where snapshots live.
        name: Dataset name (``detector_dataset``...).
        folder: Local folder with the snapshot's files.
        content_hash: Hash of the content (files and defining facts), compared with the newest.
        facts: Manifest fields: annotation ids, split, counts... (``files`` is filled in here).
    """
    newest = newest_manifest(blob_store, name)
    if newest is not None and newest.get("content_hash") == content_hash:
        return Published(newest, False)
    known = versions(blob_store, name)
    version = f"v{int(known[-1][1:]) + 1 if known else 1}"
    prefix = snapshot_prefix(name, version)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        files[rel] = _sha256(path)
        blob_store.put_file(f"{prefix}/{rel}", path)
    manifest = {
        "name": name,
        "version": version,
        "content_hash": content_hash,
        "created_at": utcnow().isoformat(),
        **facts,
        "files": files,
    }
    blob_store.put_bytes(f"{prefix}/manifest.json", json.dumps(manifest, indent=1).encode())
    return Published(manifest, True)


def download(blob_store: BlobStore, manifest: dict[str, Any], dest: Path) -> Path:
    """Copy a snapshot's files to ``dest``, checking each against its manifest hash."""
    prefix = snapshot_prefix(manifest["name"], manifest["version"])
    for rel, digest in manifest["files"].items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        blob_store.download(f"{prefix}/{rel}", target)
        if _sha256(target) != digest:
            raise InputError(
                f"file {rel} of dataset {manifest['name']} {manifest['version']} does not match "
                f"its manifest; the snapshot was altered, so build a new version."
            )
    return dest


def _sha256(path: Path) -> str:
    from ml_models.datasets import sha256_file

    return sha256_file(path)


def lineage(
    registry: ModelRegistry, blob_store: BlobStore, catalog: Catalog, name: str, version: str
) -> dict[str, Any]:
    """Model version -> dataset version -> the annotations it holds and who made them.

    Returns:
        ``model``, ``version``, ``status``, ``dataset`` (name, version, content hash, split
        sizes), ``annotation_ids`` and ``authors`` (name -> number of annotations, by source).
    """
    row = next((v for v in registry.versions(name) if v.version == version), None)
    if row is None:
        raise InputError(
            f"model {name} has no version {version}; list them with `surg models list`."
        )
    out: dict[str, Any] = {
        "model": name,
        "version": version,
        "status": row.status,
        "decided_by": row.decided_by,
        "dataset_version": row.dataset_version,
    }
    dataset_name, _, dataset_version = (row.dataset_version or "").partition(":")
    if not dataset_version or not dataset_version[1:].isdigit():
        out.update(dataset=None, annotation_ids=[], authors={})
        return out  # trained outside the dataset assets (defaults, `surg train`)
    manifest = read_manifest(blob_store, dataset_name, dataset_version)
    ids = manifest.get("annotation_ids", [])
    authors: dict[str, dict[str, int]] = {}
    with catalog.session() as s:
        for chunk in range(0, len(ids), 500):
            for author, source in s.execute(
                select(Annotation.author, Annotation.source).where(
                    Annotation.id.in_(ids[chunk : chunk + 500])
                )
            ):
                by_source = authors.setdefault(author, {})
                by_source[source] = by_source.get(source, 0) + 1
    out.update(
        dataset={
            "name": dataset_name,
            "version": dataset_version,
            "content_hash": manifest["content_hash"],
            "split_sizes": manifest.get("split_sizes", {}),
            "files": len(manifest["files"]),
        },
        annotation_ids=ids,
        authors=authors,
    )
    return out
