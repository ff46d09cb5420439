"""One annotation model for every dataset format the project reads.

An :class:`Annotation` is one labelled fact about a video or image: an instrument instance (box,
polygon, track), a phase interval, a tool-presence interval, an event interval or an action
triplet. Importers produce them; the catalog stores them as rows (:meth:`Annotation.to_record`);
dataset exporters and metrics read them back. Coordinates are always pixels of the image the
annotation was made on (``image_width`` x ``image_height``); times are seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# The kinds of annotation; the catalog's `annotations.kind` column holds one of these.
KINDS = ("instrument", "phase", "tool_presence", "event", "triplet", "face", "text")

Box = tuple[float, float, float, float]
Polygon = list[tuple[float, float]]


@dataclass
class Annotation:
    """One labelled fact.

    Attributes:
        kind: One of :data:`KINDS`.
        video: Which video or image sequence it belongs to (a case id, a dataset video name).
        frame_index: Frame the fact holds on (instances) or starts on (intervals), 0-based.
        t_s: Time of ``frame_index`` in seconds, when the frame rate is known.
        end_frame: One past the last frame of an interval (phases, events, tool presence).
        end_s: End time of an interval in seconds.
        image: Image file the annotation was drawn on, relative to the dataset root.
        image_width: Width of that image (or video frame) in pixels.
        image_height: Height in pixels.
        class_id: Cholec80 instrument id (instruments, tool presence) or None if not one.
        class_name: Label as the source spells it (instrument, event kind, phase name).
        box: (x1, y1, x2, y2) pixels.
        polygon: Outline as (x, y) pixel pairs.
        track_id: Identity across frames.
        phase_id: Cholec80 phase id, or None for other procedures' phases.
        score: Confidence of a prediction; None for ground truth.
        attributes: Anything format-specific worth keeping (triplet verb/target, visibility).
        source: Format or dataset it came from (``yolo``, ``coco``, ``cholec80``...).
        author: Who annotated it (annotator, model version), when the source says.
    """

    kind: str
    video: str
    frame_index: int | None = None
    t_s: float | None = None
    end_frame: int | None = None
    end_s: float | None = None
    image: str | None = None
    image_width: int | None = None
    image_height: int | None = None
    class_id: int | None = None
    class_name: str | None = None
    box: Box | None = None
    polygon: Polygon | None = None
    track_id: int | None = None
    phase_id: int | None = None
    score: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    author: str | None = None

    def to_record(self) -> dict[str, Any]:
        """A flat, JSON-serialisable row for a catalog table (box split into x1..y2)."""
        d = asdict(self)
        box = d.pop("box")
        d.update(zip(("x1", "y1", "x2", "y2"), box if box else (None,) * 4, strict=True))
        d["polygon"] = [list(p) for p in self.polygon] if self.polygon else None
        return d

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Annotation:
        """Inverse of :meth:`to_record`."""
        r = dict(record)
        coords = [r.pop(k, None) for k in ("x1", "y1", "x2", "y2")]
        names = {f.name for f in fields(cls)}
        ann = cls(**{k: v for k, v in r.items() if k in names})
        ann.box = tuple(coords) if coords[0] is not None else None  # type: ignore[assignment]
        ann.polygon = [tuple(p) for p in ann.polygon] if ann.polygon else None  # type: ignore[misc]
        return ann


@dataclass
class AnnotationSet:
    """Annotations from one import, with notes about what the importer skipped.

    Attributes:
        annotations: The annotations, in file order.
        source: Format name.
        skipped: Human-readable notes on inputs left out (e.g. a label file without its image).
    """

    annotations: list[Annotation] = field(default_factory=list)
    source: str = ""
    skipped: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(self.annotations)

    def __len__(self) -> int:
        return len(self.annotations)

    def of_kind(self, kind: str) -> list[Annotation]:
        """The annotations of one kind."""
        return [a for a in self.annotations if a.kind == kind]

    def to_records(self) -> list[dict[str, Any]]:
        """Flat rows for the catalog's ``annotations`` table."""
        return [a.to_record() for a in self.annotations]

    def to_json(self, path: str | Path) -> None:
        """Write the set as JSON (records plus import notes)."""
        Path(path).write_text(
            json.dumps(
                {"source": self.source, "skipped": self.skipped, "annotations": self.to_records()}
            )
        )

    @classmethod
    def from_json(cls, path: str | Path) -> AnnotationSet:
        """Read a set written by :meth:`to_json`."""
        d = json.loads(Path(path).read_text())
        return cls(
            [Annotation.from_record(r) for r in d["annotations"]],
            d.get("source", ""),
            d.get("skipped", []),
        )

    @classmethod
    def concat(cls, sets: Iterable[AnnotationSet], source: str = "") -> AnnotationSet:
        """Join several sets into one."""
        out = cls(source=source)
        for s in sets:
            out.annotations.extend(s.annotations)
            out.skipped.extend(s.skipped)
        return out


def runs_to_intervals(
    values: list[Any], frames: list[int], step: int
) -> list[tuple[Any, int, int]]:
    """Run-length encode a per-sample label sequence into (value, start_frame, end_frame) runs.

    Args:
        values: Label of each sample.
        frames: Frame index of each sample (increasing).
        step: Frames one sample stands for (the sampling interval), used for the last run's end.

    Returns:
        Runs with end exclusive; a run ends where the next one starts.
    """
    out: list[tuple[Any, int, int]] = []
    for i, (v, f) in enumerate(zip(values, frames, strict=True)):
        if i and v == out[-1][0]:
            continue
        if out:
            out[-1] = (out[-1][0], out[-1][1], f)
        out.append((v, f, f + step))
    if out:
        out[-1] = (out[-1][0], out[-1][1], frames[-1] + step)
    return out
