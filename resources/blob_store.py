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
import io
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import dagster as dg
from pydantic import Field, PrivateAttr

from ml_models.errors import InputError
from resources.lake_crypto import (
    DEFAULT_CHUNK,
    HEADER_SIZE,
    MAGIC,
    BlobIntegrityError,
    EncryptedReader,
    encrypt_stream,
    load_or_create_key_file,
    parse_key,
    plaintext_length,
)

# Keys the platform builds are plain ASCII; files people drop into the lake may carry any
# printable name, which must still be listable and movable, so only what could escape the root or
# confuse a filesystem is refused.
_KEY_RE = re.compile(r"^[^\x00-\x1f\x7f\\/][^\x00-\x1f\x7f\\]*$")
_TMP_PREFIX = ".tmp-"
_META_DIR = ".meta"
# Where people and tools may drop unencrypted videos by hand (the new-video sensor adopts them).
DROP_PREFIX = "raw-videos/"
_CASE_ID_RE = re.compile(r"^c[0-9a-f]{16}$")
_BLOCK = 1024 * 1024
# Bytes per fetch of a ranged reader: one encryption chunk of the local lake; on S3, a ranged GET
# small enough that a chunk's edges and the index at the front cost little (BENCHMARKS.md).
RANGED_BLOCK = _BLOCK
# For readers that go through a whole object in order (a case's phase or event pass): fewer,
# larger requests, where each GET's round trip would otherwise add up over thousands of them.
SEQUENTIAL_BLOCK = 8 * _BLOCK


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


def _read_span(fh: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start..end`` (inclusive) of an open plain file, in blocks."""
    fh.seek(start)
    left = end - start + 1
    while left > 0:
        block = fh.read(min(_BLOCK, left))
        if not block:
            break
        left -= len(block)
        yield block


class RangedReader(io.RawIOBase):
    """A read-only, seekable file over an object, fetched by range a block at a time.

    PyAV reads a container through it (``av.open(reader)``) without the object ever being
    copied whole: a detection chunk of a long case fetches, decrypts and authenticates only the
    blocks its time range lies in, and the plaintext is never written to disk. The last few
    blocks are kept, because demuxers seek back a little (an index at the end, a packet that
    straddles two blocks).

    Args:
        fetch: ``fetch(start, end)`` returns the bytes ``start..end`` (inclusive).
        size: The object's plaintext length.
        block_size: Bytes per fetch.
        cached_blocks: Blocks kept in memory.
    """

    def __init__(
        self,
        fetch: Callable[[int, int], bytes],
        size: int,
        block_size: int = RANGED_BLOCK,
        cached_blocks: int = 3,
    ) -> None:
        super().__init__()
        if block_size <= 0 or cached_blocks <= 0:
            raise ValueError("block_size and cached_blocks must be positive")
        self._fetch, self._size, self._block = fetch, size, block_size
        self._cache: dict[int, bytes] = {}
        self._keep = cached_blocks
        self._pos = 0
        # What was read from the store, and in how many requests (for tests and benches).
        self.fetched_bytes = 0
        self.fetches = 0

    @property
    def size(self) -> int:
        """The object's length in bytes."""
        return self._size

    def readable(self) -> bool:
        """Always true."""
        return True

    def seekable(self) -> bool:
        """Always true."""
        return True

    def tell(self) -> int:
        """The current position."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position as :meth:`io.IOBase.seek` does (past the end reads nothing)."""
        if self.closed:
            raise ValueError("seek on a closed ranged reader")
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}
        if whence not in bases:
            raise ValueError(f"whence {whence!r} is not SEEK_SET, SEEK_CUR or SEEK_END")
        base = bases[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _block_at(self, index: int) -> bytes:
        data = self._cache.pop(index, None)
        if data is None:
            start = index * self._block
            end = min(start + self._block, self._size) - 1
            data = self._fetch(start, end)
            if len(data) != end - start + 1:
                # A short block would read as the end of the file: a decode that stops early
                # and reports fewer frames as if that were all of them.
                raise BlobIntegrityError(
                    f"a read of bytes {start}-{end} returned {len(data)} bytes: the object is "
                    "shorter than it was when it was opened; run the step again."
                )
            self.fetched_bytes += len(data)
            self.fetches += 1
            while len(self._cache) >= self._keep:
                self._cache.pop(next(iter(self._cache)))
        self._cache[index] = data  # most recently used last
        return data

    def close(self) -> None:
        """Drop the held blocks."""
        self._cache.clear()
        super().close()

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the current position; 0 at the end."""
        if self.closed:
            raise ValueError("read from a closed ranged reader")
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index, offset = divmod(self._pos, self._block)
            block = self._block_at(index)
            n = min(len(view) - done, len(block) - offset)
            view[done : done + n] = block[offset : offset + n]
            done += n
            self._pos += n
        return done


class BlobStore(dg.ConfigurableResource, ABC):
    """The object store: a local folder or an S3 bucket, same keys, same guarantees.

    ``range_block_bytes`` is what a ranged reader (:meth:`open_ranged`) fetches at a time: one
    ranged GET on S3; on an encrypted local lake, rounded up to whole encryption chunks.
    """

    range_block_bytes: int = Field(RANGED_BLOCK, gt=0)

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

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive) of an object, in blocks, without loading it whole."""
        with self.local_copy(key) as path, open(path, "rb") as fh:
            yield from _read_span(fh, start, end)

    @contextlib.contextmanager
    def open_ranged(self, key: str, block_size: int | None = None) -> Iterator[RangedReader]:
        """The object as a read-only, seekable file that fetches only the ranges read.

        For readers that visit part of a large object (a chunk of a long video): nothing is
        copied whole and no plaintext reaches the disk. Each fetch is ``block_size`` bytes
        (default ``range_block_bytes``; one ranged GET on S3); the reader's ``fetched_bytes``
        says how much was read. Stores with a cheaper way in override it.

        Raises:
            FileNotFoundError: No object is stored under ``key``.
        """
        info = self.head(key)
        if info is None:
            raise FileNotFoundError(f"no object {key}")
        reader = RangedReader(
            lambda s, e: b"".join(self.read_range(key, s, e)),
            info.size,
            block_size or self.range_block_bytes,
        )
        with reader:
            yield reader

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
    which is atomic on POSIX filesystems. With ``encrypt_at_rest`` (the default) every object is
    written encrypted with AES-256-GCM in authenticated chunks (:mod:`resources.lake_crypto`);
    reads decrypt, range reads decrypt only the chunks they need, and an altered chunk raises
    :class:`BlobIntegrityError` instead of returning bytes. Unencrypted files are trusted only
    under ``raw-videos/``, where people drop videos by hand. Presigned URLs point at
    ``public_base_url`` (the web app) and carry an HMAC signature and an expiry that
    :meth:`verify_presigned` checks.

    The lake key comes from ``encryption_key`` (base64, ``SURG_LAKE_KEY``), else from
    ``encryption_key_file`` (``SURG_LAKE_KEY_FILE``, which must exist), else from ``lake.key``
    beside ``root``, generated with mode 0600 on first use.
    """

    root: str
    public_base_url: str = "http://127.0.0.1:8000"
    secret_key_file: str = ""
    encrypt_at_rest: bool = True
    encryption_key: str = ""
    encryption_key_file: str = ""
    encryption_chunk_bytes: int = DEFAULT_CHUNK

    _secret: bytes | None = PrivateAttr(default=None)
    _lake_key: bytes | None = PrivateAttr(default=None)

    def _path(self, key: str) -> Path:
        return Path(self.root) / check_key(key)

    def _meta_path(self, key: str) -> Path:
        return Path(self.root) / _META_DIR / f"{check_key(key)}.json"

    def default_key_file(self) -> Path:
        """Where the generated lake key lives when no key is configured (beside the lake)."""
        return Path(self.root).resolve().parent / "lake.key"

    def lake_key(self) -> bytes:
        """The 32-byte lake key (read once; never logged or shown)."""
        if self._lake_key is None:
            if self.encryption_key:
                self._lake_key = parse_key(self.encryption_key, "setting SURG_LAKE_KEY")
            elif self.encryption_key_file:
                path = Path(self.encryption_key_file).expanduser()
                self._lake_key = load_or_create_key_file(path, create=False)
            else:
                self._lake_key = load_or_create_key_file(self.default_key_file(), create=True)
        return self._lake_key

    @staticmethod
    def _label(key: str) -> str:
        # A dropped file's name may identify a patient: only platform-built keys are named.
        parts = key.split("/")
        if key.startswith(DROP_PREFIX) and not (len(parts) == 3 and _CASE_ID_RE.match(parts[1])):
            return "a file dropped into raw-videos/"
        return f"object {key}"

    @contextlib.contextmanager
    def _open(self, key: str) -> Iterator[tuple[BinaryIO, EncryptedReader | None, int]]:
        """The object's open file, its decrypting reader (``None`` if stored plain) and size."""
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"no object {key}") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if fh.read(len(MAGIC)) == MAGIC:
                reader = EncryptedReader(fh, size, self.lake_key(), key, self._label(key))
                yield fh, reader, reader.length
                return
            if self.encrypt_at_rest and not key.startswith(DROP_PREFIX):
                raise BlobIntegrityError(
                    f"{self._label(key)} is stored unencrypted, which the encrypted lake does "
                    "not trust; rebuild it (re-materialize its asset) or set "
                    "SURG_LAKE_ENCRYPTION=off to read an unencrypted lake."
                )
            fh.seek(0)
            yield fh, None, size

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

    def _write_object(self, key: str, src: BinaryIO, length: int) -> None:
        def write(fh: Any) -> None:
            if self.encrypt_at_rest:
                key_bytes = self.lake_key()
                encrypt_stream(src, length, fh, key_bytes, key, self.encryption_chunk_bytes)
            else:
                shutil.copyfileobj(src, fh, length=8 * 1024 * 1024)

        self._write_atomic(self._path(key), write)

    def _write_meta(self, key: str, metadata: dict[str, str] | None) -> None:
        meta_path = self._meta_path(key)
        if metadata:
            payload = json.dumps(metadata, sort_keys=True).encode()
            self._write_atomic(meta_path, lambda fh: fh.write(payload))
        else:
            with contextlib.suppress(FileNotFoundError):
                meta_path.unlink()

    def put_file(self, key: str, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Copy a local file in (encrypted unless ``encrypt_at_rest`` is off), atomically."""
        check_key(key)
        with open(path, "rb") as src:
            length = os.fstat(src.fileno()).st_size
            self._write_meta(key, metadata)
            self._write_object(key, src, length)

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Write bytes (encrypted unless ``encrypt_at_rest`` is off), atomically."""
        check_key(key)
        self._write_meta(key, metadata)
        self._write_object(key, io.BytesIO(data), len(data))

    def get_bytes(self, key: str) -> bytes:
        """Read a whole object (decrypted and authenticated)."""
        out = io.BytesIO()
        self._copy_out(key, out)
        return out.getvalue()

    def _copy_out(self, key: str, dst: BinaryIO) -> None:
        with self._open(key) as (fh, reader, _):
            if reader is None:
                shutil.copyfileobj(fh, dst, length=8 * 1024 * 1024)
            else:
                reader.copy_to(dst)

    def download(self, key: str, path: str | Path) -> None:
        """Write the object's plaintext to ``path``; nothing is left there if it fails."""
        target = Path(path)
        try:
            with open(target, "wb") as dst:
                self._copy_out(key, dst)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            raise

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A plaintext file of the object for libraries that need a path (PyAV, ONNX Runtime).

        An unencrypted dropped file is handed over as it is; an encrypted object is decrypted
        into a private temporary folder (mode 0700) that is removed when the block ends.
        """
        with self._open(key) as (_, reader, _size):
            plain = reader is None
        if plain:
            yield self._path(key)
            return
        with super().local_copy(key) as path:
            yield path

    @contextlib.contextmanager
    def open_ranged(self, key: str, block_size: int | None = None) -> Iterator[RangedReader]:
        """The object as a seekable file through one open handle: an encrypted object
        decrypted (and authenticated) a chunk at a time as it is read, a plain dropped file as
        it is. ``block_size`` (default ``range_block_bytes``) is rounded up to whole encryption
        chunks, so that no chunk is decrypted for two blocks.
        """
        block = block_size or self.range_block_bytes
        with self._open(key) as (fh, reader, size):
            if reader is None:

                def fetch(start: int, end: int) -> bytes:
                    return b"".join(_read_span(fh, start, end))
            else:
                block = reader.chunk_size * max(1, -(-block // reader.chunk_size))

                def fetch(start: int, end: int) -> bytes:
                    return b"".join(reader.read_range(start, end))

            with RangedReader(fetch, size, block_size=block) as r:
                yield r

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive), decrypting only the chunks that overlap them."""
        with self._open(key) as (fh, reader, _):
            if reader is not None:
                yield from reader.read_range(start, end)
                return
            yield from _read_span(fh, start, end)

    def _plain_size(self, path: Path, st_size: int) -> int:
        """The object's plaintext size: from the header when encrypted, else the file's size."""
        try:
            with open(path, "rb") as fh:
                head = fh.read(HEADER_SIZE)
        except FileNotFoundError:
            return st_size
        length = plaintext_length(head)
        return st_size if length is None else length

    def is_encrypted(self, key: str) -> bool:
        """True if the object is stored encrypted."""
        with self._open(key) as (_, reader, _size):
            return reader is not None

    def head(self, key: str) -> BlobInfo | None:
        """Plaintext size, modification time and metadata of an object."""
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        return BlobInfo(
            key=key,
            size=self._plain_size(path, st.st_size),
            last_modified=st.st_mtime,
            metadata=self._meta(key),
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
        folder = base if base.is_dir() or not prefix else base.parent
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
                out.append(BlobInfo(key, self._plain_size(full, st.st_size), st.st_mtime, {}))
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


def bucket_default_encryption(client: Any, bucket: str) -> str | None:
    """The bucket's default encryption algorithm (``aws:kms``, ``AES256``...), or ``None``."""
    from botocore.exceptions import ClientError

    try:
        config = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    except ClientError as exc:
        if (
            exc.response.get("Error", {}).get("Code")
            == "ServerSideEncryptionConfigurationNotFoundError"
        ):
            return None
        raise
    for rule in config.get("Rules", []):
        algorithm = rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
        if algorithm:
            return str(algorithm)
    return None


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
    allow_unencrypted_bucket: bool = False
    retry_mode: str = "standard"
    max_attempts: int = 8

    _client: Any = PrivateAttr(default=None)

    def s3_client(self) -> Any:
        """A boto3 S3 client with this store's endpoint and retry policy (no bucket check).

        Transient failures (5xx, throttling, dropped connections) are retried by botocore's
        ``standard`` or ``adaptive`` mode with exponential backoff, ``max_attempts`` in all.
        """
        import boto3
        from botocore.config import Config

        if self.retry_mode not in ("standard", "adaptive", "legacy"):
            raise InputError(
                f"setting SURG_S3_RETRY_MODE={self.retry_mode!r} is unknown; "
                "use 'standard' or 'adaptive'."
            )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url or None,
            region_name=self.region_name or None,
            config=Config(
                signature_version="s3v4",
                retries={"mode": self.retry_mode, "total_max_attempts": max(1, self.max_attempts)},
            ),
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse to start a run on a bucket without default encryption (see :meth:`_s3`)."""
        self._s3()

    def _s3(self) -> Any:
        if self._client is None:
            client = self.s3_client()
            if not self.allow_unencrypted_bucket:
                self._refuse_unencrypted_bucket(client)
            self._client = client
        return self._client

    def _refuse_unencrypted_bucket(self, client: Any) -> None:
        """Raise unless the bucket encrypts new objects by default (SSE-S3 or SSE-KMS)."""
        if bucket_default_encryption(client, self.bucket) is None:
            raise InputError(
                f"bucket {self.bucket} has no default encryption; turn it on (SSE-KMS) or, "
                "for a test bucket only, set SURG_S3_ALLOW_UNENCRYPTED_BUCKET=1."
            )

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """A ranged GET of bytes ``start..end`` (inclusive), streamed in blocks."""
        obj = self._s3().get_object(
            Bucket=self.bucket, Key=self._full(key), Range=f"bytes={start}-{end}"
        )
        yield from obj["Body"].iter_chunks(_BLOCK)

    @contextlib.contextmanager
    def open_ranged(self, key: str, block_size: int | None = None) -> Iterator[RangedReader]:
        """Ranged GETs pinned to the object's ETag: an object replaced while it is being read
        (a rerun re-materialising the video) fails the read rather than mixing two versions.

        Raises:
            FileNotFoundError: No object is stored under ``key``.
            BlobIntegrityError: The object changed while it was being read.
        """
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )

        body_errors = (
            IncompleteReadError, ResponseStreamingError, ReadTimeoutError, ConnectionClosedError
        )  # fmt: skip
        full = self._full(key)
        head = self._head_object(key)
        if head is None:
            raise FileNotFoundError(f"no object {key}")

        def fetch(start: int, end: int) -> bytes:
            # botocore retries a failed request, not a body cut off while it is read (which
            # boto3's managed download, used by local_copy, does retry): a long case makes
            # thousands of these reads, so one dropped connection must not fail the step.
            for attempt in range(max(1, self.max_attempts)):
                try:
                    obj = self._s3().get_object(
                        Bucket=self.bucket, Key=full, Range=f"bytes={start}-{end}",
                        IfMatch=head["ETag"],
                    )  # fmt: skip
                    return obj["Body"].read()
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    if code in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                        raise BlobIntegrityError(
                            f"object {key} changed or was removed while it was being read; run "
                            "the step again."
                        ) from None
                    raise
                except body_errors:
                    if attempt + 1 >= self.max_attempts:
                        raise
                    time.sleep(min(2.0, 0.1 * 2**attempt))
            raise AssertionError("unreachable")  # the loop returns or raises

        size = int(head["ContentLength"])
        with RangedReader(fetch, size, block_size or self.range_block_bytes) as reader:
            yield reader

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

    def _head_object(self, key: str) -> dict | None:
        """The raw HEAD response (size, ETag, metadata), or ``None`` if there is no object."""
        from botocore.exceptions import ClientError

        try:
            return self._s3().head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def head(self, key: str) -> BlobInfo | None:
        """HEAD the object."""
        r = self._head_object(key)
        if r is None:
            return None
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
