"""Streaming stored objects with HTTP range requests (seeking in the player)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

from fastapi import HTTPException

from resources.blob_store import BlobStore
from resources.lake_crypto import BlobIntegrityError

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
BLOCK = 256 * 1024


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (start, end) inclusive byte span of a ``Range`` header, or None for the whole object.

    Only single ranges are served (what video elements send); a multi-range or malformed header
    is answered with the whole object, as RFC 9110 allows. An unsatisfiable range is a 416.
    """
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
    else:  # "bytes=-N": the last N bytes
        start, end = max(0, size - int(m.group(2))), size - 1
    end = min(end, size - 1)
    if start >= size or start > end:
        raise HTTPException(
            416,
            f"the requested range is outside the video's {size} bytes.",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


def stream_object(blob_store: BlobStore, key: str, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start..end`` (inclusive) of an object, in blocks, without loading it whole.

    The first block is read (and, in an encrypted lake, authenticated) before the response
    starts, so an object that fails its integrity check is answered with a 500 and no bytes; a
    later chunk that fails ends the stream before any of its bytes are sent.
    """
    blocks = blob_store.read_range(key, start, end)
    try:
        first = next(blocks, b"")
    except BlobIntegrityError as exc:
        raise HTTPException(500, str(exc)) from None
    return itertools.chain([first], blocks)
