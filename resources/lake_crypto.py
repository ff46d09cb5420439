"""Encryption at rest for the local lake: AES-256-GCM in independently authenticated chunks.

An encrypted object is a 36-byte header followed by chunks of at most ``chunk_size`` plaintext
bytes, each sealed with its own 16-byte GCM tag::

    header = b"SURGLK01" | chunk_size (u32) | plaintext length (u64) | salt (16 random bytes)
    chunk i = AES-256-GCM(object key, nonce = i (96-bit), aad = header | store key | i | final?)

The object key is derived from the lake key with HKDF-SHA256 and the object's random salt, so
nonces never repeat under one key however many objects are written. Binding the header, the
object's store key, the chunk index and a final-chunk flag into each chunk's associated data means
a chunk that is altered, swapped with another chunk or another object's chunk, dropped, or
appended after the end fails authentication; :class:`BlobIntegrityError` is raised and none of
that chunk's bytes are returned. Range reads decrypt only the chunks that overlap the range.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ml_models.errors import InputError

MAGIC = b"SURGLK01"
_HEADER = struct.Struct(">8sIQ16s")
HEADER_SIZE = _HEADER.size
TAG_SIZE = 16
DEFAULT_CHUNK = 1024 * 1024
KEY_BYTES = 32


class BlobIntegrityError(Exception):
    """A stored object failed authentication: it was altered, truncated, or the key is wrong."""


def _integrity(label: str) -> BlobIntegrityError:
    return BlobIntegrityError(
        f"{label} failed its integrity check (altered, truncated, or written with another lake "
        "key); restore it from a backup or check SURG_LAKE_KEY / SURG_LAKE_KEY_FILE."
    )


def parse_key(text: str, source: str) -> bytes:
    """Decode a base64 lake key; ``source`` names the setting or file (never the key itself)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise InputError(
            f"{source} does not hold a base64-encoded 32-byte key; create one with "
            '`python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"`.'
        )
    return key


def load_or_create_key_file(path: Path, create: bool) -> bytes:
    """Read the lake key file, creating it (mode 0600, never overwritten) when ``create``.

    Two processes starting together both end up with the one key that won the race: the new key is
    written to a private temporary file and hard-linked into place, which fails if one exists.
    """
    if not path.exists():
        if not create:
            raise InputError(
                f"the lake key file {path} (SURG_LAKE_KEY_FILE) does not exist; restore it, or "
                "unset SURG_LAKE_KEY_FILE to have a new key generated for a new lake."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lake-key-", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return parse_key(path.read_text(), f"the lake key file {path}")


def _object_cipher(lake_key: bytes, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=b"surg-lake-v1")
    return AESGCM(hkdf.derive(lake_key))


def _aad(header: bytes, store_key: str, index: int, final: bool) -> bytes:
    return header + store_key.encode() + struct.pack(">QB", index, 1 if final else 0)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def chunk_count(length: int, chunk_size: int) -> int:
    """How many chunks an object of ``length`` plaintext bytes has (an empty one has one)."""
    return max(1, -(-length // chunk_size))


def encrypted_size(length: int, chunk_size: int) -> int:
    """The size on disk of an object of ``length`` plaintext bytes."""
    return HEADER_SIZE + length + TAG_SIZE * chunk_count(length, chunk_size)


def plaintext_length(header: bytes) -> int | None:
    """The plaintext length an object's header declares, or ``None`` if it is not encrypted."""
    if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
        return None
    return _HEADER.unpack(header[:HEADER_SIZE])[2]


def encrypt_stream(
    src: BinaryIO,
    length: int,
    dst: BinaryIO,
    lake_key: bytes,
    store_key: str,
    chunk_size: int = DEFAULT_CHUNK,
) -> None:
    """Encrypt exactly ``length`` bytes of ``src`` into ``dst`` for the object ``store_key``.

    Raises:
        ValueError: ``src`` did not hold exactly ``length`` bytes (it changed while being read).
    """
    header = _HEADER.pack(MAGIC, chunk_size, length, secrets.token_bytes(16))
    cipher = _object_cipher(lake_key, header[-16:])
    dst.write(header)
    n = chunk_count(length, chunk_size)
    for i in range(n):
        want = min(chunk_size, length - i * chunk_size)
        plain = src.read(want)
        if len(plain) != want:
            raise ValueError("the source file changed size while it was being stored.")
        dst.write(cipher.encrypt(_nonce(i), plain, _aad(header, store_key, i, i == n - 1)))
    if src.read(1):
        raise ValueError("the source file changed size while it was being stored.")


class EncryptedReader:
    """Random access to the plaintext of one encrypted object, authenticating every chunk read.

    Args:
        fh: The object's file, open for binary reading.
        file_size: Its size on disk (checked against the header: truncation or appending fails).
        lake_key: The lake key.
        store_key: The object's key in the store (bound into every chunk).
        label: How errors name the object (never a file name from an upload).
    """

    def __init__(
        self, fh: BinaryIO, file_size: int, lake_key: bytes, store_key: str, label: str
    ) -> None:
        self._fh, self._store_key, self._label = fh, store_key, label
        fh.seek(0)
        self._header = fh.read(HEADER_SIZE)
        if len(self._header) != HEADER_SIZE:
            raise _integrity(label)
        magic, self.chunk_size, self.length, salt = _HEADER.unpack(self._header)
        if (
            magic != MAGIC
            or self.chunk_size <= 0
            or file_size != encrypted_size(self.length, self.chunk_size)
        ):
            raise _integrity(label)
        self._chunks = chunk_count(self.length, self.chunk_size)
        self._cipher = _object_cipher(lake_key, salt)

    def chunk(self, index: int) -> bytes:
        """The plaintext of chunk ``index``, authenticated, or :class:`BlobIntegrityError`."""
        self._fh.seek(HEADER_SIZE + index * (self.chunk_size + TAG_SIZE))
        want = min(self.chunk_size, self.length - index * self.chunk_size) + TAG_SIZE
        sealed = self._fh.read(want)
        final = index == self._chunks - 1
        try:
            return self._cipher.decrypt(
                _nonce(index), sealed, _aad(self._header, self._store_key, index, final)
            )
        except InvalidTag:
            raise _integrity(self._label) from None

    def read_range(self, start: int, end: int) -> Iterator[bytes]:
        """Plaintext bytes ``start..end`` (inclusive), one decrypted chunk at a time."""
        end = min(end, self.length - 1)
        if start > end:
            return
        for i in range(start // self.chunk_size, end // self.chunk_size + 1):
            plain = self.chunk(i)
            base = i * self.chunk_size
            yield plain[max(0, start - base) : end - base + 1]

    def copy_to(self, dst: BinaryIO) -> None:
        """Write the whole plaintext to ``dst`` (every chunk authenticated before it is written)."""
        for i in range(self._chunks):
            dst.write(self.chunk(i))
