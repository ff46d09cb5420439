"""A case run SIGKILLed mid-way re-executes to completion; no reader sees half an object."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from ml_models.video import inspect_layout, write_sample_video
from resources.settings import load_settings
from surg_assets.settings import build_resources

SECONDS, FPS = 20, 25
SURG = str(Path(sys.executable).with_name("surg"))
PREFIXES = ("processed-videos/", "processed-metadata/")


def _check_object(store, key: str) -> str | None:
    """None if the object is whole (parses / decodes end to end), else what is wrong."""
    name = key.rsplit("/", 1)[-1]
    if name.startswith(".") or any(w in name.lower() for w in ("tmp", "partial", "part-")):
        return f"a temporary object is visible: {key}"
    try:
        if name.endswith(".parquet"):
            pq.read_table(io.BytesIO(store.get_bytes(key)))
        elif name.endswith(".json"):
            json.loads(store.get_bytes(key))
        elif name.endswith(".mp4"):
            with store.local_copy(key) as path:
                frames = inspect_layout(path).frame_count
            if frames != SECONDS * FPS:
                return f"{key} holds {frames} of {SECONDS * FPS} frames"
    except Exception as exc:  # noqa: BLE001 - any failure to read is what we are looking for
        if not store.exists(key):
            return None  # replaced or removed between listing and reading: not half-written
        return f"{key} is unreadable: {type(exc).__name__}: {exc}"
    return None


class Reader(threading.Thread):
    """Lists the processed prefixes over and over, reading every new version of every object."""

    def __init__(self, store) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.checked: set[str] = set()
        self._seen: set[tuple] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sweep()
            time.sleep(0.05)

    def sweep(self) -> None:
        for prefix in PREFIXES:
            for info in self.store.list_prefix(prefix):
                version = (info.key, info.size, info.last_modified)
                if version in self._seen:
                    continue
                self._seen.add(version)
                problem = _check_object(self.store, info.key)
                if problem:
                    self.problems.append(problem)
                else:
                    self.checked.add(info.key)


def _analyze(video: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [SURG, "analyze", str(video), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill reaches every child
    )


def test_a_killed_case_run_reexecutes_and_no_reader_sees_half_an_object(
    surg_home: Path, tmp_path: Path
) -> None:
    video = write_sample_video(tmp_path / "case.mp4", seconds=SECONDS, fps=FPS, size=(320, 240))
    store = build_resources(load_settings())["blob_store"]
    reader = Reader(store)
    reader.start()

    first = _analyze(video, tmp_path / "out1")
    deadline = time.monotonic() + 300
    while not store.list_prefix("processed-videos/") and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()[1][-2000:]
        time.sleep(0.1)
    time.sleep(1.0)  # into the perception steps (models loading, inference, tables written)
    assert first.poll() is None, "the run ended before it could be killed"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    keys = [i.key for p in PREFIXES for i in store.list_prefix(p)]
    case_id = keys[0].split("/")[1]
    assert f"processed-metadata/{case_id}/report.json" not in keys  # really cut short
    catalog = build_resources(load_settings())["catalog"]
    assert catalog.get_case(case_id).status == "analysing"

    second = _analyze(video, tmp_path / "out2")
    stdout, stderr = second.communicate(timeout=900)
    reader.stop.set()
    reader.join(timeout=120)
    assert second.returncode == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == case_id  # the same bytes, the same case
    assert catalog.get_case(case_id).status == "ready"

    reader.sweep()  # the final state too
    assert reader.problems == []
    for name in ("video.mp4", "deidentified.mp4"):
        assert f"processed-videos/{case_id}/{name}" in reader.checked
    for name in ("events.parquet", "detections.parquet", "tracks.parquet", "phases.parquet"):
        assert f"processed-metadata/{case_id}/{name}" in reader.checked
    assert f"processed-metadata/{case_id}/report.json" in reader.checked
    # The killed run was released (failed, its gpu pool slot freed) instead of blocking forever.
    with dg.DagsterInstance.from_config(str(surg_home / "dagster")) as instance:
        statuses = sorted(r.status.value for r in instance.get_runs())
        assert statuses == ["FAILURE", "SUCCESS"]
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
    summary = json.loads((tmp_path / "out2" / "case.json").read_text())
    assert summary["status"] == "ready" and "report.json" in summary["outputs"]
