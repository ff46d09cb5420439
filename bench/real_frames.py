"""The instrument detector on real frames of other videos than its training split's.

Two judges, both from ``../shared/data`` (skipped when it is absent):

- **CholecInstanceSeg frames**: 10 frames of Cholec80 VID03 (one every 30 s) with hand-drawn
  instance polygons (19 graspers, 6 hooks). Box and mask mAP50 with the project's COCO metric,
  and in how many of the frames each class is found at the pipeline's confidence (0.25).
- **Cholec80 clips**: the fraction of frames sampled at 5 fps where the detector finds the
  instrument named in the clip's action label, on all five clips and on the three where that
  instrument is clearly in view (BENCHMARKS.md, "Real detector at 416 px, and what the real clips
  show": VID43_147 shows a hook, VID05_1858 looks through a port).

::

    python bench/real_frames.py [--weights FILE] [--imgsz N] [--no-append]

``--weights`` defaults to the shipped synthetic-only detector; pass
``"$(surg models path instrument_detector)"`` to judge the detector the pipeline would use.
``--imgsz`` defaults to the size the weights were trained at, as in the pipeline.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from ml_models.detector import DEFAULT_IMGSZ, detect_video, load_model, trained_imgsz  # noqa: E402
from ml_models.formats.coco import load_labelme  # noqa: E402
from ml_models.formats.model import Annotation  # noqa: E402
from ml_models.metrics.detection import detection_map  # noqa: E402
from surg_assets.models import default_weights_file  # noqa: E402

INSTANCE_FRAMES = SHARED / "cholecinstanceseg-sample" / "_sample_files" / "VID03_t80_sparse"
CLIPS = SHARED / "cholec80-clips"
# Clips whose named instrument is barely or never in view (looked at frame by frame).
NAMED_NOT_IN_VIEW = ("VID43_147", "VID05_1858")
PIPELINE_CONF = 0.25


def instance_frame_figures(model: object, imgsz: int) -> dict:
    """Box and mask mAP50 on the CholecInstanceSeg frames, and frames where each class is found."""
    import cv2

    if not INSTANCE_FRAMES.is_dir():
        return {"instance_frames": "absent"}
    truth = list(load_labelme(INSTANCE_FRAMES / "ann_dir"))
    predicted: list[Annotation] = []
    found: dict[int, set[str]] = {}
    for image in sorted({a.image for a in truth}):
        frame = next(a for a in truth if a.image == image)
        # Every box down to 0.001 for the AP curve; "found" uses the pipeline's threshold.
        r = model.predict(cv2.imread(str(INSTANCE_FRAMES / image)), imgsz=imgsz, conf=0.001,
                          verbose=False)[0]  # fmt: skip
        polygons = r.masks.xy if r.masks is not None else [None] * len(r.boxes)
        for box, score, cls, poly in zip(
            r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist(), polygons,
            strict=True,
        ):  # fmt: skip
            name = r.names[int(cls)]
            outline = (
                [tuple(p) for p in poly.tolist()] if poly is not None and len(poly) > 2 else None
            )
            predicted.append(
                Annotation(
                    kind="instrument", video=frame.video, frame_index=frame.frame_index,
                    class_name=name, box=tuple(box), polygon=outline, score=float(score),
                    image_width=frame.image_width, image_height=frame.image_height,
                )
            )  # fmt: skip
            if score >= PIPELINE_CONF:
                found.setdefault(frame.frame_index, set()).add(name)
    boxes = detection_map(truth, predicted)
    masks = detection_map(truth, [p for p in predicted if p.polygon], iou_type="segm")
    in_frame: dict[str, list[int]] = {}
    for a in truth:
        in_frame.setdefault(a.class_name, []).append(a.frame_index)
    figures: dict = {
        "instance_frames_box_map50": boxes.map50,
        "instance_frames_mask_map50": masks.map50,
    }
    for name, frames in sorted(in_frame.items()):
        frames = sorted(set(frames))
        hits = sum(1 for f in frames if name in found.get(f, set()))
        figures[f"instance_frames_{name}_found"] = f"{hits}/{len(frames)}"
        figures[f"instance_frames_{name}_box_ap50"] = boxes.per_class[name]["ap50"]
    return figures


def named_instrument_figures(model: object, imgsz: int = DEFAULT_IMGSZ) -> dict:
    """Fraction of sampled clip frames (5 fps) where the clip's named instrument is found."""
    hints = CLIPS / "clip_phase_hints.csv"
    if not hints.exists():
        return {"real_clips": "absent"}
    hit = total = hit_in_view = total_in_view = 0
    per_clip = {}
    for row in csv.DictReader(hints.open()):
        video = CLIPS / "clips" / row["clip"]
        instrument = row["triplet"].split(",")[0]
        det, run = detect_video(model, video, "real", "default", sample_fps=5.0, imgsz=imgsz)
        df = det.to_pandas()
        found = len(set(df[df.class_name == instrument].frame_index))
        per_clip[row["clip"][:24]] = round(found / max(1, run.frames), 3)
        hit, total = hit + found, total + run.frames
        if not any(k in row["clip"] for k in NAMED_NOT_IN_VIEW):
            hit_in_view, total_in_view = hit_in_view + found, total_in_view + run.frames
    return {
        "real_named_instrument_found_fraction": round(hit / max(1, total), 3),
        "real_named_instrument_found_fraction_in_view": round(
            hit_in_view / max(1, total_in_view), 3
        ),
        "real_per_clip": per_clip,
    }


def main() -> None:
    """Score the detector on both judges and append the figures to BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=None, help="Default: the shipped one.")
    parser.add_argument("--imgsz", type=int, default=None, help="Default: the trained size.")
    parser.add_argument("--no-append", action="store_true", help="Print only.")
    args = parser.parse_args()
    weights = args.weights or default_weights_file("instrument_detector")
    imgsz = args.imgsz or trained_imgsz(weights)
    model = load_model(weights)
    figures = instance_frame_figures(model, imgsz)
    figures.update(named_instrument_figures(model, imgsz))
    print(json.dumps(figures, indent=1, default=float))
    if args.no_append:
        return
    lines = [
        f"\n## Detector on real frames of other videos, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"`python bench/real_frames.py --imgsz {imgsz}` on {platform.machine()}, Python "
        f"{platform.python_version()}; weights: {args.weights or 'the shipped default'}.\n",
        "| figure | value |",
        "|---|---:|",
    ]
    for key, value in figures.items():
        if key != "real_per_clip":
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
    lines.append(f"\nPer clip: {json.dumps(figures.get('real_per_clip', {}))}\n")
    with (REPO / "BENCHMARKS.md").open("a") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
