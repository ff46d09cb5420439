"""Benchmark the synthetic video generator: speed (x real time) and peak memory per video length.

Each length runs in a fresh Python process so its peak RSS is its own; flat memory shows as the
same peak for a 1-minute and a 5-minute video. Results are appended to BENCHMARKS.md::

    python bench/synth_speed.py                 # 1 and 5 minutes at 854x480, 25 fps
    python bench/synth_speed.py --minutes 1 10 --size 854x480
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(minutes: float, size: tuple[int, int], fps: int, seed: int) -> None:
    """Generate one video and print its summary with this process's peak RSS."""
    sys.path.insert(0, str(REPO))
    from ml_models.synthetic import generate

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        s = generate(d, minutes, seed, size, fps)
        wall = time.perf_counter() - t0
        video_mb = (Path(d) / "video.mp4").stat().st_size / 1e6
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(
        json.dumps(
            {
                "minutes": minutes,
                "frames": s["n_frames"],
                "wall_s": wall,
                "x_realtime": s["duration_s"] / wall,
                "peak_rss_mb": peak_kb / 1024,
                "video_mb": video_mb,
            }
        )
    )


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import av
    import cv2
    import numpy

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, numpy {numpy.__version__}, OpenCV {cv2.__version__}, "
        f"PyAV {av.__version__}; load average at start {load:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and append its section to BENCHMARKS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 5.0])
    ap.add_argument("--size", default="854x480")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    if args.child:
        _child(args.minutes[0], (w, h), args.fps, args.seed)
        return
    machine = _machine()
    rows = []
    for m in args.minutes:
        cmd = [sys.executable, __file__, "--child", "--minutes", str(m), "--size", args.size]
        cmd += ["--fps", str(args.fps), "--seed", str(args.seed)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{m:g} min: {row['x_realtime']:.2f}x real time, peak RSS {row['peak_rss_mb']:.0f} MB"
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## Synthetic video generator, {stamp}\n",
        f"`python bench/synth_speed.py` at {args.size}, {args.fps} fps, seed {args.seed}, "
        "H.264 (x264 veryfast, CRF 23) with all labels written.",
        f"Machine: {machine}.\n",
        "| video length | frames | wall time | x real time | peak RSS | video size |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['minutes']:g} min | {r['frames']} | {r['wall_s']:.1f} s | "
            f"{r['x_realtime']:.2f}x | {r['peak_rss_mb']:.0f} MB | {r['video_mb']:.1f} MB |"
        )
    target = "meets" if min(r["x_realtime"] for r in rows) >= 4 else "misses"
    lines.append(f"\nTarget: at least 4x real time ({target} it on this run).\n")
    if not args.out.exists():
        args.out.write_text("# Benchmarks\n\nMeasured numbers, newest last. Append; never edit.\n")
    with args.out.open("a") as f:
        f.write("\n".join(lines))
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
