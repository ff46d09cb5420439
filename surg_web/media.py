"""Streaming stored objects with HTTP range requests (seeking in the player)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from fastapi import HTTPException

from resources.blob_store import BlobStore, LocalBlobStore, S3BlobStore

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

    A store that offers ``read_range`` (e.g. one that decrypts chunk by chunk) is asked for it;
    otherwise a local store's file is read directly and S3 is asked with a ranged GET.
    """
    reader = getattr(blob_store, "read_range", None)
    if callable(reader):
        yield from reader(key, start, end)
        return
    if isinstance(blob_store, LocalBlobStore):
        with blob_store.local_copy(key) as path, open(path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                block = fh.read(min(BLOCK, left))
                if not block:
                    break
                left -= len(block)
                yield block
        return
    if isinstance(blob_store, S3BlobStore):
        obj = blob_store._s3().get_object(
            Bucket=blob_store.bucket, Key=blob_store._full(key), Range=f"bytes={start}-{end}"
        )
        yield from obj["Body"].iter_chunks(BLOCK)
        return
    with blob_store.local_copy(key) as path, open(path, "rb") as fh:
        fh.seek(start)
        yield fh.read(end - start + 1)
