"""Dataset assets: versioned snapshots of the catalog's annotations for training.

``detector_dataset`` holds frames with instrument labels: a reviewer's box corrections win over
what they correct (an imported label, else the model's detection on that frame).
``phase_dataset`` holds one frame per second of each labelled case with its phase (a reviewer's
timeline wins over imported phases) and, where events were imported, out-of-body flags.
Snapshots are immutable (``resources.datasets``); the same content keeps the same version.
"""

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
from sqlalchemy import select

from ml_models.datasets import (
    FrameLabels,
    LabelBox,
    apply_box_corrections,
    assign_splits,
    box_from_record,
    content_hash,
    current_versions,
    frames_at,
    labels_per_second,
    sha256_file,
    yolo_seg_lines,
)
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, PHASES, phase_index, vocabulary_of
from resources import datasets as snapshots
from resources.blob_store import BlobStore
from resources.catalog import Annotation, Catalog
from surg_assets.assets.ingest import processed_video_key
from surg_assets.assets.perception import metadata_key, read_table

# Ten-second blocks are the split unit when a dataset has a single case: whole seconds of one
# case on both sides would leak near-identical neighbours into the held-out split.
SINGLE_CASE_BLOCK_S = 10.0


class DatasetConfig(dg.Config):
    """Which annotations go in, and how much is held out for evaluation."""

    val_fraction: float = 0.2
    imported_datasets: list[str] = []  # names of imported datasets; empty: every one


def annotation_rows(catalog: Catalog, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """Annotations of these kinds as plain rows, oldest first."""
    q = select(Annotation).where(Annotation.kind.in_(kinds)).order_by(Annotation.id)
    with catalog.session() as s:
        return [
            {
                "id": a.id,
                "case_id": a.case_id or a.payload.get("case_id") or a.payload.get("video"),
                "dataset": a.dataset,
                "kind": a.kind,
                "frame_index": a.frame_index,
                "t_s": a.t_s,
                "payload": a.payload,
                "author": a.author,
                "source": a.source,
                "supersedes_id": a.supersedes_id,
            }
            for a in s.scalars(q)
        ]


def _selected(rows: list[dict[str, Any]], config: DatasetConfig) -> list[dict[str, Any]]:
    """Reviewers' live corrections, and the imports of the chosen datasets."""
    review = current_versions(r for r in rows if r["source"] == "review")
    imports = [
        r
        for r in rows
        if r["source"] == "import"
        and (not config.imported_datasets or r["dataset"] in config.imported_datasets)
    ]
    return imports + review


def _model_boxes(blob_store: BlobStore, case_id: str) -> dict[int, list[LabelBox]]:
    """The model's boxes per frame (tracks when tracked, else detections)."""
    for name in ("tracks.parquet", "detections.parquet"):
        if blob_store.exists(metadata_key(case_id, name)):
            rows = read_table(blob_store, case_id, name).to_pylist()
            break
    else:
        return {}
    out: dict[int, list[LabelBox]] = defaultdict(list)
    for r in rows:
        box = (r["x1"], r["y1"], r["x2"], r["y2"])
        out[r["frame_index"]].append(
            LabelBox(int(r["class_id"]), box, r.get("mask"), r.get("track_id"))
        )
    return out


def detector_frames(
    blob_store: BlobStore, rows: list[dict[str, Any]]
) -> tuple[list[FrameLabels], dict[str, int]]:
    """Labels per (case, frame): imported boxes or the model's, with corrections applied.

    Returns:
        The frames, and counts of annotations left out by reason.
    """
    skipped: dict[str, int] = defaultdict(int)
    imports: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    corrections: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["case_id"] is None or r["frame_index"] is None:
            skipped["no case or frame"] += 1
            continue
        key = (str(r["case_id"]), int(r["frame_index"]))
        (corrections if r["source"] == "review" else imports)[key].append(r)
    frames = []
    model_cache: dict[str, dict[int, list[LabelBox]]] = {}
    for key in sorted(imports.keys() | corrections.keys()):
        case_id, frame_index = key
        base = [b for b in (box_from_record(r["payload"]) for r in imports[key]) if b]
        origin = "import"
        if not imports[key]:
            if case_id not in model_cache:
                model_cache[case_id] = _model_boxes(blob_store, case_id)
            base, origin = list(model_cache[case_id].get(frame_index, [])), "model"
        boxes = apply_box_corrections(base, [r["payload"] for r in corrections[key]])
        ids = [r["id"] for r in imports[key] + corrections[key]]
        frames.append(FrameLabels(case_id, frame_index, boxes, ids, origin))
    return frames, dict(skipped)


@dg.asset(
    group_name="training",
    kinds={"dataset", "yolo"},
    description="Instrument frames and labels (corrections win), an immutable versioned snapshot.",
)
def detector_dataset(
    context: dg.AssetExecutionContext,
    config: DatasetConfig,
    blob_store: BlobStore,
    catalog: Catalog,
) -> dg.MaterializeResult:
    """Build ``datasets/detector_dataset/v{N}/`` from the catalog (no new version if unchanged)."""
    import cv2

    rows = _selected(annotation_rows(catalog, ("instrument", "box")), config)
    frames, skipped = detector_frames(blob_store, rows)
    by_case: dict[str, list[FrameLabels]] = defaultdict(list)
    for f in frames:
        by_case[f.case_id].append(f)
    kept: list[FrameLabels] = []
    with tempfile.TemporaryDirectory(prefix="surg-dataset-") as tmp:
        staged: dict[str, tuple[bytes, str]] = {}
        for case_id, case_frames in sorted(by_case.items()):
            video_key = processed_video_key(case_id)
            if not blob_store.exists(video_key):
                skipped["case video not in the lake"] = skipped.get(
                    "case video not in the lake", 0
                ) + sum(len(f.annotation_ids) for f in case_frames)
                continue
            with blob_store.local_copy(video_key) as video:
                images = frames_at(video, [f.frame_index for f in case_frames])
            for f in case_frames:
                if f.frame_index not in images:
                    skipped["frame beyond the video"] = skipped.get("frame beyond the video", 0) + 1
                    continue
                bgr = images[f.frame_index]
                ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
                h, w = bgr.shape[:2]
                staged[f"{case_id}_{f.frame_index:06d}"] = (
                    jpg.tobytes(),
                    yolo_seg_lines(f.boxes, w, h),
                )
                kept.append(f)
        if not kept:
            raise dg.Failure(
                description="detector_dataset: no labelled frame of a case in the lake; import "
                "instrument annotations for a case (`surg annotations import`) or correct boxes "
                "in the review app first.",
                allow_retries=False,
            )
        cases = sorted({f.case_id for f in kept})
        groups = {
            f"{f.case_id}_{f.frame_index:06d}": (
                f.case_id if len(cases) >= 2 else f"{f.case_id}:{f.frame_index}"
            )
            for f in kept
        }
        group_split = assign_splits(groups.values(), config.val_fraction)
        split = {stem: group_split[g] for stem, g in groups.items()}
        root = Path(tmp) / "snapshot"
        for stem, (jpg, label) in staged.items():
            for sub, data, ext in (("images", jpg, "jpg"), ("labels", label.encode(), "txt")):
                path = root / sub / split[stem] / f"{stem}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        class_counts = [0] * len(INSTRUMENT_CLASSES)
        for f in kept:
            for b in f.boxes:
                if 0 <= b.class_id < len(class_counts):
                    class_counts[b.class_id] += 1
        facts = _facts(
            kept_ids=sorted(i for f in kept for i in f.annotation_ids),
            split=split,
            split_rule="by case (sha1 of the case id)"
            if len(cases) >= 2
            else "single case: by frame (sha1 of case:frame)",
            val_fraction=config.val_fraction,
            classes=list(INSTRUMENT_CLASSES),
            cases=cases,
            rows=rows,
            extra={
                "class_counts": class_counts,
                "label_bases": {
                    b: sum(1 for f in kept if f.base == b) for b in ("import", "model")
                },
            },
        )
        published = _publish(blob_store, "detector_dataset", root, facts)
    return _result(context, published, skipped)


def _facts(
    kept_ids: list[int],
    split: dict[str, str],
    split_rule: str,
    val_fraction: float,
    classes: list[str],
    cases: list[str],
    rows: list[dict[str, Any]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The manifest fields that define a snapshot (besides its files)."""
    used = set(kept_ids)
    review = [r["id"] for r in rows if r["source"] == "review" and r["id"] in used]
    return {
        "annotation_ids": kept_ids,
        # Every row considered, kept or not: the retraining schedule looks for newer ones.
        "newest_annotation_id": max((r["id"] for r in rows), default=0),
        "review_annotation_ids": sorted(review),
        "split": {
            "train": sorted(k for k, v in split.items() if v == "train"),
            "val": sorted(k for k, v in split.items() if v == "val"),
        },  # fmt: skip
        "split_sizes": {s: sum(1 for v in split.values() if v == s) for s in ("train", "val")},
        "split_rule": split_rule,
        "val_fraction": val_fraction,
        "classes": classes,
        "cases": cases,
        **extra,
    }


def _publish(
    blob_store: BlobStore, name: str, root: Path, facts: dict[str, Any]
) -> snapshots.Published:
    files = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    defining = {k: facts[k] for k in ("annotation_ids", "split", "classes")}
    return snapshots.publish(blob_store, name, root, content_hash(files, defining), facts)


def _result(
    context: dg.AssetExecutionContext, published: snapshots.Published, skipped: dict[str, int]
) -> dg.MaterializeResult:
    m = published.manifest
    if published.created:
        context.log.info(f"{m['name']} {m['version']} written: {len(m['files'])} files")
    else:
        context.log.info(f"{m['name']}: content unchanged, still {m['version']}")
    return dg.MaterializeResult(
        metadata={
            "version": m["version"],
            "new_version": published.created,
            "key": f"{snapshots.snapshot_prefix(m['name'], m['version'])}/manifest.json",
            "content_hash": m["content_hash"],
            "files": len(m["files"]),
            "annotations": len(m["annotation_ids"]),
            "review_annotations": len(m["review_annotation_ids"]),
            "split_sizes": dg.MetadataValue.json(m["split_sizes"]),
            "cases": len(m["cases"]),
            "skipped": dg.MetadataValue.json(skipped),
        },
        data_version=dg.DataVersion(m["content_hash"][:16]),
    )


def _seconds(r: dict[str, Any], key_s: str, key_frame: str, fps: float) -> float | None:
    p = r["payload"]
    if p.get(key_s) is not None:
        return float(p[key_s])
    return float(p[key_frame]) / fps if p.get(key_frame) is not None else None


def phase_intervals(
    rows: list[dict[str, Any]], fps: float
) -> tuple[list[tuple[float, float, str]], list[tuple[float, float, int]], list[int]]:
    """One case's phase intervals by phase name, its out-of-body intervals, and the ids of the
    annotations they came from.

    The newest live reviewer timeline wins over imported phase intervals. Phases go by name: the
    id stored beside a reviewed segment is the case's own vocabulary's (POEM's "myotomy" is its
    id 2, which Cholec80 numbers "Clipping and cutting"), so only the name says which phase it is.
    """
    review = [r for r in rows if r["source"] == "review" and r["kind"] == "phase"]
    phases: list[tuple[float, float, str]] = []
    ids: list[int] = []
    if review:
        latest = review[-1]
        for seg in latest["payload"].get("segments", []):
            if seg.get("phase_name"):
                phases.append((float(seg["start_s"]), float(seg["end_s"]), seg["phase_name"]))
        ids.append(latest["id"])
    else:
        for r in rows:
            if r["source"] == "import" and r["kind"] == "phase":
                p = r["payload"]
                # Cholec80's importer stores the id; other sources keep only their own name.
                pid = p.get("phase_id")
                name = PHASES[pid] if pid is not None else p.get("class_name")
                start = _seconds(r, "t_s", "frame_index", fps)
                end = _seconds(r, "end_s", "end_frame", fps)
                if name and start is not None and end is not None:
                    phases.append((start, end, name))
                    ids.append(r["id"])
    oob = []
    for r in rows:
        if r["kind"] == "event" and r["payload"].get("class_name") == "out_of_body":
            start = _seconds(r, "t_s", "frame_index", fps)
            end = _seconds(r, "end_s", "end_frame", fps)
            if start is not None and end is not None:
                oob.append((start, end, 1))
                ids.append(r["id"])
    return phases, oob, ids


class PhaseDatasetConfig(DatasetConfig):
    """A phase dataset holds one procedure's cases: its model numbers that procedure's phases."""

    procedure: str = "cholecystectomy"


@dg.asset(
    group_name="training",
    kinds={"dataset", "numpy"},
    description="One frame per second of labelled cases with phase (and out-of-body) labels.",
)
def phase_dataset(
    context: dg.AssetExecutionContext,
    config: PhaseDatasetConfig,
    blob_store: BlobStore,
    catalog: Catalog,
) -> dg.MaterializeResult:
    """Build ``datasets/phase_dataset/v{N}/``: per case and split, ``frames.npy`` + labels.

    Only cases of ``config.procedure`` go in. Their phase names make the vocabulary the model
    will number (``classes`` in the manifest): Cholec80's seven for cholecystectomy labels,
    another procedure's phases in the order they first appear.
    """
    from ml_models.frames import frames_per_second
    from ml_models.video import inspect_layout

    rows = _selected(annotation_rows(catalog, ("phase", "event")), config)
    by_case: dict[str, list[dict[str, Any]]] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["case_id"] is None:
            skipped["no case"] += 1
        else:
            by_case[str(r["case_id"])].append(r)
    named: dict[str, tuple[np.ndarray, np.ndarray, list[tuple[float, float, str]], Any]] = {}
    for case_id, case_rows in sorted(by_case.items()):
        case = catalog.get_case(case_id)
        if ((case.procedure if case else None) or "cholecystectomy") != config.procedure:
            skipped[f"case of another procedure than {config.procedure}"] += len(case_rows)
            continue
        key = processed_video_key(case_id)
        if not blob_store.exists(key):
            skipped["case video not in the lake"] += len(case_rows)
            continue
        with blob_store.local_copy(key) as video:
            fps = inspect_layout(video).fps
            phases, oob, ids = phase_intervals(case_rows, fps)
            if not phases:
                skipped["case without phase labels"] += len(case_rows)
                continue
            times, images = frames_per_second(video, 1.0)
        named[case_id] = (times, images, sorted(phases), (oob, ids))
    vocabulary = vocabulary_of(n for *_, phases, _ in named.values() for *_, n in phases)
    labelled: dict[
        str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, list[int]]
    ] = {}
    for case_id, (times, images, phases, (oob, ids)) in named.items():
        numbered = [(a, b, phase_index(n, vocabulary)) for a, b, n in phases]
        labels = labels_per_second(times, [(a, b, i) for a, b, i in numbered if i is not None])
        keep = labels >= 0
        flags = labels_per_second(times, oob, 0)[keep] if oob else None
        labelled[case_id] = (times[keep], images[keep], labels[keep], flags, sorted(ids))
    if not labelled:
        raise dg.Failure(
            description=f"phase_dataset: no {config.procedure} case in the lake has phase "
            "labels; import a phase file for a case (`surg annotations import`), correct a "
            "timeline in the review app, or set the procedure in the run config.",
            allow_retries=False,
        )
    split: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="surg-dataset-") as tmp:
        root = Path(tmp) / "snapshot"
        for case_id, (times, images, labels, flags, _ids) in labelled.items():
            blocks = (
                [case_id] * len(times)
                if len(labelled) >= 2
                else [f"{case_id}:{int(t // SINGLE_CASE_BLOCK_S)}" for t in times]
            )
            side = assign_splits(blocks, config.val_fraction)
            for name in ("train", "val"):
                mask = np.asarray([side[b] == name for b in blocks], bool)
                if not mask.any():
                    continue
                folder = root / "cases" / case_id / name
                folder.mkdir(parents=True)
                np.save(folder / "frames.npy", images[mask], allow_pickle=False)
                (folder / "labels.json").write_text(
                    json.dumps(
                        {
                            "times": [round(float(t), 3) for t in times[mask]],
                            "phase_ids": labels[mask].tolist(),
                            "out_of_body": None if flags is None else flags[mask].tolist(),
                        }
                    )
                )
                split[f"{case_id}/{name}"] = name
        facts = _facts(
            kept_ids=sorted(i for *_, ids in labelled.values() for i in ids),
            split=split,
            split_rule="by case (sha1 of the case id)"
            if len(labelled) >= 2
            else f"single case: by {SINGLE_CASE_BLOCK_S:g} s block (sha1 of case:block)",
            val_fraction=config.val_fraction,
            classes=vocabulary,
            cases=sorted(labelled),
            rows=rows,
            extra={
                "procedure": config.procedure,
                "seconds": {c: int(len(v[0])) for c, v in labelled.items()},
                "out_of_body_cases": sorted(c for c, v in labelled.items() if v[3] is not None),
            },
        )
        published = _publish(blob_store, "phase_dataset", root, facts)
    return _result(context, published, dict(skipped))
