"""ANVIL XML annotations (the POEMNet phase annotations of peroral endoscopic myotomy)."""

from __future__ import annotations

from pathlib import Path
from xml.parsers import expat

from ml_models.formats._util import format_error
from ml_models.formats.cholec80 import phase_id
from ml_models.formats.model import Annotation, AnnotationSet


def load_anvil(
    path: str | Path, video: str | None = None, attribute: str | None = None
) -> AnnotationSet:
    """Import an ANVIL ``.anvil`` file: every ``<el start end>`` of every track as a phase interval.

    Args:
        path: The ANVIL XML file.
        video: Video name; default: the ``<video src>`` of the head without extension.
        attribute: Which ``<attribute name=...>`` holds the label (default: the first one).

    Returns:
        ``phase`` annotations with times in seconds, ``author`` = the ``coder`` of the head,
        ``phase_id`` set only when the label is a Cholec80 phase.

    Raises:
        AnnotationFormatError: On invalid XML or an element without numeric start/end.
    """
    path = Path(path)
    state: dict = {
        "coder": None,
        "video": None,
        "track": None,
        "el": None,
        "attr": None,
        "text": [],
    }
    els: list[dict] = []
    parser = expat.ParserCreate()

    def start(name: str, attrs: dict[str, str]) -> None:
        line = parser.CurrentLineNumber
        if name == "video" and state["video"] is None:
            state["video"] = attrs.get("src")
        elif name == "info" and attrs.get("key") == "coder":
            state["attr"], state["text"] = "__coder__", []
        elif name == "track":
            state["track"] = attrs.get("name")
        elif name == "el":
            try:
                s, e = float(attrs["start"]), float(attrs["end"])
            except (KeyError, ValueError):
                raise format_error(
                    path, "an <el> needs numeric start and end (seconds)", "fix the element", line
                ) from None
            if e < s:
                raise format_error(
                    path,
                    f"element ends ({e}) before it starts ({s})",
                    "swap or fix the times",
                    line,
                )
            state["el"] = {
                "start": s,
                "end": e,
                "track": state["track"],
                "labels": {},
                "line": line,
            }
        elif name == "attribute" and state["el"] is not None:
            state["attr"], state["text"] = attrs.get("name", ""), []

    def chars(data: str) -> None:
        if state["attr"] is not None:
            state["text"].append(data)

    def end(name: str) -> None:
        if name in ("info", "attribute") and state["attr"] is not None:
            text = "".join(state["text"]).strip()
            if state["attr"] == "__coder__":
                state["coder"] = text
            elif state["el"] is not None:
                state["el"]["labels"][state["attr"]] = text
            state["attr"] = None
        elif name == "el" and state["el"] is not None:
            els.append(state["el"])
            state["el"] = None

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as e:
        raise format_error(
            path, f"is not valid XML ({expat.ErrorString(e.code)})", "repair the XML", e.lineno
        ) from None
    name = video or (Path(state["video"]).stem if state["video"] else path.stem)
    out = AnnotationSet(source="anvil")
    for el in els:
        labels = el["labels"]
        if not labels:
            raise format_error(
                path, "an <el> has no <attribute> label", "add the label", el["line"]
            )
        label = labels.get(attribute) if attribute else next(iter(labels.values()))
        if label is None:
            raise format_error(
                path,
                f"an <el> has no attribute {attribute!r}",
                "pick an attribute the file has",
                el["line"],
            )
        out.annotations.append(
            Annotation(
                kind="phase",
                video=name,
                t_s=el["start"],
                end_s=el["end"],
                class_name=label,
                phase_id=phase_id(label),
                attributes={"track": el["track"], **labels},
                source="anvil",
                author=state["coder"],
            )
        )
    return out
