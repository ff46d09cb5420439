"""``events.json``: video event intervals (black, colour bars, out-of-body...) and text boxes."""

from __future__ import annotations

from pathlib import Path

from ml_models.formats._util import format_error, read_json
from ml_models.formats.model import Annotation, AnnotationSet


def load_events(path: str | Path, video: str | None = None) -> AnnotationSet:
    """Import an ``events.json`` (as written by the synthetic generator and the event detector).

    Args:
        path: The JSON file: ``{"fps": ..., "events": [{"kind", "start_s", "end_s", ...}],
            "overlay_text": [{"role", "box"}]}``.
        video: Video name; default: the file's ``video`` field without extension.

    Returns:
        ``event`` annotations (``class_name`` = kind) and ``text`` annotations (burned-in
        text boxes).

    Raises:
        AnnotationFormatError: When an event lacks kind/start_s/end_s or ends before it starts.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise format_error(
            path, "has no events list", "pass an events.json file", where="top level"
        )
    fps = data.get("fps")
    name = video or Path(str(data.get("video", path.stem))).stem
    out = AnnotationSet(source="events")
    for i, e in enumerate(data["events"]):
        where = f"events[{i}]"
        try:
            kind, s, t = str(e["kind"]), float(e["start_s"]), float(e["end_s"])
        except (KeyError, TypeError, ValueError):
            raise format_error(
                path, "an event needs kind, start_s and end_s", "fix the event", where=where
            ) from None
        if t < s:
            raise format_error(
                path, f"event ends ({t}) before it starts ({s})", "fix the times", where=where
            )
        out.annotations.append(
            Annotation(
                kind="event",
                video=name,
                frame_index=e.get("start_frame", round(s * fps) if fps else None),
                end_frame=e.get("end_frame", round(t * fps) if fps else None),
                t_s=s,
                end_s=t,
                class_name=kind,
                score=float(e["score"]) if e.get("score") is not None else None,
                attributes={"detail": e.get("detail", "")},
                source="events",
            )
        )
    for i, tb in enumerate(data.get("overlay_text", [])):
        try:
            x1, y1, x2, y2 = (float(v) for v in tb["box"])
        except (KeyError, TypeError, ValueError):
            raise format_error(
                path,
                "a text box needs a box [x1, y1, x2, y2]",
                "fix it",
                where=f"overlay_text[{i}]",
            ) from None
        out.annotations.append(
            Annotation(
                kind="text",
                video=name,
                class_name=str(tb.get("role", "text")),
                box=(x1, y1, x2, y2),
                source="events",
            )
        )
    return out
