"""How fast the case pipeline runs next to the obvious alternative, on this machine.

Stages, each timed on the same video with the same Approved detector weights and the same
sampling (5 fps from 25 fps video), median of ``--runs`` runs:

1. baseline: ultralytics ``YOLO(weights).track(source=video, stream=True, vid_stride=k)``;
2. ours: ``detect_video`` with a parquet sink (threaded PyAV decode, batched inference, rows
   streamed to the file) + ``track_detections_to_parquet``, with the detector in the runtime
   the pipeline uses on a CPU (``DetectionConfig().runtime``: ONNX Runtime);
3. decode limit: PyAV decoding every frame and nothing else;
4. model limit: the detector alone (same runtime) on pre-decoded, pre-resized frames in memory;
5. full case: ``surg analyze`` wall time (every case asset) as a multiple of real time;
6. memory: peak RSS of 2 and 5 (each in its own process).

Also the agreement of ours with the baseline: mAP50 of our detections scored against the
baseline's as ground truth (1.0 = the same detections). Appends a table to BENCHMARKS.md and draws
``docs/images/pipeline_speed.png``::

    python bench/pipeline_speed.py [--video PATH] [--runs 3] [--imgsz 640] [--quick]
        [--long VIDEO ...]

It also profiles one steady-state case (``bench/_case_profile.py``: another real clip analysed
first in the same SURG_HOME, then per-step wall and CPU seconds and the fixed overheads) and
writes that breakdown under the table: the measured distance to the full-case target, and why.
``--quick`` (one run) keeps ``make bench`` short; ``--long`` adds peak RSS of ours
and of ``surg analyze`` on longer videos (minutes each on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def _weights() -> str:
    from surg_assets.models import default_weights_file

    return str(default_weights_file("instrument_detector"))


def pipeline_model(imgsz: int) -> object:
    """The detector as ``instrument_detections`` runs it on a CPU: the runtime of its default
    config (ONNX Runtime), exported at ``imgsz``, the export cached outside the repository."""
    from ml_models.detector import load_model
    from surg_assets.assets.perception import DetectionConfig

    cache = Path(tempfile.gettempdir()) / "surg-bench-model-cache"
    return load_model(_weights(), runtime=DetectionConfig().runtime, imgsz=imgsz, cache_dir=cache)


def baseline(video: str, imgsz: int, stride: int) -> dict:
    """The obvious way: ultralytics' own tracker loop over the file."""
    from ml_models.ultra import ultralytics_offline

    ultralytics_offline()
    from ultralytics import YOLO

    model = YOLO(_weights(), task="segment")
    started = time.perf_counter()
    frames, boxes = 0, []
    for i, r in enumerate(
        model.track(source=video, stream=True, vid_stride=stride, imgsz=imgsz, verbose=False)
    ):
        frames += 1
        if r.boxes is not None:
            for b, c, k in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist(),
                               strict=True):  # fmt: skip
                boxes.append((i * stride, b, c, int(k)))
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "boxes": boxes}


def ours(video: str, imgsz: int, sample_fps: float, keep_boxes: bool = True) -> dict:
    """Our detection + tracking stages (``keep_boxes=False``: no copy of the boxes for the
    agreement, so a peak-RSS child measures the pipeline and not the bench)."""
    import pyarrow.parquet as pq

    from ml_models.detector import detect_video
    from ml_models.tracking import track_detections_to_parquet
    from ml_models.video import probe_video
    from surg_assets.assets.perception import TrackingConfig

    model = pipeline_model(imgsz)
    probe = probe_video(video)
    with tempfile.TemporaryDirectory() as tmp:
        # Through parquet files, as the case assets run it: memory flat in video length.
        detections = Path(tmp) / "detections.parquet"
        started = time.perf_counter()
        _, run = detect_video(
            model, video, "bench", "v", sample_fps=sample_fps, imgsz=imgsz, sink=detections
        )
        track_detections_to_parquet(
            detections,
            Path(tmp) / "tracks.parquet",
            (probe.width, probe.height),
            sample_fps,
            TrackingConfig().tracker,  # the pipeline's
        )
        seconds = time.perf_counter() - started
        columns = ["frame_index", "x1", "y1", "x2", "y2", "confidence", "class_id"]
        table = pq.read_table(detections, columns=columns) if keep_boxes else None
    boxes = [
        (int(r.frame_index), [r.x1, r.y1, r.x2, r.y2], float(r.confidence), int(r.class_id))
        for r in (table.to_pandas().itertuples() if table is not None else [])
    ]
    return {"frames": run.frames, "seconds": seconds, "fps": run.frames / seconds, "boxes": boxes}


def decode_limit(video: str) -> dict:
    """PyAV decoding every frame, threaded, no conversion."""
    import av

    started = time.perf_counter()
    n = 0
    with av.open(video) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for _ in c.decode(s):
            n += 1
    seconds = time.perf_counter() - started
    return {"frames": n, "seconds": seconds, "fps": n / seconds}


def model_limit(video: str, imgsz: int, sample_fps: float, batch: int = 8) -> dict:
    """The detector alone on frames already decoded and resized, in memory."""
    import cv2

    from ml_models.video import sample_frames

    model = pipeline_model(imgsz)
    frames = []
    for f in sample_frames(video, sample_fps):
        h, w = f.bgr.shape[:2]
        scale = imgsz / max(h, w)
        frames.append(cv2.resize(f.bgr, (round(w * scale), round(h * scale))))
    started = time.perf_counter()
    for i in range(0, len(frames), batch):
        model.predict(frames[i : i + batch], imgsz=imgsz, verbose=False)
    seconds = time.perf_counter() - started
    return {"frames": len(frames), "seconds": seconds, "fps": len(frames) / seconds}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that across fork and exec, so a child
    started by this (large) bench process would report the bench's own peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


# `surg analyze` as the console script runs it, printing its own peak RSS on the way out.
_SURG_WITH_PEAK = (
    "import atexit, sys; sys.path.insert(0, {bench!r}); from pipeline_speed import peak_rss_mb; "
    "atexit.register(lambda: print('PEAK_RSS_MB', peak_rss_mb(), file=sys.stderr)); "
    "from surg_assets.cli import main; sys.argv = ['surg', *sys.argv[1:]]; main()"
)


def full_case(video: str) -> dict:
    """`surg analyze` in a fresh SURG_HOME, as a user runs it."""
    from ml_models.video import probe_video

    duration = probe_video(video).duration_s
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "SURG_HOME": home}
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _SURG_WITH_PEAK.format(bench=str(REPO / "bench")), "analyze",
             video, "--out", f"{home}/out"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    peak_mb = float(proc.stderr.rsplit("PEAK_RSS_MB", 1)[1].split()[0])
    return {"seconds": seconds, "x_real_time": duration / seconds, "peak_rss_mb": peak_mb}


def case_profile(video: str, warm_with: str | None) -> dict:
    """Per-step wall and CPU seconds of one steady-state case (``bench/_case_profile.py``),
    in a fresh process so imports and model loading count as they do for a user."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, str(REPO / "bench" / "_case_profile.py"), video, "--json", out.name]
        subprocess.run(
            cmd + (["--warm-with", warm_with] if warm_with else []),
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return json.loads(Path(out.name).read_text())


def same_frames(video: str, imgsz: int, stride: int, ours_imgsz: int) -> tuple[list, list]:
    """Detections of ultralytics' own loader and of our path (PyAV decode, batches) on the frames
    ``vid_stride`` picks (it grabs ``stride`` frames, then keeps the last: 4, 9, 14...)."""
    from ml_models.detector import load_model, results_to_rows
    from ml_models.video import sample_frames

    model = load_model(_weights())  # the baseline's: ultralytics on the PyTorch weights
    reference = [
        (i * stride + stride - 1, b, c, int(k))
        for i, r in enumerate(
            model.predict(source=video, stream=True, vid_stride=stride, imgsz=imgsz, conf=0.05,
                          verbose=False)  # fmt: skip
        )
        for b, c, k in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist(),
                           strict=True)
    ]  # fmt: skip
    frames = [f for f in sample_frames(video, 25.0) if f.frame_index % stride == stride - 1]
    ours_model = pipeline_model(ours_imgsz)
    rows = []
    for i in range(0, len(frames), 8):
        batch = frames[i : i + 8]
        results = ours_model.predict(
            [f.bgr for f in batch], imgsz=ours_imgsz, conf=0.05, verbose=False
        )
        rows += results_to_rows(results, batch, "bench", "v")
    ours_rows = [(r["frame_index"], [r["x1"], r["y1"], r["x2"], r["y2"]], r["confidence"],
                  r["class_id"]) for r in rows]  # fmt: skip
    return reference, ours_rows


def agreement(reference: list, candidate: list) -> float:
    """mAP50 of ``candidate`` scored against ``reference`` as ground truth."""
    from ml_models.formats.model import Annotation
    from ml_models.metrics.detection import detection_map

    def anns(rows: list, scored: bool) -> list[Annotation]:
        return [
            Annotation(kind="box", video="v", frame_index=f, box=tuple(b), class_id=k,
                       class_name=str(k), score=c if scored else None)
            for f, b, c, k in rows
        ]  # fmt: skip

    if not reference:
        return float("nan")
    return detection_map(anns(reference, False), anns(candidate, True)).map50


def _child(stage: str, video: str, imgsz: int) -> None:
    """Run one stage in this (fresh) process and print its figures with the peak RSS."""
    result = ours(video, imgsz, 5.0, False) if stage == "ours" else baseline(video, imgsz, 5)
    result["peak_rss_mb"] = peak_rss_mb()
    result.pop("boxes")
    print(json.dumps(result))


def _in_process(stage: str, video: str, imgsz: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", stage, "--video", video, "--imgsz", str(imgsz)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Measure every stage, append the table to BENCHMARKS.md and draw the plot."""
    parser = argparse.ArgumentParser(description=__doc__)
    clips = sorted((SHARED / "cholec80-clips" / "clips").glob("*.mp4"))
    parser.add_argument("--video", default=str(clips[0]) if clips else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=640, help="The baseline's input size.")
    parser.add_argument(
        "--ours-imgsz", type=int, default=320, help="Our input size (the pipeline's default)."
    )
    parser.add_argument("--child", default=None)
    parser.add_argument("--long", nargs="*", default=[], help="Longer videos for the RSS figures.")
    parser.add_argument("--quick", action="store_true", help="One run of each stage (make bench).")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    if args.child:
        _child(args.child, args.video, args.imgsz)
        return
    if not args.video:
        sys.exit("no video: pass --video or provide ../shared/data/cholec80-clips")
    med = statistics.median
    runs = {"baseline": [], "ours": [], "decode": [], "model": []}
    for _ in range(args.runs):
        b = baseline(args.video, args.imgsz, 5)
        o = ours(args.video, args.ours_imgsz, 5.0)
        runs["baseline"].append(b["fps"])
        runs["ours"].append(o["fps"])
        runs["decode"].append(decode_limit(args.video)["fps"])
        runs["model"].append(model_limit(args.video, args.ours_imgsz, 5.0)["fps"])
    figures = {k: med(v) for k, v in runs.items()}
    figures["ratio_ours_over_baseline"] = med(
        o / b for o, b in zip(runs["ours"], runs["baseline"], strict=True)
    )
    figures["agreement_map50"] = agreement(*same_frames(args.video, args.imgsz, 5, args.imgsz))
    figures["agreement_map50_at_our_size"] = agreement(
        *same_frames(args.video, args.imgsz, 5, args.ours_imgsz)
    )
    case = full_case(args.video)
    figures["full_case_x_real_time"] = case["x_real_time"]
    profile = None
    if clips:
        others = [c for c in clips if str(c) != args.video]
        profile = case_profile(args.video, str(others[0]) if others else None)
        figures["steady_x_real_time"] = profile["x_real_time_run"]
        figures["steady_x_real_time_cpu_bound"] = profile["x_real_time_cpu_bound"]
    memory = {
        Path(args.video).name: {
            "ours": _in_process("ours", args.video, args.ours_imgsz)["peak_rss_mb"],
            "baseline": _in_process("baseline", args.video, args.imgsz)["peak_rss_mb"],
        }
    }
    for long_video in args.long:
        memory[Path(long_video).name] = {
            "ours": _in_process("ours", long_video, args.ours_imgsz)["peak_rss_mb"],
            "full_case": full_case(long_video)["peak_rss_mb"],
        }
    print(json.dumps({"figures": figures, "peak_rss_mb": memory}, indent=1))
    _plot(figures)
    load = os.getloadavg()[0]
    lines = [
        f"\n## Pipeline speed, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"`python bench/pipeline_speed.py --runs {args.runs}`: baseline at {args.imgsz} px, ours "
        f"at {args.ours_imgsz} px (the pipeline's default), on "
        f"{Path(args.video).name} ({platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load:.1f} at the end). Frames per second of sampled frames (5 fps from 25 fps), median "
        f"of {args.runs} runs; decode limit counts every decoded frame.\n",
        "| stage | value | target |",
        "|---|---:|---:|",
        f"| baseline `YOLO.track(vid_stride=5)` fps | {figures['baseline']:.2f} | |",
        f"| ours (detections + tracks) fps | {figures['ours']:.2f} | |",
        f"| ours / baseline (same run) | {figures['ratio_ours_over_baseline']:.2f}x | >= 5x |",
        f"| agreement with the baseline, same size (mAP50) | {figures['agreement_map50']:.3f} | "
        ">= 0.995 |",
        f"| agreement at our size (mAP50 vs the baseline's boxes) | "
        f"{figures['agreement_map50_at_our_size']:.3f} | |",
        f"| decode limit (all frames) fps | {figures['decode']:.1f} | |",
        f"| model limit fps | {figures['model']:.2f} | |",
        f"| full case (`surg analyze`, fresh SURG_HOME) | {figures['full_case_x_real_time']:.2f}x "
        "real time | >= 8x |",
    ]
    if profile:
        lines += [
            f"| full case, steady state (model cache warm) | {figures['steady_x_real_time']:.2f}x "
            "real time | >= 8x |",
            f"| full case, steady state, CPU-bound (run CPU s / {os.cpu_count()} cores) | "
            f"{figures['steady_x_real_time_cpu_bound']:.2f}x real time | >= 8x |",
        ]
    lines += [f"\nPeak RSS (MB): {json.dumps(memory)}\n"]
    if profile:
        sys.path.insert(0, str(REPO / "bench"))
        from _case_profile import breakdown_markdown

        lines += [breakdown_markdown(profile)]
    lines += ["![throughput per stage](docs/images/pipeline_speed.png)\n"]
    with (REPO / "BENCHMARKS.md").open("a") as fh:
        fh.write("\n".join(lines))


def _plot(figures: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["baseline", "ours", "model", "decode"]
    labels = ["baseline\nYOLO.track", "ours\ndetect+track", "model\nlimit", "decode\nlimit"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(labels, [figures[n] for n in names], color=["#999", "#1b9e77", "#7570b3", "#d95f02"])
    ax.set_ylabel("frames per second")
    ax.set_yscale("log")
    ax.set_title("Throughput per stage (same video, weights, sampling)")
    fig.tight_layout()
    out = REPO / "docs" / "images" / "pipeline_speed.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
