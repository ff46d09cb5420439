"""The INT8 lever: our detection path with a statically quantised graph, and what it costs.

Same video, same weights (the Approved default detector), same sampling (5 fps) and input size
(320 px) as ``pipeline_speed.py``'s "ours"; FP32 ONNX and INT8 ONNX (``int8_graph``: QDQ,
calibrated on frames of a *different* real clip) run interleaved in one process, with the
baseline (ultralytics ``YOLO.track``, 640 px) beside them. Accuracy cost, reported separately:

- agreement: mAP50 of the INT8 detections scored against the FP32 ones on the clip's frames;
- validation: box mAP50 of each graph against the labels of the project's validation split of
  ``cholec80-tools-yolo`` (by image, ``assign_splits``, as ``surg train detector``), and the
  difference.

Appends a table to BENCHMARKS.md::

    python bench/int8_speed.py [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pipeline_speed import _weights, agreement, baseline  # noqa: E402


def _ours(model: object, video: str) -> tuple[float, list]:
    from ml_models.detector import detect_video
    from ml_models.tracking import track_detections
    from ml_models.video import probe_video

    probe = probe_video(video)
    started = time.perf_counter()
    table, run = detect_video(model, video, "bench", "v", sample_fps=5.0, imgsz=320, conf=0.05)
    track_detections(table, (probe.width, probe.height), 5.0)
    fps = run.frames / (time.perf_counter() - started)
    rows = [
        (int(r.frame_index), [r.x1, r.y1, r.x2, r.y2], float(r.confidence), int(r.class_id))
        for r in table.to_pandas().itertuples()
    ]
    return fps, rows


def validation_map50(model: object) -> float:
    """Box mAP50 on the project's validation split of cholec80-tools-yolo."""
    import cv2

    from ml_models.datasets import assign_splits
    from ml_models.formats.model import Annotation
    from ml_models.formats.yolo import load_yolo
    from ml_models.metrics.detection import detection_map

    root = SHARED / "cholec80-tools-yolo"
    truth = [a for a in load_yolo(root).annotations if a.box is not None and a.image]
    split = assign_splits(Path(a.image).stem for a in truth)
    truth = [a for a in truth if split[Path(a.image).stem] == "val"]
    preds = []
    for image in sorted({a.image for a in truth}):
        ref = next(a for a in truth if a.image == image)
        r = model.predict(cv2.imread(str(root / image)), imgsz=320, conf=0.001, verbose=False)[0]
        for b, c, k in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist(),
                           strict=True):  # fmt: skip
            preds.append(
                Annotation(
                    kind="instrument",
                    video=ref.video,
                    frame_index=ref.frame_index,
                    box=tuple(b),
                    class_id=int(k),
                    class_name=ref_name(int(k)),
                    score=c,
                    image=image,
                    image_width=ref.image_width,
                    image_height=ref.image_height,
                )  # fmt: skip
            )
    return detection_map(truth, preds).map50


def ref_name(class_id: int) -> str:
    """Label name of a detector class id, as the YOLO importer names them."""
    from ml_models.formats.cholec80 import INSTRUMENT_CLASSES

    return INSTRUMENT_CLASSES[class_id]


def _int8_isa() -> str:
    """Whether the CPU has the int8 dot-product instructions ONNX Runtime's int8 kernels use."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "with VNNI" if "vnni" in flags else "no VNNI (AVX2 int8 kernels)"


def main() -> None:
    """Quantise, measure both graphs and the baseline in one process, append to BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1, help="Runs of each graph (1 in make bench).")
    args = parser.parse_args()
    clips = sorted((SHARED / "cholec80-clips" / "clips").glob("*.mp4"))
    if len(clips) < 2:
        sys.exit("needs two real clips under ../shared/data/cholec80-clips/clips")
    video, calibration_clip = str(clips[0]), str(clips[1])
    from ultralytics import YOLO

    from ml_models.detector import int8_graph, load_model, onnx_graph
    from ml_models.video import sample_frames

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = onnx_graph(Path(_weights()), 320, tmp)
        calibration = [f.bgr for f in sample_frames(calibration_clip, 1.0)]
        started = time.perf_counter()
        int8_path = int8_graph(fp32_path, calibration, 320, Path(tmp) / "int8.onnx")
        quantise_s = time.perf_counter() - started
        fp32 = load_model(_weights(), "onnx", 320, tmp)
        int8 = YOLO(str(int8_path), task="segment")
        runs: dict[str, list[float]] = {"baseline": [], "fp32": [], "int8": []}
        for _ in range(args.runs):
            runs["baseline"].append(baseline(video, 640, 5)["fps"])
            fps32, rows32 = _ours(fp32, video)
            fps8, rows8 = _ours(int8, video)
            runs["fp32"].append(fps32)
            runs["int8"].append(fps8)
        med = statistics.median
        ratio = med(i / b for i, b in zip(runs["int8"], runs["baseline"], strict=True))
        ratio32 = med(f / b for f, b in zip(runs["fp32"], runs["baseline"], strict=True))
        agree = agreement(rows32, rows8)
        val32, val8 = validation_map50(fp32), validation_map50(int8)
    lines = [
        f"\n## INT8 detector (static QDQ), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"`python bench/int8_speed.py --runs {args.runs}` on {Path(video).name} "
        f"({platform.machine()}, {os.cpu_count()} cores, {_int8_isa()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end); calibrated on 1 fps frames of "
        f"{Path(calibration_clip).name} ({len(calibration)} frames, {quantise_s:.0f} s). Ours "
        "(detections + tracks, 320 px, 5 fps) with each graph, interleaved with the baseline; "
        f"median of {args.runs} runs.\n",
        "| figure | value | target |",
        "|---|---:|---:|",
        f"| baseline `YOLO.track(vid_stride=5)` fps | {med(runs['baseline']):.2f} | |",
        f"| ours FP32 ONNX fps | {med(runs['fp32']):.2f} | |",
        f"| ours INT8 ONNX fps | {med(runs['int8']):.2f} | |",
        f"| ours FP32 / baseline (same run) | {ratio32:.2f}x | >= 5x |",
        f"| ours INT8 / baseline (same run) | {ratio:.2f}x | |",
        f"| INT8 agreement with FP32 on the clip (mAP50) | {agree:.3f} | |",
        f"| validation box mAP50, FP32 | {val32:.3f} | |",
        f"| validation box mAP50, INT8 | {val8:.3f} | |",
        f"| INT8 accuracy cost (mAP50, FP32 - INT8) | {val32 - val8:.3f} | <= 0.01 |",
        "",
    ]
    print("\n".join(lines))
    with (REPO / "BENCHMARKS.md").open("a") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
