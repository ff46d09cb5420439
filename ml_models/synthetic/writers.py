"""Streaming writers of the synthetic ground truth in the formats surgical datasets use.

Each writer takes one frame's truth at a time and keeps nothing per frame in memory, so a
six-hour case writes its labels with the same memory as a ten-second one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, OFFICIAL_PHASE_NAMES, OFFICIAL_TOOL_NAMES
from ml_models.synthetic.render import FrameTruth


def _data_yaml(root: Path, task: str) -> None:
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(INSTRUMENT_CLASSES))
    (root / "data.yaml").write_text(
        f"# Synthetic laparoscopy, YOLO {task} labels (sampled frames)\n"
        f"path: .\ntrain: images\nval: images\n\nnames:\n{names}\n"
    )


class YoloWriter:
    """YOLO detect labels under ``yolo/`` and seg labels under ``yolo-seg/`` for sampled frames.

    Both folders hold the same images (hard links when the file system allows) so each is a
    complete dataset that ultralytics can train on as is.
    """

    def __init__(self, out: Path, width: int, height: int, stem: str) -> None:
        self.det, self.seg = out / "yolo", out / "yolo-seg"
        for d in (self.det, self.seg):
            (d / "images").mkdir(parents=True, exist_ok=True)
            (d / "labels").mkdir(parents=True, exist_ok=True)
            _data_yaml(d, "detect" if d == self.det else "segment")
        self.w, self.h, self.stem = width, height, stem
        self.count = 0

    def write(self, img: np.ndarray, truth: FrameTruth) -> None:
        """Write the image and both label files of one sampled frame."""
        name = f"{self.stem}_{truth.frame_index:06d}"
        image = self.det / "images" / f"{name}.jpg"
        cv2.imwrite(str(image), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        seg_image = self.seg / "images" / image.name
        seg_image.unlink(missing_ok=True)
        try:
            os.link(image, seg_image)
        except OSError:
            shutil.copyfile(image, seg_image)
        det_lines, seg_lines = [], []
        for inst in truth.instruments:
            x1, y1, x2, y2 = inst.box
            det_lines.append(
                f"{inst.class_id} {(x1 + x2) / 2 / self.w:.6f} {(y1 + y2) / 2 / self.h:.6f} "
                f"{(x2 - x1) / self.w:.6f} {(y2 - y1) / self.h:.6f}"
            )
            if inst.polygon:
                coords = " ".join(f"{x / self.w:.6f} {y / self.h:.6f}" for x, y in inst.polygon)
                seg_lines.append(f"{inst.class_id} {coords}")
        (self.det / "labels" / f"{name}.txt").write_text("".join(s + "\n" for s in det_lines))
        (self.seg / "labels" / f"{name}.txt").write_text("".join(s + "\n" for s in seg_lines))
        self.count += 1


class MotWriter:
    """MOT Challenge ground truth: ``mot/gt/gt.txt`` and ``mot/seqinfo.ini``.

    Lines are ``frame,id,left,top,width,height,1,class,visibility`` with 1-based frames as in
    MOTChallenge, and class = Cholec80 class id + 1 (MOT reserves 0 for "no class").
    """

    def __init__(self, out: Path, width: int, height: int, fps: int, n_frames: int) -> None:
        root = out / "mot"
        (root / "gt").mkdir(parents=True, exist_ok=True)
        (root / "seqinfo.ini").write_text(
            "[Sequence]\nname=synthetic\nimDir=img1\n"
            f"frameRate={fps}\nseqLength={n_frames}\nimWidth={width}\nimHeight={height}\nimExt=.jpg\n"
        )
        self.f = (root / "gt" / "gt.txt").open("w")
        self.boxes = 0

    def write(self, truth: FrameTruth) -> None:
        """Append the instruments of one frame."""
        for i in truth.instruments:
            x1, y1, x2, y2 = i.box
            self.f.write(
                f"{truth.frame_index + 1},{i.track_id},{x1},{y1},{x2 - x1},{y2 - y1},1,"
                f"{i.class_id + 1},{i.visibility:.4f}\n"
            )
            self.boxes += 1

    def close(self) -> None:
        """Flush and close the file."""
        self.f.close()


class Cholec80Writer:
    """Cholec80-style ``phase.txt`` (every frame) and ``tool.txt`` (every ``fps`` frames)."""

    def __init__(self, out: Path, fps: int) -> None:
        self.phase = (out / "phase.txt").open("w")
        self.tool = (out / "tool.txt").open("w")
        self.phase.write("Frame\tPhase\n")
        self.tool.write("Frame\t" + "\t".join(OFFICIAL_TOOL_NAMES) + "\n")
        self.fps = fps

    def write(self, truth: FrameTruth) -> None:
        """Append one frame's phase (and its tool presence on sampled frames)."""
        self.phase.write(f"{truth.frame_index}\t{OFFICIAL_PHASE_NAMES[truth.phase_id]}\n")
        if truth.frame_index % self.fps == 0:
            present = {i.class_id for i in truth.instruments}
            flags = "\t".join("1" if c in present else "0" for c in range(len(OFFICIAL_TOOL_NAMES)))
            self.tool.write(f"{truth.frame_index}\t{flags}\n")

    def close(self) -> None:
        """Flush and close both files."""
        self.phase.close()
        self.tool.close()


class EventTracker:
    """Turns per-frame flags into event intervals for ``events.json`` (frames, end exclusive)."""

    def __init__(self, fps: int) -> None:
        self.fps = fps
        self.open: dict[str, int] = {}
        self.events: list[dict] = []
        self.text_union: dict[str, list[int]] = {}
        self.last_segment: str | None = None

    def _close(self, kind: str, end: int) -> None:
        start = self.open.pop(kind)
        self.events.append(self._event(kind, start, end))

    def _event(self, kind: str, start: int, end: int, detail: str = "") -> dict:
        return {
            "kind": kind,
            "start_frame": start,
            "end_frame": end,
            "start_s": round(start / self.fps, 4),
            "end_s": round(end / self.fps, 4),
            "detail": detail,
        }

    def write(self, truth: FrameTruth) -> None:
        """Account for one frame."""
        f = truth.frame_index
        flags = {
            "colour_bars": truth.segment == "colour_bars",
            "black": truth.segment == "black",
            "out_of_body": truth.segment == "out_of_body",
            "smoke": truth.smoke,
            "motion_blur": truth.motion_blur,
            "burned_in_text": bool(truth.text_boxes),
        }
        for kind, on in flags.items():
            if on and kind not in self.open:
                self.open[kind] = f
            elif not on and kind in self.open:
                self._close(kind, f)
        if self.last_segment is not None and truth.segment != self.last_segment:
            self.events.append(
                self._event("scene_cut", f, f, f"{self.last_segment} -> {truth.segment}")
            )
        self.last_segment = truth.segment
        for role, (x1, y1, x2, y2) in truth.text_boxes:
            u = self.text_union.setdefault(role, [x1, y1, x2, y2])
            u[:] = [min(u[0], x1), min(u[1], y1), max(u[2], x2), max(u[3], y2)]

    def finish(self, n_frames: int) -> list[dict]:
        """Close open intervals at the end of the video and return all events by start time."""
        for kind in list(self.open):
            self._close(kind, n_frames)
        return sorted(self.events, key=lambda e: (e["start_frame"], e["kind"]))


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)
