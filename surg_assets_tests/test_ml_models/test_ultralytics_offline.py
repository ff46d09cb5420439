"""Ultralytics must never reach for the network: training, validation, prediction, tracking.

The child process runs with every outbound connection (socket connect, DNS lookup, urllib) and
ultralytics' own download helpers replaced by functions that record the attempt and fail, so a
download that ultralytics would otherwise retry quietly shows up here as a test failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

GUARD = textwrap.dedent(
    """
    import json, os, socket, urllib.request
    LOG = os.environ["SURG_NET_LOG"]

    def _record(what, detail):
        with open(LOG, "a") as fh:
            fh.write(json.dumps({"what": what, "detail": str(detail)[:200]}) + "\\n")

    def _connect(self, address, *a, **k):
        if isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1", "localhost"):
            return _orig_connect(self, address, *a, **k)
        _record("connect", address)
        raise OSError("network disabled by the offline test")

    def _getaddrinfo(host, *a, **k):
        if host in ("127.0.0.1", "::1", "localhost", None):
            return _orig_getaddrinfo(host, *a, **k)
        _record("dns", host)
        raise socket.gaierror("network disabled by the offline test")

    def _urlopen(url, *a, **k):
        _record("urlopen", getattr(url, "full_url", url))
        raise OSError("network disabled by the offline test")

    _orig_connect, _orig_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    socket.socket.connect, socket.getaddrinfo = _connect, _getaddrinfo
    urllib.request.urlopen = _urlopen
    """
)

SCRIPT = textwrap.dedent(
    """
    import json, os, socket, sys
    assert socket.socket.connect.__name__ == "_connect", "the network guard is not active"
    from ml_models.ultra import ultralytics_offline
    ultralytics_offline()
    import ultralytics.utils.downloads as dl
    def _no_download(*a, **k):
        with open(os.environ["SURG_NET_LOG"], "a") as fh:
            fh.write(json.dumps({"what": "download", "detail": str(a)[:200]}) + "\\n")
        raise RuntimeError("download attempted")
    dl.safe_download = _no_download
    from ml_models.detector import train_detector, evaluate_detector, load_model, detect_video
    from ml_models.tracking import track_detections
    data, video, out = sys.argv[1:4]
    r = train_detector(data, out, epochs=1, imgsz=128, batch=4)
    evaluate_detector(r.weights, data, imgsz=128)
    model = load_model(r.weights)
    table, run = detect_video(model, video, "c1", "v", sample_fps=2, imgsz=128, conf=0.001)
    track_detections(table, (160, 120), 2.0)
    # The pipeline's own path: the ONNX export (ultralytics checks for onnx, onnxslim and
    # onnxruntime there) and the BoT-SORT tracker.
    graph = load_model(r.weights, "onnx", 128, cache_dir=out)
    onnx_table, onnx_run = detect_video(graph, video, "c1", "v", sample_fps=2, imgsz=128,
                                        conf=0.001)
    track_detections(onnx_table, (160, 120), 2.0, tracker="botsort")
    exported = [str(p) for p in __import__("pathlib").Path(out).glob("*.onnx")]
    print(json.dumps({"frames": run.frames, "weights": str(r.weights),
                      "onnx_frames": onnx_run.frames, "onnx": exported}))
    """
)


def _tiny_yolo_seg_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(4):
            img = rng.integers(0, 80, (128, 128, 3), dtype=np.uint8)
            x = 20 + 10 * i
            cv2.rectangle(img, (x, 40), (x + 40, 70), (230, 230, 230), -1)
            cv2.imwrite(str(root / "images" / split / f"{i}.jpg"), img)
            x1, x2, y1, y2 = x / 128, (x + 40) / 128, 40 / 128, 70 / 128
            (root / "labels" / split / f"{i}.txt").write_text(
                f"2 {x1} {y1} {x2} {y1} {x2} {y2} {x1} {y2}\n"
            )
    data = root / "data.yaml"
    data.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\n"
        "names: {0: grasper, 1: bipolar, 2: hook, 3: scissors, 4: clipper, 5: irrigator, "
        "6: specimen_bag}\n"
    )
    return data


def _guarded(tmp_path: Path, script: str, *args: Path | str) -> tuple[Any, list[str]]:
    """Run a script in a child whose network is cut off; its result and the attempts made."""
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir(exist_ok=True)
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "net.log"
    env = {
        **os.environ,
        "PYTHONPATH": f"{guard_dir}{os.pathsep}{REPO}",
        "SURG_NET_LOG": str(log),
        "SURG_HOME": str(tmp_path / "home"),
        "YOLO_CONFIG_DIR": str(tmp_path / "yolo-config"),
    }
    env.pop("YOLO_OFFLINE", None)  # the project must set it itself
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, log.read_text().splitlines() if log.exists() else []


def test_training_and_inference_make_no_network_attempt(tmp_path: Path) -> None:
    from ml_models.video import write_sample_video

    data = _tiny_yolo_seg_dataset(tmp_path / "ds")
    video = write_sample_video(tmp_path / "v.mp4", seconds=2, fps=10, size=(160, 120))
    proc, attempts = _guarded(tmp_path, SCRIPT, data, video, tmp_path / "runs")
    assert attempts == [], f"ultralytics tried the network: {attempts[:5]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["frames"] == 4 and Path(result["weights"]).is_file()
    assert result["onnx_frames"] == 4 and len(result["onnx"]) == 1
    # Its settings file lives in the configured folder, never in the user's home.
    settings_files = list((tmp_path / "yolo-config").rglob("settings.json"))
    assert len(settings_files) == 1
    settings = json.loads(settings_files[0].read_text())
    assert settings["sync"] is False


REFUSALS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from ml_models.detector import evaluate_detector, train_detector
    from ml_models.errors import InputError
    data, downloading, out = sys.argv[1:4]
    calls = {
        "pretrained name": lambda: train_detector(data, out, 1, 64, init="yolo11n-seg.pt"),
        "yaml address": lambda: train_detector(data, out, 1, 64, init="https://x.org/m.yaml"),
        "download entry": lambda: train_detector(downloading, out, 1, 64),
        "evaluation": lambda: evaluate_detector("yolo11n-seg.yaml", downloading, 64),
    }
    said = {}
    for name, call in calls.items():
        try:
            call()
            said[name] = None
        except InputError as e:
            said[name] = str(e)
    print(json.dumps(said))
    """
)


def test_what_ultralytics_would_download_is_refused_first(tmp_path: Path) -> None:
    """A weights name ultralytics knows (COCO-pretrained ``yolo11n-seg.pt``), a model yaml
    given by address, and a data.yaml whose missing images it would fetch (or whose code it
    would run) each get one clear error before ultralytics sees them."""
    data = _tiny_yolo_seg_dataset(tmp_path / "ds")
    marker = tmp_path / "ran"
    downloading = tmp_path / "ds" / "fetch.yaml"
    downloading.write_text(
        data.read_text().replace("val: images/val", "val: images/elsewhere")
        + f"download: |\n  open({str(marker)!r}, 'w').write('x')\n"
    )
    proc, attempts = _guarded(tmp_path, REFUSALS_SCRIPT, data, downloading, tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["pretrained name"].startswith("--model yolo11n-seg.pt: no such weights file")
    assert "No weights are downloaded here" in said["pretrained name"]
    assert said["yaml address"].startswith("--model m.yaml: no such weights file")
    for name in ("download entry", "evaluation"):
        assert said[name].startswith("fetch.yaml has a download entry"), said[name]
    # Without the entry, the missing folder itself is named.
    downloading.write_text(data.read_text().replace("val: images/val", "val: images/elsewhere"))
    proc, more = _guarded(tmp_path, REFUSALS_SCRIPT, data, downloading, tmp_path / "runs")
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["download entry"].startswith("fetch.yaml: its val images (")
    assert "images/elsewhere) do not exist" in said["download entry"]
    assert attempts == more == [] and not marker.exists()
    assert not (tmp_path / "runs").exists()  # nothing half-written


THREADS_SCRIPT = textwrap.dedent(
    """
    import json, os
    import numpy as np
    from ml_models.ultra import ultralytics_offline
    ultralytics_offline()
    import torch
    from ultralytics import YOLO
    YOLO("yolo11n-seg.yaml", task="segment").predict(
        np.zeros((64, 64, 3), np.uint8), imgsz=64, device="cpu", verbose=False
    )
    print(json.dumps({"torch": torch.get_num_threads(), "omp": os.environ["OMP_NUM_THREADS"]}))
    """
)


def _threads_after_predict(tmp_path: Path, omp: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SURG_HOME": str(tmp_path / "home")}
    env.pop("OMP_NUM_THREADS", None)
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    proc = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cpu_inference_keeps_every_core(tmp_path: Path) -> None:
    """Ultralytics alone leaves torch one thread on a 2-core machine (``cpu_count - 1``)."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one usable core: ultralytics' cpu_count - 1 threads is all of it")
    assert _threads_after_predict(tmp_path, None) == {"torch": cores, "omp": str(cores)}
    # An operator's own limit is kept, for torch and for child processes alike.
    assert _threads_after_predict(tmp_path, "1") == {"torch": 1, "omp": "1"}


def test_detection_passes_no_deprecated_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ultralytics warns on every batch about a deprecated argument (8.4: ``half``)."""
    from ml_models.detector import detect_video
    from ml_models.ultra import ultralytics_offline
    from ml_models.video import write_sample_video

    ultralytics_offline()
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    warned: list[str] = []
    monkeypatch.setattr(LOGGER, "warning", lambda msg, *a, **k: warned.append(str(msg)))
    video = write_sample_video(tmp_path / "v.mp4", seconds=2, fps=10, size=(160, 120))
    model = YOLO("yolo11n-seg.yaml", task="segment")
    _, run = detect_video(model, video, "c1", "v", sample_fps=2, imgsz=64, device="cpu")
    assert run.frames == 4
    assert [w for w in warned if "deprecated" in w] == []
