"""Bringing a video into the platform: one path for the CLI, the sensor and (later) uploads.

The original file name never travels past this module: the case id is generated, the stored key
is ``raw-videos/{case_id}/source.{ext}`` with the extension taken from the probed container, and
messages name the input by position or by case id only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ml_models.errors import InputError, VideoValidationError
from ml_models.video import VideoLimits, VideoProbe, check_limits, probe_video
from resources.blob_store import BlobInfo, BlobStore
from resources.catalog import Catalog
from resources.uploads import VIDEO_EXTENSIONS

RAW_PREFIX = "raw-videos/"
CASE_ID_RE = re.compile(r"^c[0-9a-f]{16}$")
_RAW_KEY_RE = re.compile(r"^raw-videos/(c[0-9a-f]{16})/source\.([a-z0-9]{1,5})$")


def raw_key(case_id: str, extension: str) -> str:
    """The blob key of a case's raw upload."""
    return f"{RAW_PREFIX}{case_id}/source.{extension}"


def case_of_raw_key(key: str) -> str | None:
    """The case id of a conforming raw-video key, else ``None``."""
    m = _RAW_KEY_RE.match(key)
    return m.group(1) if m else None


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks (memory flat in file size)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 * 1024 * 1024):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class IngestOutcome:
    """Result of ingesting one file."""

    case_id: str
    key: str
    created: bool
    probe: VideoProbe


def ingest_file(
    path: str | Path,
    blob_store: BlobStore,
    catalog: Catalog,
    limits: VideoLimits,
    label: str = "the input",
    status: str = "queued",
) -> IngestOutcome:
    """Validate a local video and store it as a case's raw video.

    Validation happens before anything is stored, so a refused file leaves no case and no object.
    The same bytes ingested twice map to the same case.

    Args:
        path: The local file (its name is never stored or logged).
        blob_store: Where the raw video goes.
        catalog: Where the case is recorded.
        limits: Accepted video limits.
        label: How messages refer to this input ("input 1 of 3").
        status: Status of a newly created case (``queued`` for the sensor, ``analysing`` when
            the caller processes it right away).

    Raises:
        InputError: the path is missing or the file is not an acceptable video.
    """
    p = Path(path)
    try:
        if not p.exists():
            raise InputError(f"{label} does not exist; check the path.")
        if not p.is_file():
            raise InputError(f"{label} is not a regular file; give the path of a video file.")
    except OSError:  # e.g. a name longer than the filesystem allows
        raise InputError(f"{label} cannot be opened (invalid path); check the path.") from None
    try:
        probe = probe_video(p)
        check_limits(probe, limits)
    except VideoValidationError as exc:
        raise VideoValidationError(f"{label}: {exc}") from None
    digest = sha256_of(p)
    case, created = catalog.create_case(
        sha256=digest,
        status=status,
        size_bytes=p.stat().st_size,
        duration_s=probe.duration_s,
        width=probe.width,
        height=probe.height,
        fps=probe.fps,
    )
    key = raw_key(case.id, probe.extension)
    if created or not blob_store.exists(key):
        blob_store.put_file(key, p, metadata={"case-id": case.id, "sha256": digest})
        catalog.update_case(case.id, source_key=key)
    return IngestOutcome(case_id=case.id, key=key, created=created, probe=probe)


def adopt_stray(blob_store: BlobStore, catalog: Catalog, info: BlobInfo) -> str | None:
    """Give a file dropped anywhere under ``raw-videos/`` a case and its canonical key.

    Someone copying ``Patient Name 2024-01-01.mp4`` into the lake must not leave that name in a
    key, so the object is moved to ``raw-videos/{new_case_id}/source.{ext}``.

    Returns:
        The case id, or ``None`` when the same bytes already belong to a case (the stray copy
        is then removed).
    """
    suffix = info.key.rsplit(".", 1)[-1].lower() if "." in info.key.rsplit("/", 1)[-1] else ""
    # Anything not a known video extension is stored as .bin and refused by raw_video.
    ext = VIDEO_EXTENSIONS.get(suffix, "bin")
    with blob_store.local_copy(info.key) as local:
        digest = sha256_of(local)
    case, created = catalog.create_case(sha256=digest, status="queued", size_bytes=info.size)
    if not created and case.source_key and blob_store.exists(case.source_key):
        blob_store.delete(info.key)
        return None
    key = raw_key(case.id, ext)
    blob_store.move(info.key, key)
    blob_store.set_metadata(key, {"case-id": case.id, "sha256": digest})
    catalog.update_case(case.id, source_key=key)
    return case.id


def find_raw_key(blob_store: BlobStore, case_id: str) -> str | None:
    """The raw-video key of a case, if one is stored."""
    for info in blob_store.list_prefix(f"{RAW_PREFIX}{case_id}/"):
        if case_of_raw_key(info.key) == case_id:
            return info.key
    return None
