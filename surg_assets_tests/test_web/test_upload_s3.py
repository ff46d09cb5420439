"""Production-mode uploads: S3 multipart with presigned ``upload_part`` URLs, over HTTP to moto's
S3 server, through the real web app. The browser (or script) talks to S3 directly for the bytes;
the app only signs, lists, verifies and assembles."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from resources.blob_store import S3BlobStore
from resources.catalog import Catalog
from resources.registry import ModelRegistry
from surg_assets_tests.conftest import create_bucket
from surg_assets_tests.test_web.conftest import WebServer, start_server
from surg_assets_tests.test_web.helpers import put_part, upload

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_site(moto_s3: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    home = tmp_path_factory.mktemp("s3-web-home")
    bucket = "surg-uploads-test"
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    create_bucket(moto_s3, bucket)
    store = S3BlobStore(bucket=bucket, prefix="lake", endpoint_url=moto_s3, region_name=region)
    catalog = Catalog(url=f"sqlite:///{home / 'catalog.db'}")
    registry = ModelRegistry(catalog=catalog, blob_store=store, cache_dir=str(home / "cache"))
    resources = {"blob_store": store, "catalog": catalog, "registry": registry}
    yield from start_server(home, resources=resources, part_mb=5)


def _s3(site: WebServer) -> tuple[object, str]:
    store = site.blob_store
    return store._s3(), store.bucket


def test_s3_multipart_upload_through_presigned_part_urls(s3_site: WebServer) -> None:
    c = s3_site.client("sam")
    data = os.urandom(11 * MiB + 17)
    done = upload(c, data, name="Patient Jane.mov")
    created = done["created"]
    assert created["part_size"] == 5 * MiB and created["part_count"] == 3
    assert all(p["url"].startswith(s3_site.blob_store.endpoint_url) for p in created["part_urls"])
    case_id = done["case_id"]
    key = f"raw-videos/{case_id}/source.mp4"
    assert s3_site.blob_store.get_bytes(key) == data
    assert s3_site.blob_store.head(key).metadata["sha256"] == hashlib.sha256(data).hexdigest()
    # Nothing left in staging, no multipart upload left open, no name anywhere in the bucket.
    assert s3_site.blob_store.list_prefix("uploads-staging/") == []
    s3, bucket = _s3(s3_site)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [f"lake/{key}"]
    assert s3_site.catalog.get_case(case_id).status == "queued"


def test_s3_upload_resumes_refuses_bad_etags_and_aborts_cleanly(s3_site: WebServer) -> None:
    c = s3_site.client("sam")
    data = os.urandom(10 * MiB + 5)
    up = c.post("/api/uploads", json={"name": "b.mp4", "size": len(data)}).json()
    size = up["part_size"]
    first = put_part(up["part_urls"][0]["url"], data[:size])
    assert first.status_code == 200
    state = c.get(f"/api/uploads/{up['upload_id']}").json()
    assert [(p["part_number"], p["etag"]) for p in state["parts"]] == [(1, first.headers["etag"])]
    assert [p["part_number"] for p in state["part_urls"]] == [2, 3]
    for p in state["part_urls"]:
        n = p["part_number"]
        assert put_part(p["url"], data[(n - 1) * size : n * size]).status_code == 200
    wrong = [{"part_number": n, "etag": '"deadbeef"'} for n in (1, 2, 3)]
    r = c.post(f"/api/uploads/{up['upload_id']}/complete", json={"parts": wrong})
    assert r.status_code == 400 and "ETag" in r.json()["error"]
    assert c.delete(f"/api/uploads/{up['upload_id']}").status_code == 200
    s3, bucket = _s3(s3_site)
    open_uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads") or []
    assert up["upload_id"] not in str(open_uploads)
    assert s3_site.catalog.get_case(up["case_id"]) is None


def test_s3_sha256_mismatch_never_reaches_raw_videos(s3_site: WebServer, tmp_path: Path) -> None:
    c = s3_site.client("sam")
    data = os.urandom(6 * MiB)
    r = c.post("/api/uploads", json={"name": "c.mp4", "size": len(data), "sha256": "a" * 64}).json()
    parts = []
    for p in r["part_urls"]:
        n = p["part_number"]
        resp = put_part(p["url"], data[(n - 1) * r["part_size"] : n * r["part_size"]])
        parts.append({"part_number": n, "etag": resp.headers["etag"]})
    done = c.post(f"/api/uploads/{r['upload_id']}/complete", json={"parts": parts})
    assert done.status_code == 400 and "sha256" in done.json()["error"]
    assert s3_site.blob_store.list_prefix(f"raw-videos/{r['case_id']}/") == []
    assert s3_site.blob_store.list_prefix("uploads-staging/") == []
    assert s3_site.catalog.get_case(r["case_id"]).status == "failed"
