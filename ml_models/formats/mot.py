"""MOT Challenge text files: ground truth (``gt.txt``) and tracker output."""

from __future__ import annotations

from pathlib import Path

from ml_models.formats._util import as_float, as_int, format_error
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES
from ml_models.formats.model import Annotation, AnnotationSet


def load_mot(
    path: str | Path,
    fps: float | None = None,
    video: str | None = None,
    predictions: bool = False,
    class_offset: int = 1,
) -> AnnotationSet:
    """Import a MOT Challenge file: ``frame,id,left,top,width,height,conf[,class,visibility,...]``.

    Frames are 1-based in the file and 0-based in the annotations.

    Args:
        path: ``gt.txt`` or a tracker's result file.
        fps: Frame rate, to fill ``t_s``.
        video: Video name; default: the sequence folder name.
        predictions: True for tracker output (column 7 is a confidence, kept as ``score``);
            False for ground truth (column 7 is the "consider" flag; rows with 0 are kept with
            ``attributes["consider"] = False``).
        class_offset: What to subtract from the class column to get the Cholec80 class id
            (1 for files written by the synthetic generator, MOT's 1-based classes).

    Returns:
        One ``instrument`` annotation per row, with ``track_id``.

    Raises:
        AnnotationFormatError: On a row with fewer than 6 numbers or a bad number.
    """
    path = Path(path)
    name = video or (path.parent.parent.name if path.parent.name == "gt" else path.stem)
    out = AnnotationSet(source="mot")
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        tok = [t.strip() for t in line.replace(" ", ",").split(",") if t.strip()]
        if len(tok) < 6:
            raise format_error(
                path,
                "expected at least 6 comma-separated values (frame,id,left,top,width,height),"
                f" found {len(tok)}",
                "fix or delete the line",
                n,
            )
        frame = as_int(path, tok[0], n, "frame")
        if frame < 1:
            raise format_error(path, f"frame {frame} is not 1-based", "number frames from 1", n)
        tid = as_int(path, tok[1], n, "track id")
        x, y, w, h = (as_float(path, t, n, "box value") for t in tok[2:6])
        if w < 0 or h < 0:
            raise format_error(path, "box width and height must not be negative", "fix the line", n)
        conf = as_float(path, tok[6], n, "confidence") if len(tok) > 6 else 1.0
        cls = as_int(path, tok[7], n, "class") if len(tok) > 7 else -1
        vis = as_float(path, tok[8], n, "visibility") if len(tok) > 8 else None
        cid = cls - class_offset if cls >= class_offset else None
        attrs: dict = {}
        if vis is not None:
            attrs["visibility"] = vis
        if not predictions:
            attrs["consider"] = conf != 0
        out.annotations.append(
            Annotation(
                kind="instrument",
                video=name,
                frame_index=frame - 1,
                t_s=(frame - 1) / fps if fps else None,
                class_id=cid if cid is not None and 0 <= cid < len(INSTRUMENT_CLASSES) else None,
                class_name=INSTRUMENT_CLASSES[cid]
                if cid is not None and 0 <= cid < len(INSTRUMENT_CLASSES)
                else None,
                box=(x, y, x + w, y + h),
                track_id=tid,
                score=conf if predictions else None,
                attributes=attrs,
                source="mot",
            )
        )
    return out
