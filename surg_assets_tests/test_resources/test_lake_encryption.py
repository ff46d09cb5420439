"""The local lake is encrypted at rest: AES-256-GCM in chunks, ranges, tamper detection, keys."""

from __future__ import annotations

import base64
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_models.errors import InputError
from resources.blob_store import LocalBlobStore
from resources.lake_crypto import HEADER_SIZE, TAG_SIZE, BlobIntegrityError
from resources.settings import load_settings
from surg_assets.settings import build_resources
from surg_assets_tests.test_web.conftest import WebServer, start_server

CHUNK = 1000  # small chunks: many of them in a few kilobytes
KEY = "processed-videos/c0123456789abcdef/video.mp4"


def _store(tmp_path: Path, **kw: object) -> LocalBlobStore:
    return LocalBlobStore(
        root=str(tmp_path / "lake"),
        secret_key_file=str(tmp_path / "k"),
        encryption_chunk_bytes=CHUNK,
        **kw,
    )


def _chunk_offset(index: int) -> int:
    return HEADER_SIZE + index * (CHUNK + TAG_SIZE)


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return _store(tmp_path)


@pytest.fixture
def data() -> bytes:
    return os.urandom(5 * CHUNK + 123)


def test_objects_are_unreadable_on_disk_and_read_back_whole_and_by_range(
    store: LocalBlobStore, data: bytes, tmp_path: Path
) -> None:
    store.put_bytes(KEY, data)
    on_disk = (tmp_path / "lake" / KEY).read_bytes()
    assert data[:64] not in on_disk and data[-64:] not in on_disk
    assert len(on_disk) == HEADER_SIZE + len(data) + 6 * TAG_SIZE
    assert store.is_encrypted(KEY)
    assert store.get_bytes(KEY) == data
    assert store.head(KEY).size == len(data)
    assert [i.size for i in store.list_prefix("processed-videos/")] == [len(data)]
    for start, end in [(0, 0), (999, 1000), (1500, 3999), (0, len(data) - 1), (5000, 10**9)]:
        assert b"".join(store.read_range(KEY, start, end)) == data[start : end + 1]
    src = tmp_path / "source.mp4"
    src.write_bytes(data)
    store.put_file("raw-videos/c0123456789abcdef/source.mp4", src)
    with store.local_copy("raw-videos/c0123456789abcdef/source.mp4") as plain:
        assert plain.read_bytes() == data
        assert not plain.is_relative_to(tmp_path / "lake")
        assert plain.parent.stat().st_mode & 0o077 == 0
    assert not plain.exists()
    store.put_bytes("processed-metadata/c0123456789abcdef/empty.json", b"")
    assert store.get_bytes("processed-metadata/c0123456789abcdef/empty.json") == b""


def test_a_range_read_decrypts_only_the_chunks_it_needs(
    store: LocalBlobStore, data: bytes, tmp_path: Path
) -> None:
    store.put_bytes(KEY, data)
    path = tmp_path / "lake" / KEY
    raw = bytearray(path.read_bytes())
    raw[_chunk_offset(4) + 10] ^= 0x01  # damage chunk 4 only
    path.write_bytes(bytes(raw))
    # Chunks 0-3 are still served: each is authenticated on its own.
    assert b"".join(store.read_range(KEY, 0, 4 * CHUNK - 1)) == data[: 4 * CHUNK]
    blocks = store.read_range(KEY, 3 * CHUNK, 5 * CHUNK)
    assert next(blocks) == data[3 * CHUNK : 4 * CHUNK]
    with pytest.raises(BlobIntegrityError, match=f"object {KEY} failed its integrity check"):
        next(blocks)
    # The same through the seekable reader PyAV is given (a block size rounds up to chunks).
    with store.open_ranged(KEY, block_size=CHUNK - 1) as f:
        f.seek(CHUNK + 10)
        assert f.read(2 * CHUNK) == data[CHUNK + 10 : 3 * CHUNK + 10]
        assert f.fetched_bytes == 3 * CHUNK  # chunks 1-3 only
        f.seek(-10, io.SEEK_END)
        assert f.read() == data[-10:]
        with pytest.raises(BlobIntegrityError, match=f"object {KEY}"):
            f.seek(4 * CHUNK)
            f.read(10)


@pytest.mark.parametrize("attack", ["flip", "swap", "truncate", "drop-last", "append", "header"])
def test_a_tampered_object_is_detected_and_never_served(
    store: LocalBlobStore, data: bytes, tmp_path: Path, attack: str
) -> None:
    store.put_bytes(KEY, data)
    path = tmp_path / "lake" / KEY
    raw = bytearray(path.read_bytes())
    one = CHUNK + TAG_SIZE
    if attack == "flip":
        raw[_chunk_offset(2) + 5] ^= 0x80
    elif attack == "swap":  # two whole chunks exchanged: each still carries a valid tag
        a, b = _chunk_offset(1), _chunk_offset(2)
        raw[a : a + one], raw[b : b + one] = raw[b : b + one], raw[a : a + one]
    elif attack == "truncate":
        del raw[-1]
    elif attack == "drop-last":  # a whole chunk removed and the header's length shortened
        del raw[_chunk_offset(5) :]
        raw[12:20] = (5 * CHUNK).to_bytes(8, "big")
    elif attack == "append":
        raw += raw[_chunk_offset(0) : _chunk_offset(1)]
    else:
        raw[HEADER_SIZE - 1] ^= 0x01  # the salt: every chunk's key changes
    path.write_bytes(bytes(raw))
    with pytest.raises(BlobIntegrityError):
        store.get_bytes(KEY)
    with pytest.raises(BlobIntegrityError):
        b"".join(store.read_range(KEY, 0, len(data) - 1))
    out = tmp_path / "out.mp4"
    with pytest.raises(BlobIntegrityError):
        store.download(KEY, out)
    assert not out.exists()  # nothing half-written


def test_an_object_copied_to_another_key_does_not_decrypt(
    store: LocalBlobStore, data: bytes, tmp_path: Path
) -> None:
    store.put_bytes(KEY, data)
    other = "processed-videos/c00000000000000ff/video.mp4"
    store.put_bytes(other, b"x")
    (tmp_path / "lake" / other).write_bytes((tmp_path / "lake" / KEY).read_bytes())
    with pytest.raises(BlobIntegrityError):
        store.get_bytes(other)


def test_the_generated_key_file_is_private_outside_the_lake_and_never_in_errors(
    tmp_path: Path, data: bytes
) -> None:
    store = _store(tmp_path)
    store.put_bytes(KEY, data)
    key_file = tmp_path / "lake.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert not list((tmp_path / "lake").rglob("*.key"))
    # Another process with the same key file reads it; another key does not.
    assert _store(tmp_path).get_bytes(KEY) == data
    other_key = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(BlobIntegrityError, match="SURG_LAKE_KEY"):
        _store(tmp_path, encryption_key=other_key).get_bytes(KEY)
    # A key given as a setting wins over the file, and the same key in a named file reads too.
    given = _store(tmp_path / "b", encryption_key=other_key)
    given.put_bytes(KEY, data)
    assert not (tmp_path / "b" / "lake.key").exists()
    named = tmp_path / "named.key"
    named.write_text(other_key)
    assert _store(tmp_path / "b", encryption_key_file=str(named)).get_bytes(KEY) == data
    with pytest.raises(InputError, match="SURG_LAKE_KEY") as bad:
        _store(tmp_path, encryption_key="c2hvcnQ=").get_bytes(KEY)
    assert "c2hvcnQ=" not in str(bad.value)
    with pytest.raises(InputError, match="does not exist"):
        _store(tmp_path, encryption_key_file=str(tmp_path / "missing.key")).get_bytes(KEY)


def test_only_dropped_raw_videos_may_be_unencrypted(
    store: LocalBlobStore, data: bytes, tmp_path: Path
) -> None:
    dropped = tmp_path / "lake" / "raw-videos" / "Patient Jane Doe.mp4"
    dropped.parent.mkdir(parents=True)
    dropped.write_bytes(data)
    info = store.list_prefix("raw-videos/")[0]
    assert info.size == len(data) and store.get_bytes(info.key) == data
    with store.open_ranged(info.key) as f:  # read by range as it is
        f.seek(4000)
        assert f.read(200) == data[4000:4200]
    store.move(info.key, "raw-videos/c0123456789abcdef/source.mp4")
    assert store.is_encrypted("raw-videos/c0123456789abcdef/source.mp4")
    assert store.get_bytes("raw-videos/c0123456789abcdef/source.mp4") == data
    # A plain file anywhere the platform writes is refused (someone replaced an object).
    planted = tmp_path / "lake" / KEY
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"planted")
    with pytest.raises(BlobIntegrityError, match="stored unencrypted"):
        store.get_bytes(KEY)
    with pytest.raises(BlobIntegrityError, match="stored unencrypted"), store.open_ranged(KEY):
        pass
    # With encryption off the lake is plain, and what was written encrypted still reads.
    plain = _store(tmp_path, encrypt_at_rest=False)
    assert plain.get_bytes(KEY) == b"planted"
    plain.put_bytes("processed-metadata/c0123456789abcdef/a.json", b"{}")
    assert (tmp_path / "lake/processed-metadata/c0123456789abcdef/a.json").read_bytes() == b"{}"
    assert plain.get_bytes("raw-videos/c0123456789abcdef/source.mp4") == data


def test_the_embedded_default_lake_is_encrypted(
    surg_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = build_resources(load_settings())["blob_store"]
    store.put_bytes("processed-metadata/c0123456789abcdef/analysis.json", b'{"phase": 1}')
    assert store.is_encrypted("processed-metadata/c0123456789abcdef/analysis.json")
    assert (surg_home / "lake.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("SURG_LAKE_ENCRYPTION", "maybe")
    with pytest.raises(InputError, match="SURG_LAKE_ENCRYPTION"):
        build_resources(load_settings())


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    yield from start_server(tmp_path_factory.mktemp("encrypted-web"))


def test_the_player_gets_no_bytes_of_a_tampered_video(web: WebServer, videos: dict) -> None:
    from surg_assets_tests.test_web.helpers import upload

    data = videos["good"].read_bytes()
    case_id = upload(web.client("sam"), data, name="good.mp4")["case_id"]
    key = f"processed-videos/{case_id}/video.mp4"
    web.blob_store.put_bytes(key, data)
    c = web.client("sam")
    part = c.get(f"/api/cases/{case_id}/video", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    path = Path(web.blob_store.root) / key
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 150] ^= 0x01  # inside the first 1 MiB chunk
    path.write_bytes(bytes(raw))
    r = c.get(f"/api/cases/{case_id}/video", headers={"Range": "bytes=100-199"})
    assert r.status_code == 500 and "integrity" in r.json()["error"]
    assert data[100:200] not in r.content


def test_a_chunk_of_a_video_decodes_from_the_lake_by_range(tmp_path: Path) -> None:
    """What a detection chunk does: PyAV reads the encrypted video by range, seeks to its
    start, and gets exactly the frames a plain file gives, fetching a fraction of the video."""
    import numpy as np

    from ml_models.video import VideoLimits, sample_frames, transcode, write_sample_video

    plain = tmp_path / "video.mp4"
    transcode(write_sample_video(tmp_path / "src.mp4", seconds=40, size=(640, 360)), plain,
              VideoLimits())  # fmt: skip
    store = LocalBlobStore(root=str(tmp_path / "lake"), encryption_chunk_bytes=16_384)
    store.put_file(KEY, plain)

    def chunk(video: object) -> list[tuple[float, np.ndarray]]:
        return [(f.t_s, f.bgr) for f in sample_frames(video, 5, start_s=30, end_s=34)]

    expected = chunk(plain)
    with store.open_ranged(KEY, block_size=16_384) as f:
        got = chunk(f)
        fetched, size = f.fetched_bytes, f.size
    assert [t for t, _ in got] == [t for t, _ in expected] and len(got) == 20
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected, strict=True))
    assert fetched < 0.4 * size  # the header, the index and 4 s of 40 (a whole copy: 100%)
    # A consumer that stops early (an error downstream) closes the reader only once the
    # decoding thread has let go of it.
    with store.open_ranged(KEY, block_size=16_384) as f:
        stream = sample_frames(f, 5)
        next(stream)
        stream.close()
        assert not [t for t in threading.enumerate() if t.name == "surg-decode"]
    # A damaged chunk inside the range stops the decode with the store's integrity error.
    path = tmp_path / "lake" / KEY
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + int(0.8 * size) // 16_384 * (16_384 + TAG_SIZE) + 5] ^= 0x01
    path.write_bytes(bytes(raw))
    with store.open_ranged(KEY) as f, pytest.raises(BlobIntegrityError, match=f"object {KEY}"):
        chunk(f)
