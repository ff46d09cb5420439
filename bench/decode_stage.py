"""The detection pipeline's decode stage with inference disabled, next to the decode limit.

Target (performance issue): with inference disabled, the pipeline's decode stage runs within
1.5x of the decode limit. Both decode every frame of the same video with PyAV; the limit stops
there, the stage also does what the pipeline does before inference: the threaded decoder with
its bounded queue, the sampling grid (5 fps of 25 fps) and the BGR conversion of each sampled
frame, consumed by a loop that drops them. Frames per second count every decoded frame, median of
``--runs`` runs, alternating the two so load changes hit both alike. Appends to BENCHMARKS.md::

    python bench/decode_stage.py [--video PATH] [--runs 5] [--no-append]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# The limit the speed bench reports, so the two benches compare against the same number.
from pipeline_speed import decode_limit  # noqa: E402

TARGET_RATIO = 1.5


def decode_stage(video: str, sample_fps: float = 5.0) -> tuple[int, int, float]:
    """(decoded frames, sampled frames, seconds): the pipeline's sampler, nothing downstream."""
    from ml_models.video import sample_frames

    decoded = 0

    def count(_frame: object) -> None:
        nonlocal decoded
        decoded += 1

    started = time.perf_counter()
    sampled = sum(1 for _ in sample_frames(video, sample_fps, every_frame=count))
    return decoded, sampled, time.perf_counter() - started


def main() -> None:
    """Measure both, print them and append the comparison to BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    clips = sorted((SHARED / "cholec80-clips" / "clips").glob("*.mp4"))
    parser.add_argument("--video", default=str(clips[0]) if clips else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-append", action="store_true", help="Print only.")
    args = parser.parse_args()
    if not args.video:
        sys.exit("no video: pass --video or provide ../shared/data/cholec80-clips")
    limit, stage = [], []
    sampled = 0
    for _ in range(args.runs):
        lim_run = decode_limit(args.video)
        n = lim_run["frames"]
        limit.append(lim_run["fps"])
        d, sampled, s = decode_stage(args.video)
        if d != n:
            sys.exit(f"the stage decoded {d} frames and the limit {n}: not the same work")
        stage.append(d / s)
    lim, stg = statistics.median(limit), statistics.median(stage)
    ratio = lim / stg
    print(f"decode limit {lim:.1f} fps, decode stage {stg:.1f} fps ({sampled} sampled): "
          f"{ratio:.2f}x slower (target <= {TARGET_RATIO}x)")  # fmt: skip
    if args.no_append:
        return
    load = os.getloadavg()[0]
    lines = [
        "",
        f"## Decode stage with inference disabled, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`python bench/decode_stage.py --runs {args.runs}` on {Path(args.video).name} "
        f"({platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end). "
        f"Every frame decoded in both; the stage also samples {sampled} frames (5 fps) to BGR. "
        "Median of the runs, frames per second of decoded frames.",
        "",
        "| measure | value | target |",
        "|---|---:|---:|",
        f"| decode limit fps | {lim:.1f} | |",
        f"| pipeline decode stage fps | {stg:.1f} | |",
        f"| limit / stage | {ratio:.2f}x | <= {TARGET_RATIO}x |",
    ]
    with (REPO / "BENCHMARKS.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
