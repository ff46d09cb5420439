"""YOLO detect and segment label folders (ultralytics layout: ``images/`` beside ``labels/``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ml_models.errors import InputError
from ml_models.formats._util import (
    IMAGE_SUFFIXES,
    as_float,
    as_int,
    format_error,
    image_size,
    shown,
    split_frame,
)
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, instrument_id
from ml_models.formats.model import Annotation, AnnotationSet


def yaml_class_names(names: object) -> list[str] | None:
    """A data.yaml's ``names`` (a list, or a mapping from class index) as a list, else None."""
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    return None


def data_yaml_parts(data_yaml: str | Path) -> tuple[list[str], list[str], list[str]]:
    """A YOLO ``data.yaml``'s class names and its absolute train and val image folders.

    Ultralytics downloads a dataset whose folders are missing when its ``data.yaml`` says how
    (a URL, a shell command or Python code under ``download``). Nothing here may reach the
    network or run a dataset's code, so such a file is refused, as is a missing folder.

    Raises:
        InputError: Naming the file and what to change.
    """
    path = Path(data_yaml)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        spec = None
    names = yaml_class_names(spec.get("names")) if isinstance(spec, dict) else None
    if names is None or "train" not in spec or "val" not in spec:
        raise InputError(
            f"{path.name} is not a YOLO data.yaml (train, val and names); pass the "
            "data.yaml of a YOLO dataset."
        )
    if spec.get("download"):
        raise InputError(
            f"{path.name} has a download entry; nothing is downloaded or run from a dataset "
            "here: fetch the dataset yourself, then remove the entry."
        )
    root = Path(spec.get("path") or path.parent)
    if not root.is_absolute():
        root = path.parent / root

    def folders(key: str) -> list[str]:
        value = spec.get(key) or []
        listed = [root / p for p in ([value] if isinstance(value, str) else value)]
        missing = [p for p in listed if not p.exists()]
        if not listed or missing:
            raise InputError(
                f"{path.name}: its {key} images ({', '.join(map(str, missing)) or 'none'}) "
                "do not exist; fix path/train/val in the file."
            )
        return [str(p) for p in listed]

    return names, folders("train"), folders("val")


def listed_images(entries: list[str]) -> list[Path]:
    """The images that a ``data.yaml``'s train or val entries name: folders, searched
    recursively, and ``.txt`` lists of image paths (relative to the list), sorted."""
    found: list[Path] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            found += [p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        else:
            lines = entry.read_text().splitlines()
            found += [(entry.parent / ln.strip()).resolve() for ln in lines if ln.strip()]
    return sorted(found)


def validation_images(data_yaml: str | Path) -> list[Path]:
    """The images of a YOLO ``data.yaml``'s validation folders (a ``.txt`` list is read too)."""
    return listed_images(data_yaml_parts(data_yaml)[2])


def label_path(image: Path) -> Path:
    """The label file ultralytics pairs with an image: the last ``images`` folder of its path
    becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")
    at = len(parts) - 1 - parts[::-1].index("images")
    parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


def names_from_yaml(root: Path) -> list[str] | None:
    """The class names of the ``data.yaml`` (or ``dataset.yaml``) in a YOLO dataset folder,
    or None when it has none."""
    for p in (root / "data.yaml", root / "dataset.yaml"):
        if p.is_file():
            try:
                data = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as e:
                line = getattr(getattr(e, "problem_mark", None), "line", None)
                raise format_error(
                    p, "is not valid YAML", "repair it", None if line is None else line + 1
                ) from None
            names = yaml_class_names(data.get("names"))
            if names is not None:
                return names
    return None


def _image_for(label: Path, root: Path, images: dict[str, list[Path]]) -> Path | None:
    candidates = images.get(label.stem, [])
    if not candidates:
        return None
    # Ultralytics pairs labels/x/y.txt with images/x/y.jpg; prefer that, else any same stem.
    rel = label.relative_to(root).as_posix().replace("labels/", "images/", 1)
    for c in candidates:
        if c.relative_to(root).with_suffix("").as_posix() == rel[: -len(".txt")]:
            return c
    return candidates[0]


def parse_yolo_label(
    path: Path,
    width: int,
    height: int,
    class_names: list[str],
    video: str | None = None,
    image: str | None = None,
) -> list[Annotation]:
    """Parse one YOLO label file (detect ``c cx cy w h`` or segment ``c x1 y1 x2 y2 ...``).

    Args:
        path: The ``.txt`` label file.
        width: Width of its image in pixels.
        height: Height of its image in pixels.
        class_names: Names of the label indices.
        video: Video the frame belongs to (default: parsed from the file name).
        image: Image path to record.

    Returns:
        One ``instrument`` annotation per line, coordinates in pixels.

    Raises:
        AnnotationFormatError: On a malformed line, naming the file and line.
    """
    vid, frame = split_frame(path.stem)
    out = []
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        tok = raw.split()
        if not tok:
            continue
        if len(tok) < 5:
            raise format_error(
                path,
                "expected 5 values (class cx cy w h) or a class and at least 3 x y pairs,"
                f" found {len(tok)}",
                "fix or delete the line",
                n,
            )
        k = as_int(path, tok[0], n, "class")
        if not 0 <= k < len(class_names):
            raise format_error(
                path,
                f"class {k} is not one of the {len(class_names)} classes of the dataset",
                "fix the class or the dataset's names",
                n,
            )
        vals = [as_float(path, t, n, "coordinate") for t in tok[1:]]
        # Prediction files (ultralytics save_conf) append a confidence: 6 values for a box,
        # an even count for a polygon; ground truth has 5 or an odd count.
        score = None
        if len(tok) == 6 or (len(tok) >= 8 and len(tok) % 2 == 0):
            score = vals.pop()
        if len(vals) != 4 and (len(vals) < 6 or len(vals) % 2):
            raise format_error(
                path, "a polygon needs at least 3 x y pairs", "fix or delete the line", n
            )
        if any(v < -1e-6 or v > 1 + 1e-6 for v in vals):
            raise format_error(
                path,
                "coordinates must be normalised to 0..1",
                "divide pixel coordinates by the image size",
                n,
            )
        polygon = None
        if len(vals) == 4:
            cx, cy, bw, bh = vals
            box = (
                (cx - bw / 2) * width,
                (cy - bh / 2) * height,
                (cx + bw / 2) * width,
                (cy + bh / 2) * height,
            )
        else:
            polygon = [(vals[i] * width, vals[i + 1] * height) for i in range(0, len(vals), 2)]
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            box = (min(xs), min(ys), max(xs), max(ys))
        name = class_names[k]
        out.append(
            Annotation(
                kind="instrument",
                video=video or vid,
                frame_index=frame,
                image=image,
                image_width=width,
                image_height=height,
                class_id=instrument_id(name),
                class_name=name,
                box=box,
                polygon=polygon,
                score=score,
                attributes={"label_index": k},
                source="yolo",
            )
        )
    return out


def load_yolo(
    root: str | Path,
    image_size_: tuple[int, int] | None = None,
    class_names: list[str] | None = None,
) -> AnnotationSet:
    """Import a YOLO dataset folder (detect or segment labels; both may be mixed).

    Label files are paired with images by name (``labels/a/b.txt`` with ``images/a/b.jpg``, else
    any image of the same stem); the image gives the pixel size. Labels without an image are
    skipped (and listed in ``skipped``) unless ``image_size_`` says how big the images were.

    Args:
        root: Dataset folder (holding ``labels/`` and ``images/``, and optionally ``data.yaml``).
        image_size_: (width, height) to assume for labels whose image is missing.
        class_names: Names of the label indices; default: ``data.yaml``'s, else Cholec80's.

    Returns:
        The annotations, one per label line.

    Raises:
        AnnotationFormatError: On a malformed label file.
    """
    root = Path(root)
    if not root.is_dir():
        raise format_error(
            root, "is not a folder", "pass the dataset folder that holds labels/ and images/"
        )
    names = class_names or names_from_yaml(root) or list(INSTRUMENT_CLASSES)
    images: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            images.setdefault(p.stem, []).append(p)
    labels = sorted(p for p in root.rglob("*.txt") if "labels" in p.relative_to(root).parts)
    out = AnnotationSet(source="yolo")
    for label in labels:
        img = _image_for(label, root, images)
        if img is not None:
            w, h = image_size(img)
        elif image_size_ is not None:
            w, h = image_size_
        else:
            out.skipped.append(f"{shown(label)}: no image with this name")
            continue
        out.annotations.extend(
            parse_yolo_label(
                label, w, h, names, image=img.relative_to(root).as_posix() if img else None
            )
        )
    return out
