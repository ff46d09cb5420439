"""De-identification quality on a held-out synthetic case, judged by the lab's frame ground truth.

The default out-of-body model and the burned-in text detector find what to hide (as the
``deidentified_video`` asset does); the ground truth then says whether every overlay-text frame
was redacted, every out-of-body frame blurred, and how many in-body frames were blurred by
mistake. The output's container metadata is probed too. Appends an entry to BENCHMARKS.md::

    python bench/deid_quality.py [--minutes 3] [--seed 2001] [--case DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_models.deid import deid_quality, deidentify, plan_redaction  # noqa: E402
from ml_models.events import OutOfBodyClassifier, scan_video  # noqa: E402
from ml_models.video import VideoLimits, inspect_layout, transcode  # noqa: E402
from surg_assets.models import default_weights_file  # noqa: E402


def measure(case: Path, work: Path) -> dict:
    """Normalise, detect, de-identify and judge one synthetic case."""
    started = time.perf_counter()
    normalised = work / "video.mp4"
    transcode(case / "video.mp4", normalised, VideoLimits())
    classifier = OutOfBodyClassifier.load(default_weights_file("out_of_body_model"))
    plan = plan_redaction(scan_video(normalised, classifier).events)
    out = work / "deidentified.mp4"
    deidentify(normalised, out, plan)
    seconds = time.perf_counter() - started
    truth = [json.loads(line) for line in (case / "ground_truth.jsonl").open()]
    figures = deid_quality(normalised, out, truth).as_dict()
    figures["foreign_container_tags"] = len(inspect_layout(out).foreign_tags)
    figures["detect_and_deidentify_seconds"] = round(seconds, 1)
    return figures


def main() -> None:
    """Measure and append the figures to BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=2001)
    parser.add_argument("--case", type=Path, help="an existing `surg synth` folder to reuse")
    args = parser.parse_args()
    from ml_models.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        case = args.case
        if case is None:
            case = Path(tmp) / "case"
            generate(case, minutes=args.minutes, seed=args.seed)
        summary = json.loads((case / "summary.json").read_text())
        figures = measure(case, Path(tmp))
    print(json.dumps(figures, indent=1))
    targets = {
        "text_frames_redacted_fraction": "1.0",
        "out_of_body_frames_blurred_fraction": "1.0",
        "in_body_frames_blurred_fraction": "as low as possible",
        "foreign_container_tags": "0",
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"\n## De-identification quality, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"`python bench/deid_quality.py --minutes {summary['duration_s'] / 60:g} --seed "
        f"{summary['seed']}` on {platform.machine()}, {os.cpu_count()} logical cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; load "
        f"average {load:.1f} at the end. Held-out synthetic case ({summary['width']}x"
        f"{summary['height']}, {summary['fps']} fps), default models; the detectors decide what "
        "to hide, the lab's per-frame ground truth judges it (a frame is blurred when it is closer "
        "to the obliterated source than to the source; a text box is redacted when its 99th "
        "percentile grey level is at most 40).\n",
        "| figure | value | target |",
        "|---|---:|---:|",
    ]
    for key, value in figures.items():
        lines.append(f"| {key} | {value} | {targets.get(key, '')} |")
    with (REPO / "BENCHMARKS.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
