"""COCO instance JSON and LabelMe JSON (the CholecInstanceSeg format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml_models.formats._util import format_error, read_json, split_frame
from ml_models.formats.cholec80 import instrument_id
from ml_models.formats.model import Annotation, AnnotationSet, Polygon


def _polygon(flat: list[Any]) -> Polygon:
    return [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def _area(poly: Polygon) -> float:
    return (
        abs(
            sum(
                x0 * y1 - x1 * y0
                for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1], strict=True)
            )
        )
        / 2
    )


def load_coco(path: str | Path, video: str | None = None) -> AnnotationSet:
    """Import a COCO instances JSON file (boxes, polygon or RLE segmentations).

    Args:
        path: The JSON file.
        video: Video name for every image; default: parsed from each image's file name.

    Returns:
        One ``instrument`` annotation per COCO annotation. Polygons with several parts keep the
        largest part in ``polygon`` and all parts in ``attributes["parts"]``; RLE masks are kept
        in ``attributes["rle"]``.

    Raises:
        AnnotationFormatError: When the JSON is invalid or an entry misses a required field.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not all(
        k in data for k in ("images", "annotations", "categories")
    ):
        raise format_error(
            path,
            "is not COCO JSON (needs images, annotations and categories)",
            "export it as COCO instances JSON",
            where="top level",
        )
    cats: dict[str, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise format_error(
                path,
                "a category needs an id and a name",
                "fix the category",
                where=f"categories[{i}]",
            )
        cats[str(c["id"])] = str(c["name"])
    images: dict[str, dict] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not all(
            k in im for k in ("id", "file_name", "width", "height")
        ):
            raise format_error(
                path,
                "an image needs id, file_name, width and height",
                "fix the image entry",
                where=f"images[{i}]",
            )
        images[str(im["id"])] = im
    out = AnnotationSet(source="coco")
    for i, a in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
            raise format_error(
                path, "an annotation needs image_id and category_id", "fix the entry", where=where
            )
        im = images.get(str(a["image_id"]))
        if im is None:
            raise format_error(
                path,
                f"image_id {a['image_id']} is not in images",
                "add the image or drop the annotation",
                where=where,
            )
        name = cats.get(str(a["category_id"]))
        if name is None:
            raise format_error(
                path,
                f"category_id {a['category_id']} is not in categories",
                "add the category",
                where=where,
            )
        seg = a.get("segmentation")
        polygon, attrs = None, {"coco_id": a.get("id"), "iscrowd": a.get("iscrowd", 0)}
        if isinstance(seg, list) and seg:
            parts = [_polygon(p) for p in seg if isinstance(p, list) and len(p) >= 6]
            if parts:
                polygon = max(parts, key=_area)
                if len(parts) > 1:
                    attrs["parts"] = [[list(p) for p in part] for part in parts]
        elif isinstance(seg, dict):
            attrs["rle"] = seg
        box = None
        if "bbox" in a:
            try:
                x, y, w, h = (float(v) for v in a["bbox"])
            except (TypeError, ValueError):
                raise format_error(
                    path,
                    "bbox must be four numbers [x, y, width, height]",
                    "fix the bbox",
                    where=where,
                ) from None
            box = (x, y, x + w, y + h)
        elif polygon:
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            box = (min(xs), min(ys), max(xs), max(ys))
        else:
            raise format_error(
                path, "an annotation needs a bbox or a polygon segmentation", "add one", where=where
            )
        stem = Path(str(im["file_name"])).stem
        vid, frame = split_frame(stem)
        track = a.get("track_id", a.get("instance_id"))
        out.annotations.append(
            Annotation(
                kind="instrument",
                video=video or vid,
                frame_index=frame,
                image=str(im["file_name"]),
                image_width=int(im["width"]),
                image_height=int(im["height"]),
                class_id=instrument_id(name),
                class_name=name,
                box=box,
                polygon=polygon,
                track_id=int(track) if track is not None else None,
                score=float(a["score"]) if "score" in a else None,
                attributes=attrs,
                source="coco",
            )
        )
    return out


def load_labelme(path: str | Path, video: str | None = None) -> AnnotationSet:
    """Import LabelMe JSON: one file, or every ``*.json`` in a folder (CholecInstanceSeg layout).

    Args:
        path: A LabelMe JSON file or a folder of them.
        video: Video name; default: parsed from each file name (``t80_VID03_000150`` -> frame 150).

    Returns:
        One ``instrument`` annotation per polygon or rectangle shape. ``group_id`` (the instance
        number inside the frame) is kept in ``attributes["group_id"]``.

    Raises:
        AnnotationFormatError: When a file is not LabelMe JSON or a shape is malformed.
    """
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    out = AnnotationSet(source="labelme")
    for f in files:
        data = read_json(f)
        if not isinstance(data, dict) or "shapes" not in data:
            raise format_error(
                f, "is not LabelMe JSON (no shapes)", "export it from LabelMe", where="top level"
            )
        w, h = data.get("imageWidth"), data.get("imageHeight")
        vid, frame = split_frame(f.stem)
        for i, s in enumerate(data["shapes"]):
            where = f"shapes[{i}]"
            pts = s.get("points") if isinstance(s, dict) else None
            kind = s.get("shape_type", "polygon") if isinstance(s, dict) else None
            if not isinstance(pts, list) or "label" not in s:
                raise format_error(
                    f, "a shape needs a label and points", "fix the shape", where=where
                )
            try:
                points = [(float(p[0]), float(p[1])) for p in pts]
            except (TypeError, ValueError, IndexError):
                raise format_error(
                    f, "points must be [x, y] pairs", "fix the shape", where=where
                ) from None
            if kind == "rectangle" and len(points) == 2:
                (x0, y0), (x1, y1) = points
                polygon, box = None, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            elif kind == "polygon" and len(points) >= 3:
                polygon = points
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                box = (min(xs), min(ys), max(xs), max(ys))
            else:
                raise format_error(
                    f,
                    f"shape_type {kind!r} with {len(points)} points is not a polygon or rectangle",
                    "fix the shape",
                    where=where,
                )
            name = str(s["label"])
            out.annotations.append(
                Annotation(
                    kind="instrument",
                    video=video or vid,
                    frame_index=frame,
                    image=data.get("imagePath"),
                    image_width=int(w) if w else None,
                    image_height=int(h) if h else None,
                    class_id=instrument_id(name),
                    class_name=name,
                    box=box,
                    polygon=polygon,
                    attributes={"group_id": s.get("group_id")},
                    source="labelme",
                )
            )
    return out
