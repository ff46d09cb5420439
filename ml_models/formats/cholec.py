"""Cholec80 phase and tool-presence files, and CholecT50 triplet JSON.

Two Cholec80 layouts exist and both are read: the official one (tab-separated, a phase *name* on
every frame, tools every 25th frame) and the re-formatted 1 fps CSV (comma-separated, phase ids
0-6, one row every 25 frames) found in several public repositories.
"""

from __future__ import annotations

from pathlib import Path

from ml_models.formats._util import as_int, format_error, read_json
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, PHASES, instrument_id, phase_id
from ml_models.formats.model import Annotation, AnnotationSet, runs_to_intervals


def _rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) of a tab- or comma-separated file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise format_error(
            path, f"cannot be read as text ({e.__class__.__name__})", "check the file"
        ) from None
    if not lines:
        raise format_error(path, "is empty", "pass a Cholec80 annotation file", 1)
    sep = "\t" if "\t" in lines[0] else ","
    header = [h.strip() for h in lines[0].split(sep)]
    if not header or header[0].lower() != "frame":
        raise format_error(
            path,
            f"the header must start with Frame, found {lines[0][:40]!r}",
            "use a Cholec80 annotation file",
            1,
        )
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if line.strip():
            fields = [x.strip() for x in line.split(sep)]
            if len(fields) != len(header):
                raise format_error(
                    path,
                    f"expected {len(header)} fields like the header, found {len(fields)}",
                    "fix or delete the line",
                    n,
                )
            rows.append((n, fields))
    if not rows:
        raise format_error(path, "has a header but no rows", "pass a complete file", 2)
    return header, rows


def _frames(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[list[int], int]:
    frames = []
    for n, f in rows:
        fr = as_int(path, f[0], n, "frame")
        if frames and fr <= frames[-1]:
            raise format_error(
                path,
                f"frame {fr} does not come after frame {frames[-1]}",
                "sort the rows by frame",
                n,
            )
        frames.append(fr)
    step = frames[1] - frames[0] if len(frames) > 1 else 1
    return frames, step


def _cholec80_phase(value: str) -> int | None:
    """The Cholec80 phase id of a phase file's value (an id 0-6 or a name), else None."""
    if value.isdigit():
        return int(value) if int(value) < len(PHASES) else None
    return phase_id(value)


def _phase_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The rows of a phase file, which has two columns (Frame, Phase)."""
    header, rows = _rows(path)
    if len(header) != 2:
        raise format_error(
            path,
            f"a phase file has 2 columns (Frame, Phase), found {len(header)}",
            "pass a phase file, not a tool file",
            1,
        )
    return rows


def load_cholec80_phases(
    path: str | Path, fps: float = 25.0, video: str | None = None, author: str | None = None
) -> AnnotationSet:
    """Import a Cholec80 phase file (official per-frame names, or the 1 fps id CSV).

    Args:
        path: ``videoNN-phase.txt``.
        fps: Frame rate of the video the frame numbers count (25 for Cholec80).
        video: Video name; default: the file name before ``-phase``.
        author: Annotator, if known.

    Returns:
        One ``phase`` annotation per contiguous run of a phase (frames end-exclusive).

    Raises:
        AnnotationFormatError: On an unknown phase, a bad frame number or a ragged row.
    """
    path = Path(path)
    rows = _phase_rows(path)
    frames, step = _frames(path, rows)
    ids = []
    for n, f in rows:
        pid = _cholec80_phase(f[1])
        if pid is None:
            raise format_error(
                path, f"{f[1]!r} is not a Cholec80 phase", "use a phase name or an id 0-6", n
            )
        ids.append(pid)
    name = video or path.stem.replace("-phase", "")
    out = AnnotationSet(source="cholec80")
    for pid, start, end in runs_to_intervals(ids, frames, step):
        out.annotations.append(
            Annotation(
                kind="phase",
                video=name,
                frame_index=start,
                end_frame=end,
                t_s=start / fps,
                end_s=end / fps,
                class_name=PHASES[pid],
                phase_id=pid,
                attributes={"sample_step": step},
                source="cholec80",
                author=author,
            )
        )
    return out


def read_phase_names(path: str | Path) -> tuple[list[int], list[str]]:
    """Frame numbers and phase names of a Cholec80-style phase file, in any vocabulary.

    The layout is Cholec80's (``Frame`` and ``Phase`` columns, tab or comma separated), so
    labelled videos of other procedures can be written the same way. Cholec80 phases (names in
    either spelling, or ids 0-6) come back in the readable spelling of ``PHASES``; any other
    name comes back as written.

    Raises:
        AnnotationFormatError: On a file that is not two columns, an empty name or unsorted
            frames.
    """
    path = Path(path)
    rows = _phase_rows(path)
    frames, _ = _frames(path, rows)
    names = []
    for n, f in rows:
        if not f[1]:
            raise format_error(path, "a row has no phase", "name the phase on every row", n)
        pid = _cholec80_phase(f[1])
        names.append(PHASES[pid] if pid is not None else f[1])
    return frames, names


def load_cholec80_tools(
    path: str | Path, fps: float = 25.0, video: str | None = None
) -> AnnotationSet:
    """Import a Cholec80 tool-presence file (tab or comma separated, 0/1 per tool).

    Args:
        path: ``videoNN-tool.txt``.
        fps: Frame rate of the video the frame numbers count.
        video: Video name; default: the file name before ``-tool``.

    Returns:
        One ``tool_presence`` annotation per contiguous run of a tool being visible.

    Raises:
        AnnotationFormatError: On an unknown tool column or a value other than 0/1.
    """
    path = Path(path)
    header, rows = _rows(path)
    cols = []
    for h in header[1:]:
        cid = instrument_id(h)
        if cid is None:
            raise format_error(
                path, f"column {h!r} is not a Cholec80 tool", "use the Cholec80 tool names", 1
            )
        cols.append(cid)
    frames, step = _frames(path, rows)
    flags: list[list[int]] = [[] for _ in cols]
    for n, f in rows:
        for j, v in enumerate(f[1:]):
            if v not in ("0", "1"):
                raise format_error(path, f"tool value {v!r} must be 0 or 1", "fix the line", n)
            flags[j].append(int(v))
    name = video or path.stem.replace("-tool", "")
    out = AnnotationSet(source="cholec80")
    for j, cid in enumerate(cols):
        for v, start, end in runs_to_intervals(flags[j], frames, step):
            if v:
                out.annotations.append(
                    Annotation(
                        kind="tool_presence",
                        video=name,
                        frame_index=start,
                        end_frame=end,
                        t_s=start / fps,
                        end_s=end / fps,
                        class_id=cid,
                        class_name=INSTRUMENT_CLASSES[cid],
                        attributes={"sample_step": step},
                        source="cholec80",
                    )
                )
    return out


# CholecT50 instance rows: [triplet, tool, tool_detected, tx, ty, tw, th, verb, target,
# target_detected, ox, oy, ow, oh, phase]; boxes normalised, -1 where absent.
_T50_LEN = 15


def load_cholect50(
    path: str | Path, image_size: tuple[int, int] = (854, 480), video: str | None = None
) -> AnnotationSet:
    """Import a CholecT50 label file (``VIDxx.json``: triplets, tool boxes, phases per frame).

    Args:
        path: The JSON file.
        image_size: (width, height) of the frames, to turn normalised boxes into pixels.
        video: Video name; default: the file name.

    Returns:
        ``triplet`` annotations (class = instrument; verb, target and triplet in ``attributes``;
        the tool box when the file has one) and ``phase`` runs from the per-frame phase ids.

    Raises:
        AnnotationFormatError: When the file is not CholecT50 JSON or a row is malformed.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), dict):
        raise format_error(
            path,
            "is not CholecT50 JSON (no annotations object)",
            "pass a CholecT50 labels/VIDxx.json file",
            where="top level",
        )
    cats = data.get("categories", {})
    fps = float(data.get("fps", 1))
    w, h = image_size
    name = video or path.stem

    def cat(kind: str, i: int) -> str | None:
        return cats.get(kind, {}).get(str(i)) if i >= 0 else None

    out = AnnotationSet(source="cholect50")
    frame_phase: list[tuple[int, int]] = []
    for key in sorted(data["annotations"], key=lambda k: int(k) if str(k).isdigit() else -1):
        if not str(key).isdigit():
            raise format_error(
                path, f"frame key {key!r} is not a frame number", "fix the key", where="annotations"
            )
        frame = int(key)
        rows = data["annotations"][key]
        phase = None
        for i, r in enumerate(rows):
            where = f"annotations[{key!r}][{i}]"
            if not isinstance(r, list) or len(r) != _T50_LEN:
                raise format_error(
                    path, f"an instance row has {_T50_LEN} numbers", "fix the row", where=where
                )
            try:
                v = [float(x) for x in r]
            except (TypeError, ValueError):
                raise format_error(
                    path, "an instance row must hold numbers only", "fix the row", where=where
                ) from None
            phase = int(v[14]) if v[14] >= 0 else phase
            triplet, tool = int(v[0]), int(v[1])
            if triplet < 0 and tool < 0:
                continue  # CholecT50 marks frames without any action with a null row
            box = None
            if min(v[3:7]) >= 0:
                box = (v[3] * w, v[4] * h, (v[3] + v[5]) * w, (v[4] + v[6]) * h)
            tool_name = cat("instrument", tool)
            out.annotations.append(
                Annotation(
                    kind="triplet",
                    video=name,
                    frame_index=frame,
                    t_s=frame / fps,
                    image_width=w,
                    image_height=h,
                    class_id=instrument_id(tool_name)
                    if tool_name
                    else (tool if 0 <= tool < 7 else None),
                    class_name=tool_name,
                    box=box,
                    phase_id=int(v[14]) if v[14] >= 0 else None,
                    attributes={
                        "triplet_id": triplet,
                        "triplet": cat("triplet", triplet),
                        "verb_id": int(v[7]),
                        "verb": cat("verb", int(v[7])),
                        "target_id": int(v[8]),
                        "target": cat("target", int(v[8])),
                    },
                    source="cholect50",
                )
            )
        if phase is not None:
            frame_phase.append((frame, phase))
    if frame_phase:
        frames = [f for f, _ in frame_phase]
        step = frames[1] - frames[0] if len(frames) > 1 else 1
        for pid, start, end in runs_to_intervals([p for _, p in frame_phase], frames, step):
            out.annotations.append(
                Annotation(
                    kind="phase",
                    video=name,
                    frame_index=start,
                    end_frame=end,
                    t_s=start / fps,
                    end_s=end / fps,
                    class_name=cat("phase", pid)
                    or (PHASES[pid] if pid < len(PHASES) else str(pid)),
                    phase_id=pid,
                    source="cholect50",
                )
            )
    return out
