"""Resumable multipart uploads of surgical videos over the blob store.

One protocol for both stores (the seed's design):

1. ``create`` makes the case (status ``uploading``) and the upload, and fixes the part size.
2. The client PUTs parts, in parallel, to signed URLs and keeps each part's ETag: S3 presigned
   ``upload_part`` URLs in production; in local mode URLs of our own web app (``/blob/...``)
   signed with the local store's HMAC key and an expiry.
3. ``status`` lists the parts received, so a client resumes after a dropped connection or a page
   reload without sending them again.
4. ``complete`` checks every part (number, size, ETag) and the whole file's sha256 when given,
   then places the video at ``raw-videos/{case_id}/source.{ext}`` in one atomic step and moves the
   case to ``queued``; the new-video sensor takes it from there. ``abort`` removes everything.

Parts never live under ``raw-videos/`` (the sensor watches it): local parts sit under
``uploads-staging/{upload_id}/``, and an S3 multipart upload targets a staging key that is
copied into place only after verification. The client's file name is used for its extension
only and is never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from sqlalchemy import delete, update

from ml_models.errors import InputError
from resources.blob_store import BlobStore, LocalBlobStore, S3BlobStore
from resources.catalog import Case, CaseShare, Catalog, Upload, utcnow

MiB = 1024 * 1024
STAGING_PREFIX = "uploads-staging/"
S3_MIN_PART = 5 * MiB  # S3 refuses smaller parts (all but the last)
MAX_PARTS = 10_000  # S3's limit on parts per upload
# Extensions accepted from a client's or a dropped file's name, mapped to the stored extension
# (raw-videos/{case_id}/source.{ext}, DESIGN.md section 3); also used by surg_assets.intake.
VIDEO_EXTENSIONS = {
    "mp4": "mp4",
    "m4v": "mp4",
    "mov": "mp4",
    "mkv": "mkv",
    "webm": "webm",
    "avi": "avi",
    "ts": "ts",
    "mts": "ts",
    "mpg": "mpg",
    "mpeg": "mpg",
}
_CONTENT_TYPE_RE = re.compile(r"^(video/[a-z0-9.+-]{1,64}|application/octet-stream|)$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PART_KEY_RE = re.compile(r"^uploads-staging/(u[0-9a-f]{24})/part-(\d{5})$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def raw_key(case_id: str, extension: str) -> str:
    """The blob key of a case's raw video (same layout as ``surg_assets.intake.raw_key``)."""
    return f"raw-videos/{case_id}/source.{extension}"


def extension_of(name: str) -> str:
    """The stored extension for a client's file name, validated; the name itself is dropped.

    Raises:
        InputError: the name is empty, too long, has control characters or path separators, or
            its extension is not a supported video container. The message never repeats the name.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError("the upload's file name is empty; send the video's file name.")
    if len(name) > 255 or _CONTROL_RE.search(name) or "/" in name or "\\" in name:
        raise InputError(
            "the upload's file name is not acceptable (over 255 characters, a path, or control "
            "characters); send the plain file name."
        )
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    ext = VIDEO_EXTENSIONS.get(suffix)
    if ext is None:
        kinds = ", ".join(sorted(VIDEO_EXTENSIONS))
        raise InputError(f"the uploaded file is not a supported video type; send one of: {kinds}.")
    return ext


def _quoted(etag: str) -> str:
    return '"' + etag.strip().strip('"') + '"'


def _unquoted(etag: str | None) -> str:
    return (etag or "").strip().strip('"')


@dataclass(frozen=True)
class PartInfo:
    """A part the store holds."""

    part_number: int
    size: int
    etag: str  # quoted, as S3 and our local endpoint send it

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"part_number": self.part_number, "size": self.size, "etag": self.etag}


@dataclass(frozen=True)
class UploadState:
    """An upload as the API reports it."""

    upload_id: str
    case_id: str
    status: str
    size: int
    part_size: int
    part_count: int
    parts: list[PartInfo]

    @property
    def missing(self) -> list[int]:
        """Part numbers not received yet."""
        have = {p.part_number for p in self.parts}
        return [n for n in range(1, self.part_count + 1) if n not in have]


@dataclass
class UploadService:
    """Resumable multipart uploads into ``raw-videos/`` (see the module docstring).

    Attributes:
        blob_store: The lake (local or S3).
        catalog: Where cases and uploads are recorded.
        part_size: Preferred part size in bytes (raised for huge files to stay within 10,000
            parts; at least 5 MiB on S3).
        max_size: Largest accepted upload in bytes.
        url_ttl_s: Lifetime of a signed part URL; a resuming client asks for fresh ones.
    """

    blob_store: BlobStore
    catalog: Catalog
    part_size: int = 8 * MiB
    max_size: int = 50 * 1024 * MiB
    url_ttl_s: int = 3600

    @property
    def is_s3(self) -> bool:
        """True when parts go straight to S3."""
        return isinstance(self.blob_store, S3BlobStore)

    # -- helpers ----------------------------------------------------------------------------

    def _s3(self) -> Any:
        # The S3 client and key mapping of the store itself, so prefix, endpoint and SSE-KMS
        # settings are the store's, not a second copy of them.
        assert isinstance(self.blob_store, S3BlobStore)
        return self.blob_store._s3()

    def _s3_key(self, key: str) -> str:
        assert isinstance(self.blob_store, S3BlobStore)
        return self.blob_store._full(key)

    @staticmethod
    def staging_key(upload_id: str) -> str:
        """Where an S3 multipart upload assembles before verification."""
        return f"{STAGING_PREFIX}{upload_id}/object"

    @staticmethod
    def part_key(upload_id: str, part_number: int) -> str:
        """Where a local part is kept."""
        return f"{STAGING_PREFIX}{upload_id}/part-{part_number:05d}"

    @staticmethod
    def parse_part_key(key: str) -> tuple[str, int] | None:
        """(upload id, part number) of a local part key, else None."""
        m = _PART_KEY_RE.match(key)
        return (m.group(1), int(m.group(2))) if m else None

    @property
    def min_part_size(self) -> int:
        """The smallest part (but the last) the store accepts."""
        return S3_MIN_PART if self.is_s3 else 64 * 1024

    def _choose_part_size(self, size: int) -> int:
        """The part size for a file of ``size`` bytes (the preferred one, raised if needed)."""
        floor = max(self.min_part_size, self.part_size)
        needed = math.ceil(size / MAX_PARTS)
        if needed > floor:
            floor = math.ceil(needed / MiB) * MiB
        return floor

    @staticmethod
    def part_count(upload: Upload) -> int:
        """How many parts the upload is cut into."""
        return max(1, math.ceil(upload.size_bytes / upload.part_size))

    @staticmethod
    def expected_part_size(upload: Upload, part_number: int) -> int:
        """Exact size of part ``part_number`` (all full but the last)."""
        count = UploadService.part_count(upload)
        if part_number < count:
            return upload.part_size
        return upload.size_bytes - upload.part_size * (count - 1)

    def get(self, upload_id: str) -> Upload | None:
        """The upload row, or None."""
        if not isinstance(upload_id, str) or len(upload_id) > 64:
            return None
        with self.catalog.session() as s:
            return s.get(Upload, upload_id)

    def _open(self, upload_id: str) -> Upload:
        upload = self.get(upload_id)
        if upload is None:
            raise LookupError(upload_id)
        if upload.status != "open":
            raise InputError(f"upload {upload_id} is {upload.status}, not open; start a new one.")
        return upload

    def _check_part_number(self, upload: Upload, part_number: int) -> None:
        count = self.part_count(upload)
        if not isinstance(part_number, int) or not 1 <= part_number <= count:
            raise InputError(
                f"part number {part_number} is out of range; this upload has parts 1 to {count}."
            )

    # -- the protocol -------------------------------------------------------------------------

    def create(
        self,
        name: str,
        size: int,
        content_type: str | None,
        owner: str,
        sha256: str | None = None,
        procedure: str | None = None,
        part_size: int | None = None,
    ) -> Upload:
        """Validate the request, create the case (``uploading``) and the upload.

        Args:
            name: The client's file name; only its extension is used, nothing is stored.
            size: Total bytes.
            content_type: The browser's MIME type (``video/*``, ``application/octet-stream``).
            owner: The user who uploads (the case's owner).
            sha256: The whole file's sha256, when the client knows it in advance.
            procedure: Procedure kind of the case (default of the catalog when None).
            part_size: The part size the client will cut the file into (uploaders such as
                Uppy fix it before the upload exists); must be at least the store's minimum
                and keep the file within 10,000 parts. The service chooses when None.

        Raises:
            InputError: anything wrong with the request (one sentence, no file name).
        """
        ext = extension_of(name)
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InputError("the upload's size must be a positive number of bytes.")
        if size > self.max_size:
            limit_gb = self.max_size / (1024 * MiB)
            raise InputError(f"the upload is larger than the limit of {limit_gb:g} GiB.")
        if not _CONTENT_TYPE_RE.match((content_type or "").lower()):
            raise InputError("the upload's type is not a video; send a video file.")
        if sha256 is not None and not _SHA256_RE.match(sha256):
            raise InputError("sha256 must be 64 lower-case hexadecimal digits.")
        chosen = self._choose_part_size(size)
        if part_size is not None:
            floor = self.min_part_size
            if isinstance(part_size, bool) or not isinstance(part_size, int):
                raise InputError("part_size must be a whole number of bytes.")
            if part_size < floor and part_size < size:
                raise InputError(f"part_size must be at least {floor} bytes.")
            if part_size > 5 * 1024 * MiB or math.ceil(size / part_size) > MAX_PARTS:
                raise InputError(
                    f"part_size must be at most 5 GiB and cut the file into at most {MAX_PARTS} "
                    "parts."
                )
            chosen = part_size
        fields: dict[str, Any] = {"owner": owner, "size_bytes": size}
        if procedure:
            fields["procedure"] = procedure[:64]
        case, _ = self.catalog.create_case(status="uploading", **fields)
        upload_id = "u" + secrets.token_hex(12)
        upload = Upload(
            id=upload_id,
            case_id=case.id,
            size_bytes=size,
            content_type=(content_type or None),
            part_size=chosen,
            status="open",
            sha256=sha256,
            created_by=owner,
            target_key=raw_key(case.id, ext),
        )
        if self.is_s3:
            extra = self.blob_store._sse()  # type: ignore[attr-defined]
            r = self._s3().create_multipart_upload(
                Bucket=self.blob_store.bucket,  # type: ignore[attr-defined]
                Key=self._s3_key(self.staging_key(upload_id)),
                ContentType="application/octet-stream",
                **extra,
            )
            upload.backend_upload_id = r["UploadId"]
        with self.catalog.session() as s:
            s.add(upload)
        return upload

    def part_url(self, upload_id: str, part_number: int, base_url: str) -> tuple[str, int]:
        """A signed URL to PUT one part, and its expiry (seconds since the epoch).

        Args:
            upload_id: The upload.
            part_number: 1-based part number.
            base_url: The web app's own origin, for local-mode URLs (the address the client
                used, so the URL works behind any host name or port).
        """
        upload = self._open(upload_id)
        self._check_part_number(upload, part_number)
        expires = int(utcnow().timestamp()) + self.url_ttl_s
        if self.is_s3:
            url = self._s3().generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": self.blob_store.bucket,  # type: ignore[attr-defined]
                    "Key": self._s3_key(self.staging_key(upload_id)),
                    "UploadId": upload.backend_upload_id,
                    "PartNumber": part_number,
                },
                ExpiresIn=self.url_ttl_s,
            )
            return url, expires
        key = self.part_key(upload_id, part_number)
        signed = urlsplit(self.blob_store.presigned_url(key, "PUT", self.url_ttl_s))
        query = parse_qs(signed.query)
        expires = int(query["expires"][0])
        url = (
            f"{base_url.rstrip('/')}/blob/{quote(key)}?method=PUT&expires={expires}"
            f"&signature={query['signature'][0]}"
        )
        return url, expires

    def verify_part_signature(self, key: str, expires: str, signature: str) -> bool:
        """True if a local part URL's signature is valid and unexpired."""
        if not isinstance(self.blob_store, LocalBlobStore) or self.parse_part_key(key) is None:
            return False
        try:
            return self.blob_store.verify_presigned(key, "PUT", int(expires), signature)
        except (TypeError, ValueError):
            return False

    def receive_part(self, key: str, chunks: Iterable[bytes]) -> PartInfo:
        """Store one part sent to our own URL (local mode); returns it with its ETag.

        The body is streamed to a temporary file and refused as soon as it exceeds the part's
        exact size; a part with the wrong size is refused too, so a resumed upload never
        assembles a wrong byte count.

        Raises:
            LookupError: no such upload.
            InputError: the upload is not open, or the part has the wrong size.
        """
        parsed = self.parse_part_key(key)
        if parsed is None:
            raise LookupError(key)
        upload_id, part_number = parsed
        upload = self._open(upload_id)
        self._check_part_number(upload, part_number)
        expected = self.expected_part_size(upload, part_number)
        md5 = hashlib.md5(usedforsecurity=False)  # S3's ETag of a part is its MD5
        received = 0
        with tempfile.TemporaryDirectory(prefix="surg-part-") as tmp:
            path = Path(tmp) / "part"
            with open(path, "wb") as fh:
                for chunk in chunks:
                    received += len(chunk)
                    if received > expected:
                        raise InputError(
                            f"part {part_number} is larger than its {expected} bytes; "
                            "send exactly the part's bytes."
                        )
                    md5.update(chunk)
                    fh.write(chunk)
            if received != expected:
                raise InputError(
                    f"part {part_number} has {received} bytes, not {expected}; send it again."
                )
            etag = _quoted(md5.hexdigest())
            self.blob_store.put_file(key, path, metadata={"etag": etag, "size": str(received)})
        return PartInfo(part_number, received, etag)

    def _parts(self, upload: Upload) -> list[PartInfo]:
        if self.is_s3:
            out: list[PartInfo] = []
            paginator = self._s3().get_paginator("list_parts")
            pages = paginator.paginate(
                Bucket=self.blob_store.bucket,  # type: ignore[attr-defined]
                Key=self._s3_key(self.staging_key(upload.id)),
                UploadId=upload.backend_upload_id,
            )
            for page in pages:
                for p in page.get("Parts", []):
                    out.append(PartInfo(int(p["PartNumber"]), int(p["Size"]), _quoted(p["ETag"])))
            return sorted(out, key=lambda p: p.part_number)
        parts = []
        for info in self.blob_store.list_prefix(f"{STAGING_PREFIX}{upload.id}/"):
            parsed = self.parse_part_key(info.key)
            if parsed is None:
                continue
            meta = self.blob_store.head(info.key)
            etag = (meta.metadata.get("etag") if meta else None) or ""
            parts.append(PartInfo(parsed[1], info.size, etag))
        return parts

    def state(self, upload_id: str) -> UploadState:
        """The upload and the parts the store holds (for a resuming client).

        Raises:
            LookupError: no such upload.
        """
        upload = self.get(upload_id)
        if upload is None:
            raise LookupError(upload_id)
        parts = self._parts(upload) if upload.status == "open" else []
        return UploadState(
            upload.id,
            upload.case_id,
            upload.status,
            upload.size_bytes,
            upload.part_size,
            self.part_count(upload),
            parts,
        )

    def complete(
        self, upload_id: str, parts: list[dict[str, Any]], sha256: str | None = None
    ) -> Case:
        """Verify the parts and place the video; the case becomes ``queued``.

        Args:
            upload_id: The upload.
            parts: ``[{"part_number": n, "etag": "..."}]`` for every part, as the client kept
                them from the PUT responses.
            sha256: The whole file's sha256 (overrides one given at creation).

        Raises:
            LookupError: no such upload.
            InputError: a part is missing, repeated, of the wrong size or with a different
                ETag; the upload is not open (e.g. a second complete); the sha256 differs.
        """
        upload = self.get(upload_id)
        if upload is None:
            raise LookupError(upload_id)
        if sha256 is not None and not _SHA256_RE.match(sha256):
            raise InputError("sha256 must be 64 lower-case hexadecimal digits.")
        want_sha = sha256 or upload.sha256
        # Claim the upload first: of two concurrent complete calls exactly one proceeds.
        with self.catalog.session() as s:
            claimed = s.execute(
                update(Upload)
                .where(Upload.id == upload_id, Upload.status == "open")
                .values(status="completing")
            ).rowcount
        if claimed != 1:
            raise UploadConflict(
                f"upload {upload_id} is not open (completed, aborted or completing); "
                "start a new upload."
            )
        try:
            self._check_client_parts(upload, parts)
        except BaseException:
            self._set_upload(upload_id, status="open")
            raise
        try:
            digest = self._assemble(upload, want_sha)
        except _ShaMismatch:
            raise
        except BaseException:
            self._set_upload(upload_id, status="open")
            raise
        return self._finish(upload, digest)

    def _check_client_parts(self, upload: Upload, parts: list[dict[str, Any]]) -> None:
        count = self.part_count(upload)
        if not isinstance(parts, list) or not parts:
            raise InputError("complete needs the list of parts with their ETags.")
        numbers = [p.get("part_number") if isinstance(p, dict) else None for p in parts]
        if len(set(numbers)) != len(numbers):
            raise InputError("a part number is repeated in the complete request; list each once.")
        stored = {p.part_number: p for p in self._parts(upload)}
        for entry in parts:
            n = entry.get("part_number") if isinstance(entry, dict) else None
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= count:
                raise InputError(f"part number {n!r} is out of range; parts are 1 to {count}.")
            have = stored.get(n)
            if have is None:
                raise InputError(f"part {n} was never received; send it before completing.")
            if _unquoted(entry.get("etag")) != _unquoted(have.etag):
                raise InputError(f"part {n}'s ETag differs from the stored part; send it again.")
            if have.size != self.expected_part_size(upload, n):
                raise InputError(f"part {n} has the wrong size; send it again.")
        missing = sorted(set(range(1, count + 1)) - set(numbers))
        if missing:
            shown = ", ".join(str(n) for n in missing[:10])
            raise InputError(f"parts {shown} are missing from the complete request.")

    def _assemble(self, upload: Upload, want_sha: str | None) -> str:
        """Put the whole file at the target key atomically; return its sha256.

        A file whose sha256 differs from ``want_sha`` never reaches ``raw-videos/``.
        """
        assert upload.target_key
        meta = {"case-id": upload.case_id}
        if self.is_s3:
            s3 = self._s3()
            bucket = self.blob_store.bucket  # type: ignore[attr-defined]
            staging = self.staging_key(upload.id)
            s3.complete_multipart_upload(
                Bucket=bucket,
                Key=self._s3_key(staging),
                UploadId=upload.backend_upload_id,
                MultipartUpload={
                    "Parts": [
                        {"PartNumber": p.part_number, "ETag": p.etag} for p in self._parts(upload)
                    ]
                },
            )
            # Hash by streaming the assembled object (memory stays flat in the file size).
            h = hashlib.sha256()
            body = s3.get_object(Bucket=bucket, Key=self._s3_key(staging))["Body"]
            for block in iter(lambda: body.read(8 * MiB), b""):
                h.update(block)
            digest = h.hexdigest()
            if want_sha and digest != want_sha:
                self.blob_store.delete(staging)
                self._fail(upload, "the uploaded bytes do not match the sha256 the client gave")
                raise _ShaMismatch()
            # A server-side copy: the raw key appears whole or not at all.
            self.blob_store.move(staging, upload.target_key)
            self.blob_store.set_metadata(upload.target_key, {**meta, "sha256": digest})
            return digest
        h = hashlib.sha256()
        with tempfile.TemporaryDirectory(prefix="surg-assemble-") as tmp:
            whole = Path(tmp) / "whole"
            with open(whole, "wb") as out:
                for n in range(1, self.part_count(upload) + 1):
                    key = self.part_key(upload.id, n)
                    with self.blob_store.local_copy(key) as part, open(part, "rb") as fh:
                        for block in iter(lambda fh=fh: fh.read(8 * MiB), b""):
                            h.update(block)
                            out.write(block)
            digest = h.hexdigest()
            if want_sha and digest != want_sha:
                self._fail(upload, "the uploaded bytes do not match the sha256 the client gave")
                raise _ShaMismatch()
            self.blob_store.put_file(upload.target_key, whole, metadata={**meta, "sha256": digest})
        self._drop_staging(upload)
        return digest

    def _finish(self, upload: Upload, digest: str) -> Case:
        with self.catalog.session() as s:
            row = s.get(Upload, upload.id)
            assert row is not None
            row.status, row.completed_at, row.sha256 = "completed", utcnow(), digest
            case = s.get(Case, upload.case_id)
            assert case is not None
            case.source_key = upload.target_key
            case.size_bytes = upload.size_bytes
            case.status = "queued"
            case.failure_reason = None
        # The content hash is unique in the catalog: the same video uploaded twice keeps its
        # hash on the first case only (the second still gets analysed as its own case).
        if self.catalog.case_by_sha256(digest) is None:
            with contextlib.suppress(Exception):
                self.catalog.update_case(upload.case_id, sha256=digest)
        return self.catalog.get_case(upload.case_id)  # type: ignore[return-value]

    def _fail(self, upload: Upload, reason: str) -> None:
        self._drop_staging(upload)
        self._set_upload(upload.id, status="failed")
        self.catalog.set_status(upload.case_id, "failed", reason)

    def _set_upload(self, upload_id: str, **fields: Any) -> None:
        with self.catalog.session() as s:
            s.execute(update(Upload).where(Upload.id == upload_id).values(**fields))

    def _drop_staging(self, upload: Upload) -> None:
        for info in self.blob_store.list_prefix(f"{STAGING_PREFIX}{upload.id}/"):
            self.blob_store.delete(info.key)

    def abort(self, upload_id: str) -> str:
        """Cancel an open upload: parts, upload and case are removed. Returns the case id.

        Raises:
            LookupError: no such upload.
            InputError: the upload is already completed.
        """
        upload = self.get(upload_id)
        if upload is None:
            raise LookupError(upload_id)
        if upload.status in ("completed", "completing"):
            raise InputError(f"upload {upload_id} is {upload.status}; it cannot be cancelled.")
        if self.is_s3 and upload.status == "open":
            from botocore.exceptions import ClientError

            with contextlib.suppress(ClientError):
                self._s3().abort_multipart_upload(
                    Bucket=self.blob_store.bucket,  # type: ignore[attr-defined]
                    Key=self._s3_key(self.staging_key(upload_id)),
                    UploadId=upload.backend_upload_id,
                )
        self._drop_staging(upload)
        with self.catalog.session() as s:
            s.execute(delete(Upload).where(Upload.id == upload_id))
            s.execute(delete(CaseShare).where(CaseShare.case_id == upload.case_id))
            s.execute(delete(Case).where(Case.id == upload.case_id, Case.status.in_(["uploading"])))
        return upload.case_id


class UploadConflict(InputError):
    """The upload is not in a state that allows this (e.g. a second complete)."""


class _ShaMismatch(InputError):
    def __init__(self) -> None:
        super().__init__(
            "the uploaded file's sha256 does not match the one given; upload it again."
        )
