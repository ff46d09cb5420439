"""De-identification quality on a held-out synthetic case, judged by the lab's frame ground truth.

The default out-of-body model and the burned-in text detector find what to hide (as the
``deidentified_video`` asset does); the ground truth then says whether every overlay-text frame
was redacted, every out-of-body frame blurred, and how many in-body frames were blurred by
mistake. The output's container metadata is probed too. Appends an entry to BENCHMARKS.md::

    python bench/deid_quality.py [--minutes 3] [--seed 2001] [--size 854x480] [--case DIR]
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

import av  # noqa: E402

from ml_models.deid import Redaction, deid_quality, deidentify, plan_redaction  # noqa: E402
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
    figures.update(stray_text_area(plan, truth, summary_size(case)))
    figures["foreign_container_tags"] = len(inspect_layout(out).foreign_tags)
    figures["detect_and_deidentify_seconds"] = round(seconds, 1)
    return figures


def summary_size(case: Path) -> tuple[int, int, float]:
    """(width, height, fps) of a synthetic case."""
    summary = json.loads((case / "summary.json").read_text())
    return int(summary["width"]), int(summary["height"]), float(summary["fps"])


def stray_text_area(plan: Redaction, truth: list[dict], size: tuple[int, int, float]) -> dict:
    """Tissue blacked out by mistake: redaction boxes touching no overlay-text box of the truth.

    Averaged over the in-body frames (segment ``surgery``), as a fraction of the frame's area.
    """
    width, height, fps = size
    area = width * height
    stray, frames, boxes = 0.0, 0, set()
    for i, frame in enumerate(truth):
        if frame.get("segment") != "surgery":
            continue
        frames += 1
        t = i / fps
        overlay = [b["box"] for b in frame.get("text_boxes", [])]
        for a, b, (x1, y1, x2, y2) in plan.boxes:
            if not a <= t < b:
                continue
            if any(x1 < o[2] and o[0] < x2 and y1 < o[3] and o[1] < y2 for o in overlay):
                continue
            stray += (x2 - x1) * (y2 - y1) / area
            boxes.add((a, b, x1, y1, x2, y2))
    return {
        "in_body_stray_text_boxes": len(boxes),
        "in_body_stray_text_area_fraction": round(stray / frames, 5) if frames else 0.0,
    }


def real_clip_text(clips: list[Path]) -> tuple[dict, list[str]]:
    """Burned-in text the detector finds on real Cholec80 clips (none carries a patient overlay).

    Returns the figures (events, and the fraction of frame area x time that would be blacked
    out) and one line per event so a reader can judge each (a device's on-screen text is text).
    """
    events, covered, total, lines = 0, 0.0, 0.0, []
    for clip in clips:
        with av.open(str(clip)) as c:
            st = c.streams.video[0]
            w, h = st.codec_context.width, st.codec_context.height
            seconds = float(st.duration * st.time_base) if st.duration else float(c.duration) / 1e6
        total += seconds
        for e in scan_video(clip, None).events:
            if e.kind != "burned_in_text":
                continue
            x1, y1, x2, y2 = json.loads(e.detail)["box"]
            events += 1
            covered += (e.end_s - e.start_s) * (x2 - x1) * (y2 - y1) / (w * h)
            lines.append(
                f"{clip.stem[:26]}: {e.start_s:.1f}-{e.end_s:.1f} s, box {[x1, y1, x2, y2]}"
            )
    figures = {
        "real_clips": len(clips),
        "real_clip_text_events": events,
        "real_clip_text_area_fraction": round(covered / total, 5) if total else 0.0,
    }
    return figures, lines


def main() -> None:
    """Measure and append the figures to BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=2001)
    parser.add_argument("--size", default="854x480", help="frame size WxH of the rendered case")
    parser.add_argument("--case", type=Path, help="an existing `surg synth` folder to reuse")
    args = parser.parse_args()
    from _cases import held_out_case

    with tempfile.TemporaryDirectory() as tmp:
        case = args.case
        if case is None:
            width, height = (int(v) for v in args.size.lower().split("x"))
            case = held_out_case(args.minutes, args.seed, (width, height))
        summary = json.loads((case / "summary.json").read_text())
        figures = measure(case, Path(tmp))
    clips = sorted((REPO.parent / "shared/data/cholec80-clips/clips").glob("*.mp4"))
    real, real_lines = real_clip_text(clips)
    figures.update(real)
    print(json.dumps(figures, indent=1))
    print("\n".join(real_lines))
    targets = {
        "text_frames_redacted_fraction": "1.0",
        "out_of_body_frames_blurred_fraction": "1.0",
        "in_body_frames_blurred_fraction": "as low as possible",
        "foreign_container_tags": "0",
        "in_body_stray_text_area_fraction": "as low as possible",
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"\n## De-identification quality, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"`python bench/deid_quality.py --minutes {summary['duration_s'] / 60:g} --seed "
        f"{summary['seed']} --size {summary['width']}x{summary['height']}` on "
        f"{platform.machine()}, {os.cpu_count()} logical cores, "
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
    if real_lines:
        lines.append("\nBurned-in text found on the real clips (no patient overlay on them):")
        lines += [f"- {line}" for line in real_lines]
    with (REPO / "BENCHMARKS.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
