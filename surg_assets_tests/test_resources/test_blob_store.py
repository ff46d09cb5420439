"""The blob store contract, run against the local folder and against S3 over HTTP (moto)."""

from __future__ import annotations

import io
import random
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import boto3
import httpx
import pytest

from ml_models.errors import InputError
from resources.blob_store import (
    BlobStore,
    LocalBlobStore,
    RangedReader,
    S3BlobStore,
    decode_cursor,
)
from resources.lake_crypto import BlobIntegrityError
from surg_assets_tests.conftest import create_bucket


@pytest.fixture(scope="module")
def kms_key(moto_s3: str) -> str:
    kms = boto3.client("kms", endpoint_url=moto_s3, region_name="us-east-1")
    return kms.create_key(Description="surg test key")["KeyMetadata"]["KeyId"]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(root=str(tmp_path / "lake"), secret_key_file=str(tmp_path / "k"))
        return
    endpoint = request.getfixturevalue("moto_s3")
    key_id = request.getfixturevalue("kms_key")
    bucket = f"surg-{uuid.uuid4().hex[:12]}"
    create_bucket(endpoint, bucket, key_id)
    yield S3BlobStore(
        bucket=bucket,
        prefix="tenant-a",
        endpoint_url=endpoint,
        region_name="us-east-1",
        kms_key_id=key_id,
        multipart_threshold_mb=5,
        multipart_chunk_mb=5,
    )


def test_put_get_head_delete_round_trip(store: BlobStore, tmp_path: Path) -> None:
    store.put_bytes("processed-metadata/c1/analysis.json", b'{"a": 1}', metadata={"k": "v"})
    assert store.get_bytes("processed-metadata/c1/analysis.json") == b'{"a": 1}'
    info = store.head("processed-metadata/c1/analysis.json")
    assert info is not None and info.size == 8 and info.metadata == {"k": "v"}
    src = tmp_path / "video.bin"
    src.write_bytes(b"x" * 1000)
    store.put_file("processed-videos/c1/video.mp4", src)
    dst = tmp_path / "back.bin"
    store.download("processed-videos/c1/video.mp4", dst)
    assert dst.read_bytes() == src.read_bytes()
    with store.local_copy("processed-videos/c1/video.mp4") as local:
        assert local.read_bytes() == src.read_bytes()
    store.delete("processed-videos/c1/video.mp4")
    assert store.head("processed-videos/c1/video.mp4") is None
    assert not store.exists("processed-videos/c1/video.mp4")
    with pytest.raises(FileNotFoundError):
        store.get_bytes("processed-videos/c1/video.mp4")


def test_set_metadata_merges_and_move_keeps_content(store: BlobStore) -> None:
    store.put_bytes("raw-videos/drop.mp4", b"video-bytes", metadata={"a": "1"})
    store.set_metadata("raw-videos/drop.mp4", {"pointer": "processed-metadata/c1/analysis.json"})
    assert store.head("raw-videos/drop.mp4").metadata == {
        "a": "1",
        "pointer": "processed-metadata/c1/analysis.json",
    }
    store.move("raw-videos/drop.mp4", "raw-videos/c0123456789abcdef/source.mp4")
    assert not store.exists("raw-videos/drop.mp4")
    assert store.get_bytes("raw-videos/c0123456789abcdef/source.mp4") == b"video-bytes"


@pytest.mark.parametrize("reader", ["store's own", "generic"])
def test_open_ranged_reads_and_seeks_as_the_whole_object_fetching_only_what_is_read(
    store: BlobStore, reader: str
) -> None:
    mib = 1 << 20
    data = random.Random(3).randbytes(5_000_000)
    key = "processed-videos/c0123456789abcdef/video.mp4"
    store.put_bytes(key, data)
    # The generic reader (over read_range) is what any other store would get.
    opener = store.open_ranged if reader == "store's own" else partial(BlobStore.open_ranged, store)
    with opener(key, block_size=mib) as f:
        assert f.seekable() and f.read(10) == data[:10]
        f.seek(4_500_000)
        assert f.read(1000) == data[4_500_000:4_501_000]
        f.seek(-5, io.SEEK_CUR)
        assert f.read(5) == data[4_500_995:4_501_000]
        f.seek(-100, io.SEEK_END)
        assert f.read() == data[-100:] and f.read(10) == b""
        f.seek(mib - 1000)  # across a block border
        assert f.read(2000) == data[mib - 1000 : mib + 1000]
        # Blocks 0, 4 (the last, shorter) and 1 were fetched, once each: 58% of the object.
        assert f.fetched_bytes == 2 * mib + (len(data) - 4 * mib)
        f.seek(10)  # block 0 is still held
        assert f.read(10) == data[10:20] and f.fetched_bytes == 2 * mib + (len(data) - 4 * mib)
    with pytest.raises(FileNotFoundError), opener(key + ".none"):
        pass
    with opener(key) as f:
        f.close()
        with pytest.raises(ValueError, match="closed"):
            f.read(1)


def test_a_short_read_is_an_error_not_the_end_of_the_object() -> None:
    """A block that comes back short would read as the end of the file: a decode stopping early
    and counting fewer frames as if that were all of them."""
    data = bytes(range(256)) * 40

    def fetch(start: int, end: int) -> bytes:
        return data[start : end + 1][: 100 if start >= 4096 else None]

    with RangedReader(fetch, len(data), block_size=4096) as f:
        assert f.read(4096) == data[:4096]
        with pytest.raises(BlobIntegrityError, match="bytes 4096-8191 returned 100 bytes"):
            f.read(10)
        with pytest.raises(ValueError, match="whence"):
            f.seek(0, 7)


def test_a_ranged_read_never_mixes_two_versions_of_an_object(store: BlobStore) -> None:
    """A rerun may replace the video while a chunk is being read: the local reader keeps the
    version it opened, the S3 reader's ranged GETs are pinned to its ETag and fail."""
    key = "processed-videos/c0123456789abcdef/video.mp4"
    old, new = (random.Random(seed).randbytes(3_000_000) for seed in (1, 2))
    store.put_bytes(key, old)
    with store.open_ranged(key, block_size=1 << 20) as f:
        assert f.read(10) == old[:10]
        store.put_bytes(key, new)
        f.seek(2_500_000)
        if isinstance(store, LocalBlobStore):
            assert f.read(100) == old[2_500_000:2_500_100]
        else:
            with pytest.raises(BlobIntegrityError, match=f"object {key} changed"):
                f.read(100)
    with store.open_ranged(key) as f:
        assert f.read() == new


def test_list_after_returns_each_object_once_in_cursor_order(store: BlobStore) -> None:
    store.put_bytes("raw-videos/a/source.mp4", b"1")
    store.put_bytes("raw-videos/b/source.mp4", b"2")
    store.put_bytes("processed-videos/a/video.mp4", b"3")
    first, cursor = store.list_after("raw-videos/", None)
    assert [i.key for i in first] == ["raw-videos/a/source.mp4", "raw-videos/b/source.mp4"]
    again, same = store.list_after("raw-videos/", cursor)
    assert again == [] and same == cursor
    time.sleep(1.1)  # S3 timestamps have one-second resolution
    store.put_bytes("raw-videos/c/source.mp4", b"4")
    later, cursor2 = store.list_after("raw-videos/", cursor)
    assert [i.key for i in later] == ["raw-videos/c/source.mp4"]
    assert decode_cursor(cursor2)[1] == "raw-videos/c/source.mp4"


def test_hostile_keys_are_refused(store: BlobStore) -> None:
    for key in ["../etc/passwd", "/abs/key", "a//b", "raw-videos/../../x", "", "a\\b", "dir/"]:
        with pytest.raises(InputError):
            store.put_bytes(key, b"x")


def test_local_writes_are_atomic_and_temporary_files_never_listed(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path / "lake"), secret_key_file=str(tmp_path / "k"))
    store.put_bytes("processed-metadata/c1/report.json", b"old")

    class Boom(Exception):
        pass

    def failing_writer(fh: object) -> None:
        fh.write(b"half of the new")  # type: ignore[attr-defined]
        raise Boom

    with pytest.raises(Boom):
        store._write_atomic(tmp_path / "lake/processed-metadata/c1/report.json", failing_writer)
    assert store.get_bytes("processed-metadata/c1/report.json") == b"old"
    assert [p.name for p in (tmp_path / "lake/processed-metadata/c1").iterdir()] == ["report.json"]
    (tmp_path / "lake/processed-metadata/c1/.tmp-stale").write_bytes(b"partial")
    assert [i.key for i in store.list_prefix("processed-metadata/")] == [
        "processed-metadata/c1/report.json"
    ]


def test_local_presigned_urls_are_signed_and_expire(tmp_path: Path) -> None:
    store = LocalBlobStore(root=str(tmp_path / "lake"), secret_key_file=str(tmp_path / "k"))
    url = store.presigned_url("processed-videos/c1/video.mp4", "GET", expires_s=60)
    query = dict(httpx.URL(url).params)
    assert store.verify_presigned(
        "processed-videos/c1/video.mp4", "GET", int(query["expires"]), query["signature"]
    )
    # Another key, another method or an expired time does not verify.
    assert not store.verify_presigned(
        "processed-videos/c2/video.mp4", "GET", int(query["expires"]), query["signature"]
    )
    assert not store.verify_presigned(
        "processed-videos/c1/video.mp4", "PUT", int(query["expires"]), query["signature"]
    )
    expired = store.presigned_url("processed-videos/c1/video.mp4", "GET", expires_s=-1)
    q2 = dict(httpx.URL(expired).params)
    assert not store.verify_presigned(
        "processed-videos/c1/video.mp4", "GET", int(q2["expires"]), q2["signature"]
    )
    assert (tmp_path / "k").stat().st_mode & 0o077 == 0


@pytest.fixture
def s3_store(moto_s3: str, kms_key: str) -> S3BlobStore:
    bucket = f"surg-{uuid.uuid4().hex[:12]}"
    create_bucket(moto_s3, bucket, kms_key)
    return S3BlobStore(
        bucket=bucket,
        endpoint_url=moto_s3,
        region_name="us-east-1",
        kms_key_id=kms_key,
        multipart_threshold_mb=5,
        multipart_chunk_mb=5,
    )


def test_s3_writes_ask_for_sse_kms_with_the_configured_key(s3_store: S3BlobStore) -> None:
    s3_store.put_bytes("processed-metadata/c1/a.json", b"{}")
    raw = s3_store._s3().head_object(Bucket=s3_store.bucket, Key="processed-metadata/c1/a.json")
    assert raw["ServerSideEncryption"] == "aws:kms"
    assert s3_store.kms_key_id in raw["SSEKMSKeyId"]


def test_s3_large_files_go_up_in_parts(s3_store: S3BlobStore, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (12 * 1024 * 1024))
    s3_store.put_file("raw-videos/c1/source.mp4", big)
    etag = s3_store._s3().head_object(Bucket=s3_store.bucket, Key="raw-videos/c1/source.mp4")[
        "ETag"
    ]
    # A multipart object's ETag ends in -<number of parts>.
    assert etag.strip('"').endswith("-3")
    assert s3_store.head("raw-videos/c1/source.mp4").size == big.stat().st_size


def test_s3_presigned_get_and_put_work_over_http(s3_store: S3BlobStore) -> None:
    put_url = s3_store.presigned_url("processed-metadata/c1/x.json", "PUT", expires_s=60)
    r = httpx.put(
        put_url,
        content=b'{"ok": true}',
        headers={
            "x-amz-server-side-encryption": "aws:kms",
            "x-amz-server-side-encryption-aws-kms-key-id": s3_store.kms_key_id,
        },
    )
    assert r.status_code == 200, r.text
    get_url = s3_store.presigned_url("processed-metadata/c1/x.json", "GET", expires_s=60)
    assert httpx.get(get_url).content == b'{"ok": true}'
    assert "X-Amz-Signature" in get_url and "X-Amz-Expires=60" in get_url
