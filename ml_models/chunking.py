"""Splitting one long video into time chunks for detection, and merging the chunks' detections.

Each chunk owns a half-open time range ``[start_s, end_s)`` (the last one runs to the end of the
video) and reads a few seconds more on each side (the overlap). Sampling keeps its grid aligned
to the video's start (:func:`ml_models.video.sample_frames`), so a frame sampled in an overlap is
the same frame in both neighbours; the merge keeps every frame from the one chunk that owns it,
so each sampled frame appears once and the merged table equals a whole-video pass. Chunks can be
parquet files, merged batch by batch into another file, so a long case is never held whole.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ml_models.errors import InputError
from ml_models.tables import DETECTIONS, ROW_GROUP_ROWS, RowGroupWriter, frame_size_metadata

# Frame times are rounded to 1e-4 s in the table; this keeps a frame on a border in one chunk.
_EPS = 1e-6
# Schema metadata key of the detections file: the sampling rate, which the timestamps alone
# cannot always give (see detections_sample_fps).
SAMPLE_FPS_KEY = b"surg.sample_fps"


@dataclass(frozen=True)
class VideoChunk:
    """One time range of a video: the part it owns and the (overlapping) part it reads."""

    index: int
    start_s: float
    end_s: float | None
    read_start_s: float
    read_end_s: float | None

    @property
    def mapping_key(self) -> str:
        """A name for the chunk that sorts in time order (``chunk_0003``)."""
        return f"chunk_{self.index:04d}"

    def owns(self, t_s: float) -> bool:
        """Whether a frame at ``t_s`` belongs to this chunk (and to no other)."""
        return t_s + _EPS >= self.start_s and (self.end_s is None or t_s + _EPS < self.end_s)


def plan_chunks(
    duration_s: float | None, chunk_s: float, overlap_s: float = 2.0
) -> list[VideoChunk]:
    """Cut ``[0, duration_s)`` into chunks of ``chunk_s`` seconds overlapping by ``overlap_s``.

    Args:
        duration_s: Length of the video; ``None`` (unknown) gives one chunk for the whole video.
        chunk_s: Owned length of each chunk; ``0`` or less means no chunking (one chunk).
        overlap_s: Seconds each chunk also reads before its start and after its end.

    Returns:
        Chunks in time order; the last one is open-ended, so a video a little longer than its
        recorded duration is still covered to the end.
    """
    if overlap_s < 0:
        raise InputError(f"the chunk overlap must not be negative (got {overlap_s} s).")
    if duration_s is None or chunk_s <= 0 or duration_s <= chunk_s:
        return [VideoChunk(0, 0.0, None, 0.0, None)]
    count = math.ceil(duration_s / chunk_s - _EPS)
    chunks = []
    for i in range(count):
        start = i * chunk_s
        end = None if i == count - 1 else (i + 1) * chunk_s
        chunks.append(
            VideoChunk(
                index=i,
                start_s=start,
                end_s=end,
                read_start_s=max(0.0, start - overlap_s),
                read_end_s=None if end is None else end + overlap_s,
            )
        )
    return chunks


@dataclass
class ChunkDetections:
    """What detection produced on one chunk (its read range, overlap included).

    The rows are either in memory (``table``) or in a parquet file in time order (``file``: a
    local path when merged; between the steps of a run, the blob key the asset resolves), so a
    long chunk need not be held to be handed on.
    """

    chunk: VideoChunk
    table: pa.Table | None
    frame_times: list[float] = field(default_factory=list)
    seconds: float = 0.0
    model_version: str = ""
    runtime: str = ""
    file: str | None = None
    imgsz: int | None = None
    frame_size: tuple[int, int] | None = None  # (width, height) of the frames detected on
    video_bytes_read: int = 0  # of the video, read by range for this chunk

    @property
    def owned_frames(self) -> int:
        """Sampled frames of this chunk's own range (overlap frames belong to a neighbour)."""
        return sum(self.chunk.owns(t) for t in self.frame_times)

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The rows in time order, a bounded batch at a time (only ``columns``, if given)."""
        if self.file is not None:
            source = pq.ParquetFile(self.file)
            for batch in source.iter_batches(batch_size=ROW_GROUP_ROWS, columns=columns):
                yield pa.Table.from_batches([batch])
        elif self.table is not None:
            yield self.table if columns is None else self.table.select(columns)


@dataclass(frozen=True)
class MergedDetections:
    """The merged table (empty when it went to a file) and what the merge found."""

    table: pa.Table
    frames: int
    overlap_frames: int
    overlap_mismatches: int
    rows: int = 0
    per_class: dict[str, int] = field(default_factory=dict)


def _owned_rows(part: ChunkDetections) -> Iterator[pa.Table]:
    for table in part.batches():
        t = table.column("t_s")
        keep = pc.greater_equal(pc.add(t, _EPS), part.chunk.start_s)
        if part.chunk.end_s is not None:
            keep = pc.and_(keep, pc.less(pc.add(t, _EPS), part.chunk.end_s))
        yield table.filter(keep).cast(DETECTIONS)


def _rows_by_frame(part: ChunkDetections, times: set[float]) -> dict[float, list[tuple]]:
    rows: dict[float, list[tuple]] = {}
    for table in part.batches(["t_s", "class_id", "x1", "y1", "x2", "y2"]):
        for r in table.to_pylist():
            t = round(r["t_s"], 4)
            if t in times:
                box = tuple(round(r[k], 1) for k in ("x1", "y1", "x2", "y2"))
                rows.setdefault(t, []).append((r["class_id"], *box))
    return rows


def _overlap_disagreements(left: ChunkDetections, right: ChunkDetections) -> tuple[int, int]:
    """Frames both neighbours sampled, and how many of those they detected differently."""
    shared = {round(t, 4) for t in left.frame_times} & {round(t, 4) for t in right.frame_times}
    if not shared:
        return 0, 0
    a, b = _rows_by_frame(left, shared), _rows_by_frame(right, shared)
    return len(shared), sum(sorted(a.get(t, [])) != sorted(b.get(t, [])) for t in shared)


def merge_chunks(
    parts: list[ChunkDetections],
    sink: str | Path | None = None,
    sample_fps: float | None = None,
) -> MergedDetections:
    """Merge chunks' detections in time order, each frame taken from the chunk that owns it.

    Neighbours detect the overlap twice; comparing the two is a free consistency check (the same
    weights on the same frame should agree; a mismatch points at a worker with other hardware or
    precision), reported as ``overlap_mismatches``.

    Args:
        parts: Every chunk of the video, in any order.
        sink: A parquet file to write the merged rows to, batch by batch (memory flat in video
            length when the parts are files too); the returned table is then empty.
        sample_fps: The rate the frames were sampled at, kept in the file's schema metadata
            for the steps that read the table (see :func:`detections_sample_fps`).

    The frame size the parts were detected on is kept there too
    (:func:`ml_models.tables.frame_size_of`): the boxes are its pixels, so the checks and the
    tracker need not open the video for it.
    """
    parts = sorted(parts, key=lambda p: p.chunk.index)
    if [p.chunk.index for p in parts] != list(range(len(parts))):
        raise ValueError("detection chunks are missing or repeated; re-run the case.")
    held: list[pa.Table] = []
    per_class: dict[str, int] = {}
    rows = 0
    with contextlib.ExitStack() as stack:
        meta = {}
        if sample_fps is not None:
            meta[SAMPLE_FPS_KEY] = repr(float(sample_fps))
        sizes = {p.frame_size for p in parts if p.frame_size}
        if len(sizes) == 1:  # one video: one size (parts disagreeing would be a bug; say none)
            meta.update(frame_size_metadata(sizes.pop()))
        schema = DETECTIONS.with_metadata(meta) if meta else DETECTIONS
        writer = stack.enter_context(RowGroupWriter(sink, schema)) if sink else None
        for part in parts:
            for table in _owned_rows(part):
                rows += table.num_rows
                for item in pc.value_counts(table.column("class_name")).to_pylist():
                    per_class[item["values"]] = per_class.get(item["values"], 0) + item["counts"]
                if writer:
                    writer.write(table)
                else:
                    held.append(table)
    overlap = mismatches = 0
    for left, right in zip(parts, parts[1:], strict=False):
        shared, differ = _overlap_disagreements(left, right)
        overlap, mismatches = overlap + shared, mismatches + differ
    return MergedDetections(
        table=pa.concat_tables(held) if held else DETECTIONS.empty_table(),
        frames=sum(p.owned_frames for p in parts),
        overlap_frames=overlap,
        overlap_mismatches=mismatches,
        rows=rows,
        per_class=per_class,
    )


def detections_sample_fps(path: str | Path, default: float) -> float:
    """The rate a detections parquet file's frames were sampled at.

    Read from the file's schema metadata, written by :func:`merge_chunks`. Files from before it
    was written there get an estimate from the timestamps: the smallest step between frames with
    detections. That estimate is exact when the video's frame rate is a multiple of the sampling
    rate, and too high otherwise (5 fps from a 24 fps video mixes steps of 4 and 5 frames, so it
    reads 6 fps), hence the metadata.

    Args:
        path: A detections parquet file.
        default: The rate to assume when the file has fewer than two frames with detections.
    """
    meta = pq.read_schema(path).metadata or {}
    if SAMPLE_FPS_KEY in meta:
        return float(meta[SAMPLE_FPS_KEY])
    times = sorted(set(pq.read_table(path, columns=["t_s"]).column("t_s").to_pylist()))
    if len(times) < 2:
        return default
    return round(1.0 / min(b - a for a, b in zip(times, times[1:], strict=False)), 3)
