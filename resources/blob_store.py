"""Where videos and results live: a local folder or an S3 bucket, with the same keys.

Keys follow DESIGN.md section 3 (``raw-videos/{case_id}/source.{ext}`` ...). Every write is
atomic: a reader sees the old object, or the whole new one, never part of it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from ml_models.errors import InputError

# Keys the platform builds are plain ASCII; files people drop into the lake may carry any
# printable name, which must still be listable and movable, so only what could escape the root or
# confuse a filesystem is refused.
_KEY_RE = re.compile(r"^[^\x00-\x1f\x7f\\/][^\x00-\x1f\x7f\\]*$")
_TMP_PREFIX = ".tmp-"
_META_DIR = ".meta"


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise.

    Keys are built by the platform, never from user-supplied names, but we still refuse anything
    that could escape the store's root (``..``, absolute paths, backslashes).
    """
    if (
        not key
        or not _KEY_RE.match(key)
        or ".." in key.split("/")
        or "//" in key
        or key.endswith("/")
        or any(part.startswith(_TMP_PREFIX) or part == _META_DIR for part in key.split("/"))
    ):
        # The key itself is not echoed: a dropped file's name may identify a patient.
        raise InputError("an object key is not valid (empty, absolute, or escaping the store).")
    return key


@dataclass(frozen=True)
class BlobInfo:
    """One stored object."""

    key: str
    size: int
    last_modified: float  # seconds since the epoch
    metadata: dict[str, str]


def encode_cursor(last_modified: float, key: str) -> str:
    """A listing cursor: the (last_modified, key) of the newest object already seen."""
    return json.dumps([round(last_modified, 6), key])


def decode_cursor(cursor: str | None) -> tuple[float, str] | None:
    """Inverse of :func:`encode_cursor`; ``None`` for no cursor."""
    if not cursor:
        return None
    value = json.loads(cursor)
    return float(value[0]), str(value[1])


def _after(info: BlobInfo, cursor: tuple[float, str] | None) -> bool:
    if cursor is None:
        return True
    return (round(info.last_modified, 6), info.key) > (cursor[0], cursor[1])


class BlobStore(dg.ConfigurableResource, ABC):
    """The object store: a local folder or an S3 bucket, same keys, same guarantees."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Store a local file under ``key`` atomically."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Store bytes under ``key`` atomically."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole object (small objects only: JSON, parquet)."""

    @abstractmethod
    def download(self, key: str, path: str | Path) -> None:
        """Copy an object to a local file."""

    @abstractmethod
    def head(self, key: str) -> BlobInfo | None:
        """The object's size, time and metadata, or ``None`` if absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object (no error if it is absent)."""

    @abstractmethod
    def list_prefix(self, prefix: str) -> list[BlobInfo]:
        """Every object under ``prefix``, sorted by key."""

    @abstractmethod
    def set_metadata(self, key: str, metadata: dict[str, str]) -> None:
        """Merge ``metadata`` into an existing object's metadata."""

    @abstractmethod
    def presigned_url(self, key: str, method: str = "GET", expires_s: int = 900) -> str:
        """A time-limited URL that grants ``method`` on ``key`` without other credentials."""

    def exists(self, key: str) -> bool:
        """True if an object is stored under ``key``."""
        return self.head(key) is not None

    def list_after(self, prefix: str, cursor: str | None) -> tuple[list[BlobInfo], str | None]:
        """Objects under ``prefix`` newer than ``cursor``, oldest first, and the next cursor.

        The cursor orders by (last_modified, key), so two objects written in the same second
        are both seen exactly once.
        """
        seen = decode_cursor(cursor)
        fresh = sorted(
            (i for i in self.list_prefix(prefix) if _after(i, seen)),
            key=lambda i: (round(i.last_modified, 6), i.key),
        )
        if not fresh:
            return [], cursor
        last = fresh[-1]
        return fresh, encode_cursor(last.last_modified, last.key)

    def move(self, src: str, dst: str) -> None:
        """Rename an object (copy then delete; the destination appears atomically)."""
        with self.local_copy(src) as path:
            info = self.head(src)
            self.put_file(dst, path, metadata=info.metadata if info else None)
        self.delete(src)

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A local file with the object's content, for libraries that need a path (PyAV)."""
        suffix = Path(key).suffix
        with tempfile.TemporaryDirectory(prefix="surg-blob-") as tmp:
            path = Path(tmp) / f"object{suffix}"
            self.download(key, path)
            yield path


class LocalBlobStore(BlobStore):
    """Objects as files under ``root``; metadata in a sidecar tree ``root/.meta``.

    Writes go to a hidden temporary file in the destination folder and are renamed into place,
    which is atomic on POSIX filesystems. Presigned URLs point at ``public_base_url`` (the web
    app) and carry an HMAC signature and an expiry that :meth:`verify_presigned` checks.
    """

    root: str
    public_base_url: str = "http://127.0.0.1:8000"
    secret_key_file: str = ""

    _secret: bytes | None = PrivateAttr(default=None)

    def _path(self, key: str) -> Path:
        return Path(self.root) / check_key(key)

    def _meta_path(self, key: str) -> Path:
        return Path(self.root) / _META_DIR / f"{check_key(key)}.json"

    def _write_atomic(self, target: Path, writer: Any) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _write_meta(self, key: str, metadata: dict[str, str] | None) -> None:
        meta_path = self._meta_path(key)
        if metadata:
            payload = json.dumps(metadata, sort_keys=True).encode()
            self._write_atomic(meta_path, lambda fh: fh.write(payload))
        else:
            with contextlib.suppress(FileNotFoundError):
                meta_path.unlink()

    def put_file(self, key: str, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Copy a local file in, atomically."""
        src = Path(path)

        def copy(fh: Any) -> None:
            with open(src, "rb") as s:
                shutil.copyfileobj(s, fh, length=8 * 1024 * 1024)

        self._write_meta(key, metadata)
        self._write_atomic(self._path(key), copy)

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Write bytes, atomically."""
        self._write_meta(key, metadata)
        self._write_atomic(self._path(key), lambda fh: fh.write(data))

    def get_bytes(self, key: str) -> bytes:
        """Read a whole object."""
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no object {key}")
        return path.read_bytes()

    def download(self, key: str, path: str | Path) -> None:
        """Copy an object to ``path``."""
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"no object {key}")
        shutil.copyfile(src, path)

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """The object's own file: no copy is needed on local disk."""
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no object {key}")
        yield path

    def head(self, key: str) -> BlobInfo | None:
        """Size, modification time and metadata of an object."""
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        return BlobInfo(
            key=key, size=st.st_size, last_modified=st.st_mtime, metadata=self._meta(key)
        )

    def _meta(self, key: str) -> dict[str, str]:
        try:
            return json.loads(self._meta_path(key).read_text())
        except FileNotFoundError:
            return {}

    def delete(self, key: str) -> None:
        """Remove an object and its metadata."""
        for p in (self._path(key), self._meta_path(key)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def list_prefix(self, prefix: str) -> list[BlobInfo]:
        """Objects under ``prefix`` (temporary files and metadata sidecars excluded)."""
        root = Path(self.root)
        base = root / prefix.rstrip("/") if prefix else root
        folder = base if base.is_dir() else base.parent
        if not folder.exists():
            return []
        out: list[BlobInfo] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != _META_DIR and not d.startswith(_TMP_PREFIX)]
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(root).as_posix()
                if not key.startswith(prefix) or key.startswith(_META_DIR + "/"):
                    continue
                try:
                    st = full.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                out.append(BlobInfo(key, st.st_size, st.st_mtime, {}))
        return sorted(out, key=lambda i: i.key)

    def set_metadata(self, key: str, metadata: dict[str, str]) -> None:
        """Merge metadata into the sidecar."""
        if not self._path(key).is_file():
            raise FileNotFoundError(f"no object {key}")
        merged = {**self._meta(key), **metadata}
        self._write_meta(key, merged)

    def _key_bytes(self) -> bytes:
        if self._secret is None:
            path = Path(self.secret_key_file or Path(self.root).parent / "secret.key")
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32))
            self._secret = bytes.fromhex(path.read_text().strip())
        return self._secret

    def _signature(self, key: str, method: str, expires: int) -> str:
        msg = f"{method.upper()}\n{key}\n{expires}".encode()
        digest = hmac.new(self._key_bytes(), msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def presigned_url(self, key: str, method: str = "GET", expires_s: int = 900) -> str:
        """A URL of the web app's blob endpoint, signed with HMAC-SHA256 and an expiry."""
        check_key(key)
        expires = int(time.time()) + int(expires_s)
        sig = self._signature(key, method, expires)
        base = self.public_base_url.rstrip("/")
        return f"{base}/blob/{key}?method={method.upper()}&expires={expires}&signature={sig}"

    def verify_presigned(self, key: str, method: str, expires: int, signature: str) -> bool:
        """True if the signature is ours for this key and method and has not expired."""
        if int(expires) < time.time():
            return False
        expected = self._signature(key, method, int(expires))
        return hmac.compare_digest(expected, signature)


class S3BlobStore(BlobStore):
    """Objects in an S3 bucket (AWS, MinIO, or any S3 API), under an optional prefix.

    Uploads use boto3's managed transfer, which switches to multipart above
    ``multipart_threshold_mb``. A single PUT and a completed multipart upload are both atomic in
    S3, so readers never see partial objects. With ``kms_key_id`` every write asks for SSE-KMS.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region_name: str | None = None
    kms_key_id: str | None = None
    multipart_threshold_mb: int = 64
    multipart_chunk_mb: int = 16

    _client: Any = PrivateAttr(default=None)

    def _s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url or None,
                region_name=self.region_name or None,
                config=Config(signature_version="s3v4", retries={"max_attempts": 5}),
            )
        return self._client

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def _strip(self, full: str) -> str:
        p = self.prefix.strip("/")
        return full[len(p) + 1 :] if p else full

    def _sse(self) -> dict[str, str]:
        if not self.kms_key_id:
            return {}
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold_mb * 1024 * 1024,
            multipart_chunksize=self.multipart_chunk_mb * 1024 * 1024,
        )

    def put_file(self, key: str, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Upload a file (multipart above the threshold)."""
        extra: dict[str, Any] = {**self._sse()}
        if metadata:
            extra["Metadata"] = metadata
        self._s3().upload_file(
            str(path), self.bucket, self._full(key), ExtraArgs=extra, Config=self._transfer_config()
        )

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """PUT a small object."""
        self._s3().put_object(
            Bucket=self.bucket,
            Key=self._full(key),
            Body=data,
            Metadata=metadata or {},
            **self._sse(),
        )

    def get_bytes(self, key: str) -> bytes:
        """GET a whole object."""
        try:
            obj = self._s3().get_object(Bucket=self.bucket, Key=self._full(key))
        except self._s3().exceptions.NoSuchKey:
            raise FileNotFoundError(f"no object {key}") from None
        return obj["Body"].read()

    def download(self, key: str, path: str | Path) -> None:
        """Download (ranged, in parallel, for large objects)."""
        if self.head(key) is None:
            raise FileNotFoundError(f"no object {key}")
        self._s3().download_file(
            self.bucket, self._full(key), str(path), Config=self._transfer_config()
        )

    def head(self, key: str) -> BlobInfo | None:
        """HEAD the object."""
        from botocore.exceptions import ClientError

        try:
            r = self._s3().head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return BlobInfo(
            key=key,
            size=int(r["ContentLength"]),
            last_modified=r["LastModified"].timestamp(),
            metadata=dict(r.get("Metadata") or {}),
        )

    def delete(self, key: str) -> None:
        """DELETE the object."""
        self._s3().delete_object(Bucket=self.bucket, Key=self._full(key))

    def list_prefix(self, prefix: str) -> list[BlobInfo]:
        """List with ``list_objects_v2`` pages."""
        out: list[BlobInfo] = []
        if ".." in prefix.split("/"):
            raise InputError(f"listing prefix {prefix!r} is not a valid store prefix.")
        base = self.prefix.strip("/")
        full_prefix = f"{base}/{prefix}" if base else prefix
        paginator = self._s3().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for obj in page.get("Contents", []):
                last: dt.datetime = obj["LastModified"]
                out.append(
                    BlobInfo(self._strip(obj["Key"]), int(obj["Size"]), last.timestamp(), {})
                )
        return sorted(out, key=lambda i: i.key)

    def set_metadata(self, key: str, metadata: dict[str, str]) -> None:
        """Rewrite the object's metadata with a server-side self-copy (S3 metadata is immutable)."""
        info = self.head(key)
        if info is None:
            raise FileNotFoundError(f"no object {key}")
        full = self._full(key)
        self._s3().copy_object(
            Bucket=self.bucket,
            Key=full,
            CopySource={"Bucket": self.bucket, "Key": full},
            Metadata={**info.metadata, **metadata},
            MetadataDirective="REPLACE",
            **self._sse(),
        )

    def move(self, src: str, dst: str) -> None:
        """Server-side copy then delete."""
        self._s3().copy(
            {"Bucket": self.bucket, "Key": self._full(src)},
            self.bucket,
            self._full(dst),
            ExtraArgs={**self._sse()},
            Config=self._transfer_config(),
        )
        self.delete(src)

    def presigned_url(self, key: str, method: str = "GET", expires_s: int = 900) -> str:
        """An S3 presigned URL for ``get_object`` or ``put_object``."""
        operation = {"GET": "get_object", "PUT": "put_object"}[method.upper()]
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if method.upper() == "PUT":
            params.update(self._sse())
        return self._s3().generate_presigned_url(operation, Params=params, ExpiresIn=expires_s)
