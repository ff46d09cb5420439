"""The parquet tables of DESIGN.md section 3, defined once.

Every writer builds its table through these schemas and every reader (asset checks, the web app,
the analysis) can rely on the column names and types.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DETECTIONS = pa.schema(
    [
        ("case_id", pa.string()),
        ("frame_index", pa.int64()),
        ("t_s", pa.float64()),
        ("class_id", pa.int16()),
        ("class_name", pa.string()),
        ("confidence", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        # Instance outline in pixels of the normalised video, flattened x0, y0, x1, y1, ...
        ("mask", pa.list_(pa.float32())),
        ("model_version", pa.string()),
    ]
)

TRACKS = DETECTIONS.append(pa.field("track_id", pa.int64()))

INSTRUMENT_USAGE = pa.schema(
    [
        ("case_id", pa.string()),
        ("track_id", pa.int64()),
        ("class_id", pa.int16()),
        ("class_name", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("detections", pa.int64()),
        ("mean_confidence", pa.float32()),
    ]
)

PHASES = pa.schema(
    [
        ("case_id", pa.string()),
        ("phase_id", pa.int16()),
        ("phase_name", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("confidence", pa.float32()),
        ("model_version", pa.string()),
    ]
)

# detections.parquet and tracks.parquet keep the (width, height) of the frames their boxes are
# pixels of.
FRAME_SIZE_KEY = b"surg.frame_size"


def frame_size_metadata(size: tuple[int, int]) -> dict[bytes, str]:
    """Schema metadata recording the frame size (width, height) a table's boxes are in."""
    return {FRAME_SIZE_KEY: f"{int(size[0])},{int(size[1])}"}


def frame_size_of(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of the frames a detections or tracks parquet file's boxes are pixels
    of, from its schema metadata; None for files written before it was kept there."""
    value = (pq.read_schema(str(path)).metadata or {}).get(FRAME_SIZE_KEY)
    if not value:
        return None
    width, height = (int(v) for v in value.decode().split(","))
    return width, height


# phases.parquet keeps the shortest segment its smoothing allowed, so the check can hold the
# timeline to it.
MIN_SEGMENT_KEY = b"surg.min_segment_s"

PHASE_PROBABILITIES = pa.schema(
    [
        ("case_id", pa.string()),
        ("t_s", pa.float64()),
        ("phase_id", pa.int16()),
        ("phase_name", pa.string()),
        ("probability", pa.float32()),
    ]
)

EVENTS = pa.schema(
    [
        ("case_id", pa.string()),
        ("kind", pa.string()),  # black, colour_bars, scene_cut, out_of_body, burned_in_text
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("score", pa.float32()),
        ("detail", pa.string()),  # JSON: e.g. the text box for burned_in_text
    ]
)

SCHEMAS = {
    "detections": DETECTIONS,
    "tracks": TRACKS,
    "instrument_usage": INSTRUMENT_USAGE,
    "phases": PHASES,
    "phase_probabilities": PHASE_PROBABILITIES,
    "events": EVENTS,
}


def table_from_rows(schema: pa.Schema, rows: Iterable[dict]) -> pa.Table:
    """Build a table of ``schema`` from dict rows (missing nullable columns become null)."""
    rows = list(rows)
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()


def to_parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a table as parquet (zstd) for the blob store."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def from_parquet_bytes(data: bytes) -> pa.Table:
    """Read a parquet table from bytes."""
    return pq.read_table(io.BytesIO(data))


# Rows per row group of a streamed table: with instance polygons (a few kB a row) a buffered
# group stays near 10 MB, and a reader holds one group at a time.
ROW_GROUP_ROWS = 2048


class RowGroupWriter:
    """A parquet file (zstd) written while its rows are produced, one row group at a time.

    Producers hand over small tables (one inference batch, one frame); buffering them up to
    ``rows_per_group`` rows keeps row groups a sensible size for readers without holding more
    than one group in memory. Use as a context manager: the file is complete once it closes.
    """

    def __init__(
        self, path: str | Path, schema: pa.Schema, rows_per_group: int = ROW_GROUP_ROWS
    ) -> None:
        self.schema = schema
        self.rows = 0
        self._rows_per_group = rows_per_group
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer = pq.ParquetWriter(str(path), schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        """Append rows (cast to the file's schema); a row group is written once enough wait."""
        if table.num_rows == 0:
            return
        self._pending.append(table.cast(self.schema))
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= self._rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            group = pa.concat_tables(self._pending).combine_chunks()
            self._writer.write_table(group, row_group_size=max(group.num_rows, 1))
            self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        """Write what is left and the file footer."""
        self._flush()
        self._writer.close()

    def __enter__(self) -> RowGroupWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
