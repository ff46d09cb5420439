"""Training data from annotations: labels with reviewers' corrections applied, and a fixed split.

Plain Python over annotation rows (``resources.catalog.Annotation`` fields as dicts) and decoded
frames; the Dagster dataset assets decide which rows to read and where the files go. Everything
here is deterministic, so the same annotations always give byte-identical files, which is what
lets a snapshot be recognised as unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_models.formats.cholec80 import instrument_id
from ml_models.metrics.tracking import box_iou_matrix

# A correction names the model box it changes by frame and track, or by class and position; a
# box is the same box when it overlaps this much (row numbers shift when the model runs again).
SAME_BOX_IOU = 0.9


@dataclass
class LabelBox:
    """One instrument instance on a frame, in pixels of the image it was drawn on.

    Attributes:
        class_id: Cholec80 instrument id.
        box: (x1, y1, x2, y2) pixels.
        polygon: Outline as flat [x, y, x, y, ...] pixels, when known.
        track_id: Identity across frames, when known.
        image_size: (width, height) of the image the pixels refer to, when not the frame's own.
    """

    class_id: int
    box: tuple[float, float, float, float]
    polygon: list[float] | None = None
    track_id: int | None = None
    image_size: tuple[int, int] | None = None


@dataclass
class FrameLabels:
    """The labels of one frame of one case, and the annotations they came from."""

    case_id: str
    frame_index: int
    boxes: list[LabelBox] = field(default_factory=list)
    annotation_ids: list[int] = field(default_factory=list)
    base: str = "import"  # where the boxes a correction changes came from: import or model


def current_versions(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The annotation rows no later row supersedes (the live version of each correction)."""
    rows = list(rows)
    superseded = {r["supersedes_id"] for r in rows if r.get("supersedes_id")}
    return [r for r in rows if r["id"] not in superseded]


def _class_of(payload: dict[str, Any]) -> int | None:
    cid = payload.get("class_id")
    if cid is not None:
        return int(cid)
    return instrument_id(payload.get("class_name") or "")


def is_correction_target(
    track_id: int | None, class_id: int, box: Any, target: dict[str, Any]
) -> bool:
    """Whether a box is the one a reviewer's correction names in its ``target``.

    A box is named by its track (stable across re-reads) or, without one, by class and position
    (IoU above :data:`SAME_BOX_IOU`): row numbers would shift if the model ran again. The player
    and the dataset snapshots both decide with this, so a correction changes the same box in both.
    """
    if target.get("track_id") is not None and track_id is not None:
        return track_id == target["track_id"]
    tb = target.get("box")
    if not tb:
        return False
    if target.get("class_id") is not None and target["class_id"] != class_id:
        return False
    iou = box_iou_matrix(np.asarray([box], float), np.asarray([tb], float))[0, 0]
    return bool(iou > SAME_BOX_IOU)


def _is_target(box: LabelBox, target: dict[str, Any]) -> bool:
    return is_correction_target(box.track_id, box.class_id, box.box, target)


def apply_box_corrections(
    boxes: list[LabelBox], corrections: list[dict[str, Any]]
) -> list[LabelBox]:
    """Apply reviewers' box corrections (``add``, ``modify``, ``delete`` payloads) in order.

    A correction wins over what it changes: ``modify`` and ``delete`` remove the target box,
    ``add`` and ``modify`` put the reviewer's box in. Corrections naming an instrument outside the
    Cholec80 vocabulary are left out (they cannot be a training label).
    """
    out = list(boxes)
    for p in corrections:
        action, target = p.get("action"), p.get("target") or {}
        if action in ("modify", "delete"):
            out = [b for b in out if not _is_target(b, target)]
        if action in ("add", "modify"):
            cid = _class_of(p)
            if cid is None or not p.get("box"):
                continue
            x1, y1, x2, y2 = (float(v) for v in p["box"])
            out.append(LabelBox(cid, (x1, y1, x2, y2), track_id=p.get("track_id")))
    return out


def box_from_record(record: dict[str, Any]) -> LabelBox | None:
    """An imported instrument annotation (``Annotation.to_record`` row) as a label box."""
    if record.get("class_id") is None or record.get("x1") is None:
        return None
    flat = (
        [float(v) for point in record["polygon"] for v in point] if record.get("polygon") else None
    )
    size = (
        (int(record["image_width"]), int(record["image_height"]))
        if record.get("image_width") and record.get("image_height")
        else None
    )
    box = tuple(float(record[k]) for k in ("x1", "y1", "x2", "y2"))
    return LabelBox(int(record["class_id"]), box, flat, record.get("track_id"), size)  # type: ignore[arg-type]


def yolo_seg_lines(boxes: list[LabelBox], width: int, height: int) -> str:
    """YOLO segmentation label text: ``class x y x y ...`` normalised to the image size.

    A box without an outline becomes its rectangle, so box-only labels train the segmentation
    detector's boxes and classes.
    """
    lines = []
    for b in boxes:
        w, h = b.image_size or (width, height)
        x1, y1, x2, y2 = b.box
        flat = b.polygon or [x1, y1, x2, y1, x2, y2, x1, y2]
        coords = [min(1.0, max(0.0, v / (w if i % 2 == 0 else h))) for i, v in enumerate(flat)]
        lines.append(f"{b.class_id} " + " ".join(f"{v:.6f}" for v in coords))
    return "\n".join(lines) + ("\n" if lines else "")


def split_bucket(group: str) -> float:
    """A stable number in [0, 1) for a group id (the same on every machine)."""
    return int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) / 0x100000000


def assign_splits(groups: Iterable[str], val_fraction: float = 0.2) -> dict[str, str]:
    """``train`` or ``val`` per group, by a hash of the group id.

    With two or more groups both sides get at least one (the lowest bucket is held out when the
    hash would hold out none), so there is always a held-out split to evaluate on.
    """
    unique = sorted(set(groups))
    split = {g: ("val" if split_bucket(g) < val_fraction else "train") for g in unique}
    if len(unique) >= 2:
        ordered = sorted(unique, key=split_bucket)
        if "val" not in split.values():
            split[ordered[0]] = "val"
        if "train" not in split.values():
            split[ordered[-1]] = "train"
    return split


def frames_at(video: str | Path, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """Decode the frames with these indices (BGR), in one pass over the video."""
    from ml_models.video import sample_frames

    wanted = set(indices)
    found: dict[int, np.ndarray] = {}
    if not wanted:
        return found
    last = max(wanted)
    # A sampling rate above any video's frame rate yields every frame, with its index.
    for frame in sample_frames(video, 1000.0):
        if frame.frame_index in wanted:
            found[frame.frame_index] = frame.bgr
        if frame.frame_index >= last:
            break
    return found


def labels_per_second(
    times: np.ndarray, intervals: Iterable[tuple[float, float, int]], default: int = -1
) -> np.ndarray:
    """The label of the interval (start_s, end_s, label) holding each time; ``default`` if none."""
    out = np.full(len(times), default, np.int64)
    for start, end, label in intervals:
        out[(times >= start) & (times < end)] = label
    return out


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(files: dict[str, str], described: dict[str, Any]) -> str:
    """One hash of a snapshot's content: its files' hashes and the facts that define it."""
    text = json.dumps({"files": files, **described}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
