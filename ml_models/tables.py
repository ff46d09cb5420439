"""The parquet tables of DESIGN.md section 3, defined once.

Every writer builds its table through these schemas and every reader (asset checks, the web app,
the analysis) can rely on the column names and types.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

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
