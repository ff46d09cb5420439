"""Reading a case's perception results for the player, with reviewers' corrections applied.

The tables follow DESIGN.md section 3 (``processed-metadata/{case_id}/*.parquet``); whichever of
them exist are used. Tables are cached in memory per (key, modification time), so a player
fetching overlay windows does not re-read the file each time, and a re-run is picked up.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import select

from ml_models.analysis import merge_intervals
from ml_models.datasets import is_correction_target
from ml_models.formats.cholec80 import PHASES as CHOLEC80_PHASES
from ml_models.tracking import USAGE_GAP_S
from resources.blob_store import BlobStore
from resources.catalog import Annotation, Catalog

_CACHE: OrderedDict[tuple[str, float], Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16


def metadata_key(case_id: str, name: str) -> str:
    """``processed-metadata/{case_id}/{name}``."""
    return f"processed-metadata/{case_id}/{name}"


def video_key(blob_store: BlobStore, case_id: str) -> str | None:
    """The video the player may show: the de-identified one, else the transcoded one."""
    for name in ("deidentified.mp4", "video.mp4"):
        key = f"processed-videos/{case_id}/{name}"
        if blob_store.exists(key):
            return key
    return None


def _cached(blob_store: BlobStore, key: str, parse: Any) -> Any:
    info = blob_store.head(key)
    if info is None:
        return None
    cache_key = (key, info.last_modified)
    with _CACHE_LOCK:
        if cache_key in _CACHE:
            _CACHE.move_to_end(cache_key)
            return _CACHE[cache_key]
    value = parse(blob_store.get_bytes(key))
    with _CACHE_LOCK:
        _CACHE[cache_key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def read_table(blob_store: BlobStore, case_id: str, name: str) -> pa.Table | None:
    """``processed-metadata/{case_id}/{name}.parquet`` as a table, or None if absent."""
    return _cached(
        blob_store, metadata_key(case_id, f"{name}.parquet"), lambda b: pq.read_table(io.BytesIO(b))
    )


def read_json(blob_store: BlobStore, case_id: str, name: str) -> Any:
    """``processed-metadata/{case_id}/{name}.json`` parsed, or None if absent."""
    return _cached(blob_store, metadata_key(case_id, f"{name}.json"), json.loads)


def review_annotations(catalog: Catalog, case_id: str, kind: str | None = None) -> list[Annotation]:
    """A case's reviewer annotations, oldest first."""
    q = select(Annotation).where(Annotation.case_id == case_id, Annotation.source == "review")
    if kind:
        q = q.where(Annotation.kind == kind)
    with catalog.session() as s:
        return list(s.scalars(q.order_by(Annotation.id)))


def current_annotations(annotations: list[Annotation]) -> list[Annotation]:
    """The annotations no later one supersedes (the current version of each correction)."""
    superseded = {a.supersedes_id for a in annotations if a.supersedes_id}
    return [a for a in annotations if a.id not in superseded]


def _matches(box: dict[str, Any], target: dict[str, Any]) -> bool:
    return box["f"] == target.get("frame_index") and is_correction_target(
        box.get("k"), box["c"], box["b"], target
    )


def overlay_window(
    blob_store: BlobStore, catalog: Catalog, case_id: str, from_s: float, to_s: float
) -> dict[str, Any]:
    """Boxes (tracks if present, else detections) between ``from_s`` and ``to_s``.

    Each box: ``f`` frame index, ``t`` seconds, ``b`` [x1, y1, x2, y2] pixels, ``c`` class id,
    ``n`` class name, ``p`` confidence, ``k`` track id (or null), ``m`` outline polygon (or
    null), ``r`` the id of the reviewer correction that made or changed it (or null).
    Reviewer corrections of boxes in the window are applied: deleted boxes are gone, moved or
    relabelled ones changed, added ones present.
    """
    source = "tracks"
    table = read_table(blob_store, case_id, "tracks")
    if table is None:
        source, table = "detections", read_table(blob_store, case_id, "detections")
    boxes: list[dict[str, Any]] = []
    if table is not None and table.num_rows:
        t = table.column("t_s")
        window = table.filter(pc.and_(pc.greater_equal(t, from_s), pc.less_equal(t, to_s)))
        cols = {n: window.column(n).to_pylist() for n in window.column_names}
        n_rows = window.num_rows
        tracks = cols.get("track_id") or [None] * n_rows
        masks = cols.get("mask") or [None] * n_rows
        for i in range(n_rows):
            boxes.append(
                {
                    "f": cols["frame_index"][i],
                    "t": round(cols["t_s"][i], 4),
                    "b": [round(cols[k][i], 1) for k in ("x1", "y1", "x2", "y2")],
                    "c": cols["class_id"][i],
                    "n": cols["class_name"][i],
                    "p": round(cols["confidence"][i], 3),
                    "k": tracks[i],
                    "m": [round(v, 1) for v in masks[i]] if masks[i] else None,
                    "r": None,
                }
            )
    corrections = [
        a
        for a in current_annotations(review_annotations(catalog, case_id, "box"))
        if a.t_s is not None and from_s <= a.t_s <= to_s
    ]
    for a in corrections:
        p = a.payload
        action, target = p.get("action"), p.get("target") or {}
        if action in ("modify", "delete"):
            boxes = [b for b in boxes if not _matches(b, target)]
        if action in ("add", "modify"):
            boxes.append(
                {
                    "f": a.frame_index,
                    "t": a.t_s,
                    "b": p["box"],
                    "c": p.get("class_id"),
                    "n": p.get("class_name"),
                    "p": 1.0,
                    "k": p.get("track_id", target.get("track_id")),
                    "m": None,
                    "r": a.id,
                }
            )
    boxes.sort(key=lambda b: (b["f"], b["k"] if b["k"] is not None else -1))
    return {"source": source if table is not None else None, "boxes": boxes}


def phase_vocabulary(blob_store: BlobStore, case_id: str) -> list[dict[str, Any]]:
    """The phases a reviewer may choose for this case, ``[{phase_id, phase_name}]`` in id order.

    They are the vocabulary of the phase model that read the case (its per-second
    probabilities name every phase it knows, not only those on the timeline), so a case of
    another procedure is corrected in its own phases. Without that table: the timeline's names
    when they are not Cholec80's, else Cholec80's seven (the default model's).
    """
    names: dict[int, str] = {}
    for name in ("phase_probabilities", "phases"):
        table = read_table(blob_store, case_id, name)
        if table is None or not table.num_rows:
            continue
        pairs = table.select(["phase_id", "phase_name"]).group_by(["phase_id", "phase_name"])
        for row in pairs.aggregate([]).to_pylist():
            if row["phase_id"] is not None and row["phase_name"]:
                names.setdefault(int(row["phase_id"]), row["phase_name"])
        if name == "phases" and set(names.values()) <= set(CHOLEC80_PHASES):
            names = {}  # a Cholec80 timeline: offer all seven, not only the phases it shows
        if names:
            break
    if not names:
        names = dict(enumerate(CHOLEC80_PHASES))
    return [{"phase_id": i, "phase_name": n} for i, n in sorted(names.items())]


def timeline(blob_store: BlobStore, catalog: Catalog, case_id: str) -> dict[str, Any]:
    """Phase segments (a reviewer's current correction if any, else the model's), the phases a
    correction may use, and events."""
    phases: list[dict[str, Any]] = []
    table = read_table(blob_store, case_id, "phases")
    if table is not None:
        for row in table.to_pylist():
            phases.append(
                {
                    "phase_id": row.get("phase_id"),
                    "phase_name": row.get("phase_name"),
                    "start_s": row.get("start_s"),
                    "end_s": row.get("end_s"),
                    "confidence": row.get("confidence"),
                }
            )
    phases.sort(key=lambda p: p["start_s"] or 0.0)
    source = "model" if table is not None else None
    correction_id = None
    current = current_annotations(review_annotations(catalog, case_id, "phase"))
    if current:
        latest = current[-1]
        phases, source, correction_id = latest.payload["segments"], "review", latest.id
    events = []
    ev = read_table(blob_store, case_id, "events")
    if ev is not None:
        for row in ev.to_pylist():
            events.append(
                {
                    "kind": row.get("kind"),
                    "start_s": row.get("start_s"),
                    "end_s": row.get("end_s"),
                    "score": row.get("score"),
                }
            )
    return {
        "phases": phases,
        "phase_source": source,
        "phase_correction_id": correction_id,
        "phase_vocabulary": phase_vocabulary(blob_store, case_id),
        "events": events,
    }


def instrument_usage(blob_store: BlobStore, case_id: str) -> dict[str, Any]:
    """Usage per instrument class and per track, from ``tracks`` (or ``detections``).

    ``visible_s`` is the union of the class's track spans (two graspers at once count once),
    gaps of up to ``USAGE_GAP_S`` between them bridged as in the case analysis. When
    ``analysis.json`` exists, a class it reports takes its stretches from there (so a custom
    ``usage_gap_s`` of ``case_analysis`` shows too), and its richer statistics are passed along.
    """
    table = read_table(blob_store, case_id, "tracks")
    has_tracks = table is not None
    if table is None:
        table = read_table(blob_store, case_id, "detections")
    tracks: dict[Any, dict[str, Any]] = {}
    if table is not None and table.num_rows:
        cols = {n: table.column(n).to_pylist() for n in ("t_s", "class_id", "class_name")}
        ids = table.column("track_id").to_pylist() if has_tracks else None
        conf = table.column("confidence").to_pylist()
        for i, t in enumerate(cols["t_s"]):
            # Without tracks every class is one pseudo-track, so the panel still has rows.
            tid = ids[i] if ids is not None else f"class-{cols['class_id'][i]}"
            tr = tracks.setdefault(
                tid,
                {
                    "track_id": tid if ids is not None else None,
                    "class_id": cols["class_id"][i],
                    "class_name": cols["class_name"][i],
                    "start_s": t,
                    "end_s": t,
                    "detections": 0,
                    "confidence_sum": 0.0,
                },
            )
            tr["start_s"], tr["end_s"] = min(tr["start_s"], t), max(tr["end_s"], t)
            tr["detections"] += 1
            tr["confidence_sum"] += conf[i] or 0.0
            votes = tr.setdefault("votes", {})
            key = (cols["class_id"][i], cols["class_name"][i])
            votes[key] = votes.get(key, 0) + 1
    classes: dict[str, dict[str, Any]] = {}
    for tr in tracks.values():
        tr["mean_confidence"] = round(tr.pop("confidence_sum") / max(1, tr["detections"]), 3)
        # A tracker may carry one track through detections of different classes: the track is
        # the class most of its detections have (ties: the lower class id), as the pipeline's
        # usage table (``ml_models.tracking.usage_intervals``) decides it.
        votes = tr.pop("votes")
        tr["class_id"], tr["class_name"] = min(votes, key=lambda k: (-votes[k], k[0]))
        c = classes.setdefault(
            tr["class_name"],
            {"class_name": tr["class_name"], "class_id": tr["class_id"], "tracks": 0, "spans": []},
        )
        c["tracks"] += 1
        c["spans"].append((tr["start_s"], tr["end_s"]))
    analysis = read_json(blob_store, case_id, "analysis")
    reported = {
        i.get("instrument"): i
        for i in (analysis or {}).get("instruments") or []
        if i.get("intervals")
    }
    for c in classes.values():
        spans = c.pop("spans")
        if c["class_name"] in reported:
            # Once the report exists its stretches are the case's figures: they honour a
            # usage_gap_s that case_analysis was configured with, which the panel cannot know.
            merged = [[float(a), float(b)] for a, b in reported[c["class_name"]]["intervals"]]
        else:
            # Bridged as the case analysis bridges them, so the panel and the report agree: a
            # class back within USAGE_GAP_S, on any of its tracks, was in use all along.
            merged = [list(x) for x in merge_intervals(spans, USAGE_GAP_S)]
        c["visible_s"] = round(sum(b - a for a, b in merged), 2)
        c["first_s"], c["last_s"] = merged[0][0], merged[-1][1]
        c["intervals"] = merged
    return {
        "classes": sorted(classes.values(), key=lambda c: -c["visible_s"]),
        "tracks": sorted(tracks.values(), key=lambda t: t["start_s"]),
        "analysis": (analysis or {}).get("instruments"),
    }


def case_summary(blob_store: BlobStore, case_id: str) -> dict[str, Any]:
    """Phase durations and instruments used, for the case list's columns and filters."""
    analysis = read_json(blob_store, case_id, "analysis") or {}
    phase_s: dict[str, float] = {}
    for d in analysis.get("phase_durations") or []:
        phase_s[d.get("phase")] = round(float(d.get("duration_s") or 0.0), 1)
    instruments = sorted({i.get("instrument") for i in analysis.get("instruments") or []} - {None})
    if not phase_s:
        table = read_table(blob_store, case_id, "phases")
        if table is not None:
            for row in table.to_pylist():
                name = row.get("phase_name")
                dur = float(row.get("end_s") or 0) - float(row.get("start_s") or 0)
                phase_s[name] = round(phase_s.get(name, 0.0) + dur, 1)
    if not instruments:
        table = read_table(blob_store, case_id, "tracks") or read_table(
            blob_store, case_id, "detections"
        )
        if table is not None:
            instruments = sorted(pc.unique(table.column("class_name")).to_pylist())
    return {"phase_durations_s": phase_s, "instruments": instruments}
