"""Helpers shared by the importers: error messages, frame numbers in file names, image sizes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from PIL import Image

from ml_models.errors import AnnotationFormatError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_FRAME_IN_NAME = re.compile(r"^(.*?)[_-]?(\d+)$")


def shown(path: Path) -> str:
    """How an annotation file is named in messages: its folder and name, never a full path."""
    return "/".join(path.parts[-2:]) if len(path.parts) >= 2 else path.name


def format_error(
    path: Path, problem: str, fix: str, line: int | None = None, where: str | None = None
) -> AnnotationFormatError:
    """One-sentence error naming the file and the line (or JSON location) and what to do.

    Args:
        path: The annotation file.
        problem: What is wrong, e.g. ``"expected 5 numbers, found 4"``.
        fix: What to do, e.g. ``"fix or delete the line"``.
        line: 1-based line number, when the format has lines.
        where: Location inside a structured file (e.g. ``"annotations[3]"``) when there is no line.

    Returns:
        The error, for the caller to raise.
    """
    at = f" line {line}" if line is not None else (f" at {where}" if where else "")
    return AnnotationFormatError(f"annotation file {shown(path)}{at}: {problem}; {fix}.")


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning syntax errors into an error naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise format_error(
            path, f"cannot be read as UTF-8 text ({e.__class__.__name__})", "check the file"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise format_error(
            path, f"is not valid JSON ({e.msg})", "repair the JSON", line=e.lineno
        ) from None


def split_frame(stem: str) -> tuple[str, int | None]:
    """Split a frame file stem into (video, frame index) when it ends in digits.

    ``"0002a816-006000"`` -> ``("0002a816", 6000)``;
    ``"t80_VID03_000150"`` -> ``("t80_VID03", 150)``.
    """
    m = _FRAME_IN_NAME.match(stem)
    if not m or not m.group(1):
        return stem, None
    return m.group(1).rstrip("_-"), int(m.group(2))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, reading only its header."""
    with Image.open(path) as im:
        return im.size


def as_float(path: Path, token: str, line: int, what: str) -> float:
    """Parse a number of a text annotation line or raise an error naming the line."""
    try:
        v = float(token)
    except ValueError:
        raise format_error(
            path, f"{what} {token!r} is not a number", "fix or delete the line", line
        ) from None
    if v != v or v in (float("inf"), float("-inf")):
        raise format_error(
            path, f"{what} {token!r} is not a finite number", "fix or delete the line", line
        )
    return v


def as_int(path: Path, token: str, line: int, what: str) -> int:
    """Parse a whole number of a text annotation line or raise an error naming the line."""
    try:
        return int(token)
    except ValueError:
        try:
            f = float(token)
        except ValueError:
            f = None
        if f is not None and f.is_integer():
            return int(f)
        raise format_error(
            path, f"{what} {token!r} is not a whole number", "fix or delete the line", line
        ) from None
