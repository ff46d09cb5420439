"""Open an annotation file or folder without saying its format: sniff it, call the importer."""

from __future__ import annotations

import json
from pathlib import Path

from ml_models.formats._util import format_error
from ml_models.formats.anvil import load_anvil
from ml_models.formats.cholec import load_cholec80_phases, load_cholec80_tools, load_cholect50
from ml_models.formats.coco import load_coco, load_labelme
from ml_models.formats.events import load_events
from ml_models.formats.model import AnnotationSet
from ml_models.formats.mot import load_mot
from ml_models.formats.yolo import load_yolo

FORMATS = (
    "yolo",
    "coco",
    "labelme",
    "cholect50",
    "cholec80-phase",
    "cholec80-tool",
    "anvil",
    "mot",
    "events",
)


def sniff_format(path: str | Path) -> str:
    """Name the format of an annotation file or folder (one of :data:`FORMATS`).

    Args:
        path: File or folder.

    Returns:
        The format name.

    Raises:
        AnnotationFormatError: When the format cannot be recognised.
    """
    p = Path(path)
    if p.is_dir():
        if any(p.rglob("labels")) or any(p.glob("*.txt")):
            return "yolo"
        if any(p.glob("*.json")):
            return "labelme"
        raise format_error(
            p,
            "is a folder with neither labels/ nor JSON files",
            "pass a YOLO dataset or LabelMe folder",
        )
    if not p.is_file():
        raise format_error(p, "does not exist", "check the path")
    if p.suffix.lower() in (".anvil", ".xml"):
        return "anvil"
    head = p.read_text(encoding="utf-8", errors="replace")[:4096]
    if p.suffix.lower() == ".json" or head.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "coco"  # let the importer report the syntax error with its line
        if isinstance(data, dict):
            if "shapes" in data:
                return "labelme"
            if "events" in data:
                return "events"
            if isinstance(data.get("annotations"), dict):
                return "cholect50"
        return "coco"
    first = head.splitlines()[0] if head else ""
    cols = first.replace("\t", ",").split(",")
    if cols and cols[0].strip().lower() == "frame":
        return "cholec80-phase" if len(cols) == 2 else "cholec80-tool"
    return "mot"


def load_annotations(
    path: str | Path, fmt: str | None = None, fps: float = 25.0, predictions: bool = False
) -> AnnotationSet:
    """Import any supported annotation file or folder.

    Args:
        path: File or folder.
        fmt: Format name (:data:`FORMATS`); sniffed when None.
        fps: Frame rate for formats that count frames (Cholec80, MOT).
        predictions: For MOT files: the file is tracker output (column 7 is a confidence).

    Returns:
        The annotations.

    Raises:
        AnnotationFormatError: When the format is unknown or the file is malformed.
    """
    fmt = fmt or sniff_format(path)
    loaders = {
        "yolo": lambda: load_yolo(path),
        "coco": lambda: load_coco(path),
        "labelme": lambda: load_labelme(path),
        "cholect50": lambda: load_cholect50(path),
        "cholec80-phase": lambda: load_cholec80_phases(path, fps=fps),
        "cholec80-tool": lambda: load_cholec80_tools(path, fps=fps),
        "anvil": lambda: load_anvil(path),
        "mot": lambda: load_mot(path, fps=fps, predictions=predictions),
        "events": lambda: load_events(path),
    }
    if fmt not in loaders:
        raise format_error(
            Path(path), f"format {fmt!r} is not supported", f"use one of {', '.join(FORMATS)}"
        )
    return loaders[fmt]()
