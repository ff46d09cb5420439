"""Shared fixtures: isolated SURG_HOME, generated videos, real data, PostgreSQL, S3 over HTTP."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get(
    "SURG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

# Ultralytics must never reach the network from any test.
os.environ.setdefault("YOLO_OFFLINE", "1")


def skip_or_fail(reason: str) -> None:
    """Skip with a reason on a developer's machine; in CI a missing service is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this test must run)")
    pytest.skip(reason)


@pytest.fixture
def surg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, isolated SURG_HOME with the local resource set."""
    home = tmp_path / "surg-home"
    monkeypatch.setenv("SURG_HOME", str(home))
    monkeypatch.setenv("SURG_ENV", "local")
    monkeypatch.delenv("SURG_CATALOG_URL", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return home


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small generated videos, good and bad, written once per test session with PyAV."""
    from ml_models.video import write_sample_video

    d = tmp_path_factory.mktemp("videos")
    good = write_sample_video(d / "good.mp4", seconds=3, fps=25, size=(320, 240))
    v = {
        "good": good,
        "with_audio_and_tags": write_sample_video(
            d / "tagged.mp4",
            seconds=2,
            size=(640, 480),
            with_audio=True,
            metadata={"title": "Jane Doe 1970-01-01", "comment": "MRN 123456"},
        ),
        "mpeg4_avi": write_sample_video(d / "clip.avi", seconds=2, codec="mpeg4"),
        "ffv1_mkv": write_sample_video(d / "lossless.mkv", seconds=2, codec="ffv1"),
    }
    zero = d / "zero.mp4"
    zero.write_bytes(b"")
    text = d / "text.mp4"
    text.write_text("this is not a video\n")
    data = good.read_bytes()
    truncated = d / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    # Keep the container intact but replace the coded pictures with noise: a broken stream.
    mdat = data.find(b"mdat")
    rng = __import__("random").Random(7)
    mdat_end = mdat - 4 + int.from_bytes(data[mdat - 4 : mdat], "big")
    broken = bytearray(data)
    for i in range(mdat + 4, mdat_end):
        broken[i] = rng.randrange(256)
    (d / "broken.mp4").write_bytes(bytes(broken))
    audio_only = d / "audio_only.mp4"
    _write_audio_only(audio_only)
    v.update(
        zero=zero,
        text=text,
        truncated=truncated,
        broken=d / "broken.mp4",
        audio_only=audio_only,
    )
    return v


def _write_audio_only(path: Path) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w", format="mp4") as out:
        st = out.add_stream("aac", rate=44100)
        for i in range(40):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate = 44100
            frame.pts = i * 1024
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


@pytest.fixture(scope="session")
def real_clip() -> Path:
    """A real Cholec80 clip from ../shared/data (skips when the data is absent)."""
    clips = sorted((SHARED_DATA / "cholec80-clips" / "clips").glob("*.mp4"))
    if not clips:
        skip_or_fail(f"real clips not found under {SHARED_DATA}/cholec80-clips")
    return clips[0]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throw-away PostgreSQL database on the machine's server; its SQLAlchemy URL."""
    from sqlalchemy import create_engine, text

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            pass
    except OSError:
        skip_or_fail("no PostgreSQL server on 127.0.0.1:5432")
    name = f"surg_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """A real HTTP server speaking the S3 (and KMS) API: moto's ThreadedMotoServer."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def create_bucket(endpoint: str, name: str, kms_key_id: str | None = None) -> None:
    """A bucket as S3BlobStore requires it: default encryption on (SSE-KMS given a key)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    default: dict[str, str] = {"SSEAlgorithm": "AES256"}
    if kms_key_id:
        default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key_id}
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": default}]
        },
    )


# A catalog database that does not answer: port 9 (discard) refuses at once, and the timeout
# bounds a machine where something listens there.
UNREACHABLE_CATALOG_URL = "postgresql+psycopg://surg@127.0.0.1:9/none?connect_timeout=2"


def unreachable_registry(resources: dict, home: Path) -> Any:
    """The model registry over the same lake, with its catalog database down."""
    from resources.catalog import Catalog
    from resources.registry import ModelRegistry

    return ModelRegistry(
        catalog=Catalog(url=UNREACHABLE_CATALOG_URL),
        blob_store=resources["blob_store"],
        cache_dir=str(home / "model-cache"),
    )


def fail_registration_then_retry(
    asset: Any,
    dataset: Any,
    resources: dict,
    home: Path,
    run_config: dict,
    swap_kept_weights: bool = False,
) -> tuple[Any, dict[str, bytes], Any, list[str]]:
    """Snapshot the dataset, train ``asset`` with the registry's database down (the run fails
    after training), then run it again with it up. Returns the failed result, what the lake
    kept under training-runs/ between the two (key -> bytes), the retried result and its log.
    ``swap_kept_weights`` overwrites the kept weights between the two runs."""
    import dagster as dg

    blob_store = resources["blob_store"]
    with dg.DagsterInstance.ephemeral() as instance:
        dg.materialize([dataset], instance=instance, resources=resources)
        failed = dg.materialize(
            [asset],
            instance=instance,
            resources={**resources, "registry": unreachable_registry(resources, home)},
            run_config=run_config,
            raise_on_error=False,
        )
        kept = {
            b.key: blob_store.get_bytes(b.key) for b in blob_store.list_prefix("training-runs/")
        }
        if swap_kept_weights:
            (weights,) = [k for k in kept if k.endswith("/weights.pt")]
            blob_store.put_bytes(weights, b"not the weights that were trained")
        retried = dg.materialize(
            [asset], instance=instance, resources=resources, run_config=run_config
        )
        logs = [e.message for e in instance.all_logs(retried.run_id) if e.message]
    return failed, kept, retried, logs


def lake_files(home: Path, prefix: str) -> list[str]:
    """Object keys under a prefix of a local lake (for 'nothing was written' assertions)."""
    root = home / "lake"
    if not root.exists():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix().startswith(prefix)
    )


@pytest.fixture(scope="session")
def synthetic_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short labelled synthetic laparoscopy from the lab (video + ground truth), once per run."""
    from ml_models.synthetic import generate

    folder = tmp_path_factory.mktemp("synthetic-case")
    generate(folder, minutes=0.4, seed=7, size=(426, 240))
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, synthetic_case: Path) -> dict[str, Path]:
    """Tiny models trained once per test run on the synthetic case (not good, but real)."""
    from ml_models.detector import train_detector
    from ml_models.training import (
        detector_dataset,
        sample_cases,
        train_out_of_body,
        train_phases,
    )

    out = tmp_path_factory.mktemp("tiny-models")
    os.environ.setdefault("SURG_HOME", str(out / "home"))
    cases = sample_cases([synthetic_case])
    oob, _ = train_out_of_body(cases, out / "out_of_body_model.pt", epochs=2)
    phase, _ = train_phases(cases, out / "phase_model.pt", encoder_epochs=2, temporal_epochs=10)
    data = detector_dataset([synthetic_case], out / "det-data", val_cases=0)
    # Ultralytics needs a validation split: reuse the training images (quality is not the point).
    text = data.read_text().replace("val: images/val", "val: images/train")
    data.write_text(text)
    # One epoch from scratch finds nothing; one epoch on from the shipped synthetic detector
    # keeps finding instruments, so the tables and checks downstream see real rows.
    shipped = (
        Path(__file__).resolve().parents[1] / "ml_models/default_weights/instrument_detector.pt"
    )
    det = train_detector(data, out / "det-runs", epochs=1, imgsz=160, batch=8, init=shipped)
    return {"instrument_detector": det.weights, "phase_model": phase, "out_of_body_model": oob}
