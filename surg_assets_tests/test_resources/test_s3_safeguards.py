"""S3 store safeguards over HTTP against moto's server: encrypted buckets only, transient errors
retried (a real HTTP proxy in front of the server answers some requests with 503 or 500)."""

from __future__ import annotations

import http.client
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError, ResponseStreamingError

from ml_models.errors import InputError
from resources.blob_store import S3BlobStore
from resources.settings import load_settings
from surg_assets.settings import build_resources
from surg_assets_tests.conftest import create_bucket


@dataclass
class FlakyProxy:
    """Forwards to ``upstream``; every ``fail_every``-th request is answered 503 or 500, and
    every ``cut_every``-th ranged GET sends half its body and drops the connection."""

    upstream: str
    fail_every: int = 3
    cut_every: int = 0
    url: str = ""
    requests: int = 0
    failed: int = 0
    ranged: int = 0
    cut: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def should_cut(self) -> bool:
        with self._lock:
            self.ranged += 1
            if self.cut_every and self.ranged % self.cut_every == 1:
                self.cut += 1
                return True
            return False

    def should_fail(self) -> int | None:
        with self._lock:
            self.requests += 1
            if self.fail_every and self.requests % self.fail_every == 1:
                self.failed += 1
                return 503 if self.failed % 2 else 500
            return None


def _handler(proxy: FlakyProxy) -> type[BaseHTTPRequestHandler]:
    up = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status = proxy.should_fail()
            if status is not None:
                payload = (
                    b"<Error><Code>ServiceUnavailable</Code><Message>try again</Message></Error>"
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
            conn.request(self.command, self.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(k, v)
            # A HEAD has no body: its length is the object's, as upstream said.
            length = r.getheader("Content-Length") if self.command == "HEAD" else len(data)
            self.send_header("Content-Length", str(length or 0))
            self.end_headers()
            conn.close()
            if self.command == "GET" and self.headers.get("Range") and proxy.should_cut():
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
                return
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler


@pytest.fixture
def flaky(moto_s3: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(upstream=moto_s3)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()


def _bucket(moto_s3: str, encrypted: bool) -> str:
    name = f"surg-{uuid.uuid4().hex[:12]}"
    if encrypted:
        create_bucket(moto_s3, name)
    else:
        boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def test_a_bucket_without_default_encryption_is_refused_unless_overridden(
    moto_s3: str, surg_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = _bucket(moto_s3, True), _bucket(moto_s3, False)
    S3BlobStore(bucket=good, endpoint_url=moto_s3).put_bytes("processed-metadata/c1/a.json", b"1")
    store = S3BlobStore(bucket=bad, endpoint_url=moto_s3)
    with pytest.raises(InputError, match=f"bucket {bad} has no default encryption") as refused:
        store.put_bytes("processed-metadata/c1/a.json", b"1")
    assert "SURG_S3_ALLOW_UNENCRYPTED_BUCKET=1" in str(refused.value)
    with pytest.raises(InputError):
        store.list_prefix("raw-videos/")
    assert boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(Bucket=bad)["KeyCount"] == 0
    # The same bucket through the settings, first as is, then with the explicit override.
    for name, value in {
        "SURG_ENV": "prod",
        "SURG_S3_BUCKET": bad,
        "SURG_S3_ENDPOINT_URL": moto_s3,
        "SURG_CATALOG_URL": f"sqlite:///{surg_home / 'c.db'}",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match="no default encryption"):
        build_resources(load_settings())["blob_store"].list_prefix("")
    monkeypatch.setenv("SURG_S3_ALLOW_UNENCRYPTED_BUCKET", "1")
    allowed = build_resources(load_settings())["blob_store"]
    allowed.put_bytes("processed-metadata/c1/a.json", b"1")
    assert allowed.get_bytes("processed-metadata/c1/a.json") == b"1"
    monkeypatch.setenv("SURG_S3_ALLOW_UNENCRYPTED_BUCKET", "perhaps")
    with pytest.raises(InputError, match="SURG_S3_ALLOW_UNENCRYPTED_BUCKET"):
        build_resources(load_settings())


def test_transient_s3_errors_are_retried_and_every_operation_succeeds(
    moto_s3: str, flaky: FlakyProxy, tmp_path: Path
) -> None:
    bucket = _bucket(moto_s3, True)
    store = S3BlobStore(
        bucket=bucket,
        endpoint_url=flaky.url,
        region_name="us-east-1",
        multipart_threshold_mb=5,
        multipart_chunk_mb=5,
    )
    big = tmp_path / "video.mp4"
    big.write_bytes(b"\x01" * (11 * 1024 * 1024))  # three parts
    store.put_file("raw-videos/c0123456789abcdef/source.mp4", big)
    store.put_bytes("processed-metadata/c0123456789abcdef/analysis.json", b'{"ok": 1}')
    store.set_metadata("processed-metadata/c0123456789abcdef/analysis.json", {"m": "1"})
    assert store.get_bytes("processed-metadata/c0123456789abcdef/analysis.json") == b'{"ok": 1}'
    assert b"".join(store.read_range("raw-videos/c0123456789abcdef/source.mp4", 10, 19)) == (
        b"\x01" * 10
    )
    assert [i.key for i in store.list_prefix("")] == [
        "processed-metadata/c0123456789abcdef/analysis.json",
        "raw-videos/c0123456789abcdef/source.mp4",
    ]
    store.download("raw-videos/c0123456789abcdef/source.mp4", tmp_path / "back.mp4")
    assert (tmp_path / "back.mp4").read_bytes() == big.read_bytes()
    assert flaky.failed >= 5 and flaky.requests > flaky.failed


def test_without_retries_the_same_proxy_fails_the_operation(
    moto_s3: str, flaky: FlakyProxy
) -> None:
    bucket = _bucket(moto_s3, True)
    flaky.fail_every = 2  # the 1st, 3rd, 5th... request fails
    store = S3BlobStore(bucket=bucket, endpoint_url=flaky.url, max_attempts=1)
    with pytest.raises(ClientError):
        store.put_bytes("processed-metadata/c1/a.json", b"1")
    with pytest.raises(InputError, match="SURG_S3_RETRY_MODE"):
        S3BlobStore(bucket=bucket, endpoint_url=flaky.url, retry_mode="eventually").s3_client()


def test_a_video_read_by_range_survives_bodies_cut_off_midway(
    moto_s3: str, flaky: FlakyProxy, videos: dict[str, Path]
) -> None:
    """A detection chunk on S3 decodes through ranged GETs; a connection dropped in the middle
    of a body is retried (botocore retries only failed requests), with no frame lost."""
    from ml_models.video import sample_frames

    bucket = _bucket(moto_s3, True)
    flaky.fail_every, flaky.cut_every = 0, 3
    key = "processed-videos/c0123456789abcdef/video.mp4"
    store = S3BlobStore(bucket=bucket, endpoint_url=flaky.url, region_name="us-east-1")
    store.put_file(key, videos["good"])

    def frames(video: object) -> list[tuple[float, bytes]]:
        return [(f.t_s, f.bgr.tobytes()) for f in sample_frames(video, 5, start_s=1.0)]

    with store.open_ranged(key, block_size=4096) as f:
        got = frames(f)
        fetches = f.fetches
    assert got == frames(videos["good"]) and len(got) == 10  # 2 s of 3 at 5 frames/s
    assert flaky.cut >= 2 and fetches >= 3
    # Without retries the first cut body fails the read (it is never taken for the end).
    flaky.ranged = 0
    once = S3BlobStore(bucket=bucket, endpoint_url=flaky.url, region_name="us-east-1",
                       max_attempts=1)  # fmt: skip
    with once.open_ranged(key, block_size=4096) as f, pytest.raises(ResponseStreamingError):
        frames(f)
