"""Asset checks: blocking contracts a case asset must meet before anything reads it."""

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ml_models.tables import (
    DETECTIONS,
    INSTRUMENT_USAGE,
    MIN_SEGMENT_KEY,
    PHASE_PROBABILITIES,
    ROW_GROUP_ROWS,
    TRACKS,
    frame_size_of,
)
from ml_models.video import inspect_layout
from resources.blob_store import SEQUENTIAL_BLOCK, BlobStore
from resources.catalog import Catalog
from resources.registry import ModelRegistry
from surg_assets.assets.ingest import processed_video_key, transcoded_video
from surg_assets.assets.perception import (
    instrument_detections,
    instrument_tracks,
    metadata_key,
    phase_timeline,
    read_table,
    video_events,
)
from surg_assets.assets.privacy import deidentified_video, deidentified_video_key
from surg_assets.settings import video_limits_from_env


@dg.asset_check(
    asset=transcoded_video,
    blocking=True,
    description=(
        "The normalised video is H.264 yuv420p at a constant frame rate, within the height "
        "limit, with a keyframe at least every second, faststart, no audio, no source tags."
    ),
)
def transcoded_video_meets_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore
) -> dg.AssetCheckResult:
    """Re-read the written file and check every promise the normaliser makes."""
    case_id = context.op_execution_context.partition_key
    limits = video_limits_from_env()
    with blob_store.open_ranged(processed_video_key(case_id), SEQUENTIAL_BLOCK) as video:
        layout = inspect_layout(video)
    problems = []
    if layout.codec != "h264":
        problems.append(f"codec {layout.codec}")
    if layout.pixel_format != "yuv420p":
        problems.append(f"pixel format {layout.pixel_format}")
    if layout.height > limits.transcode_max_height:
        problems.append(f"height {layout.height} > {limits.transcode_max_height}")
    if not layout.constant_frame_rate:
        problems.append("variable frame rate")
    if layout.max_keyframe_gap_s > 1.0 + 1.0 / max(layout.fps, 1.0):
        problems.append(f"keyframe gap {layout.max_keyframe_gap_s:.2f} s")
    if not layout.faststart:
        problems.append("moov atom not at the start")
    if layout.has_audio:
        problems.append("audio track present")
    if layout.foreign_tags:
        problems.append(f"source metadata kept: {sorted(layout.foreign_tags)}")
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "normalised video meets the contract",
        metadata={
            "codec": layout.codec,
            "pixel_format": layout.pixel_format,
            "size": f"{layout.width}x{layout.height}",
            "fps": layout.fps,
            "frames": layout.frame_count,
            "max_keyframe_gap_s": round(layout.max_keyframe_gap_s, 3),
        },
    )


# -- table checks: Great Expectations suites on each perception table -------------------------

MASK = "mask"


@dataclass
class SuiteTally:
    """Failed expectations of one table, summed over the batches it was validated in."""

    rows: int = 0
    batches: int = 0
    # "expectation(column)" -> unexpected rows summed over batches; None for a failure without
    # a row count (a missing column, an expectation that raised).
    failed: dict[str, int | None] = field(default_factory=dict)

    def add(self, label: str, unexpected: int | None) -> None:
        """Record one failure of expectation ``label`` with ``unexpected`` bad rows."""
        if label not in self.failed:
            self.failed[label] = unexpected
        elif unexpected is not None:
            self.failed[label] = (self.failed[label] or 0) + unexpected

    def add_schema(self, actual: pa.Schema, contract: pa.Schema) -> None:
        """Record each column whose type is not the contract's (a missing column is GE's to
        report): a float64 confidence or an int64 class id is a broken contract too."""
        for f in contract:
            if f.name in actual.names and not actual.field(f.name).type.equals(f.type):
                self.add(f"expect_column_to_be_of_type({f.name}: {f.type})", None)

    def add_side_table(self, table: str, other: "SuiteTally") -> None:
        """Fold in the failures of a table the same asset writes beside its main one."""
        for label, count in other.failed.items():
            self.add(f"{table}: {label}", count)

    def check_result(self, name: str, expectations: int) -> dg.AssetCheckResult:
        """The blocking check's result: passed only if no batch failed any expectation."""
        failed = [
            f"{label}: {'failed' if count is None else f'{count} unexpected'}"
            for label, count in self.failed.items()
        ]
        return dg.AssetCheckResult(
            passed=not failed,
            severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(failed) or f"{self.rows} rows meet the {name} contract",
            metadata={
                "rows": self.rows,
                "batches": self.batches,
                "expectations": expectations,
                "failed": len(failed),
            },
        )


def validate_frames(frames: Iterable[pd.DataFrame], name: str, expectations: list) -> SuiteTally:
    """Validate DataFrames one after another against one suite (GE ephemeral context).

    The context, data source and suite are built once; each frame is a batch of its own, so
    only the frame being validated needs to be in memory.

    Args:
        frames: The table, whole or in consecutive batches of rows.
        name: The table's name (the data asset's and the suite's).
        expectations: GE expectations, each checked on every frame.

    Returns:
        Rows and batches seen, and the failed expectations with unexpected rows summed.
    """
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    with contextlib.suppress(Exception):  # progress bars would flood the step's log
        context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(
            globally=False
        )
    batches = (
        context.data_sources.add_pandas(f"{name}-source")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = gx.ExpectationSuite(name=f"{name}_suite")
    for expectation in expectations:
        suite.add_expectation(expectation)
    tally = SuiteTally()
    for df in frames:
        result = batches.get_batch(batch_parameters={"dataframe": df}).validate(suite)
        tally.rows += len(df)
        tally.batches += 1
        for r in result.results:
            if not r.success:
                config = r.expectation_config
                tally.add(
                    f"{config.type}({_column_of(config.kwargs)})",
                    r.result.get("unexpected_count"),
                )
    return tally


def run_suite(df: pd.DataFrame, name: str, expectations: list) -> dg.AssetCheckResult:
    """Validate a whole (small) DataFrame against expectations with an ephemeral GE context."""
    return validate_frames([df], name, expectations).check_result(name, len(expectations))


def _column_of(kwargs: dict) -> str:
    return str(kwargs.get("column") or kwargs.get("column_A") or "")


def _columns_exist(columns: list[str]) -> list:
    import great_expectations as gx

    return [gx.expectations.ExpectColumnToExist(column=c) for c in columns]


def detection_expectations(duration_s: float, width: int, height: int, tracks: bool) -> list:
    """The detections (and tracks) contract as GE expectations."""
    import great_expectations as gx

    from ml_models.formats.cholec80 import INSTRUMENT_CLASSES

    e = gx.expectations
    schema = TRACKS if tracks else DETECTIONS
    out = _columns_exist(schema.names) + [
        e.ExpectColumnValuesToNotBeNull(column="frame_index"),
        e.ExpectColumnValuesToBeBetween(column="t_s", min_value=0, max_value=duration_s + 1.0),
        e.ExpectColumnValuesToBeInSet(
            column="class_id", value_set=list(range(len(INSTRUMENT_CLASSES)))
        ),
        e.ExpectColumnValuesToBeInSet(column="class_name", value_set=list(INSTRUMENT_CLASSES)),
        e.ExpectColumnValuesToBeBetween(column="confidence", min_value=0, max_value=1),
        e.ExpectColumnValuesToBeBetween(column="x1", min_value=-1, max_value=width + 1),
        e.ExpectColumnValuesToBeBetween(column="x2", min_value=-1, max_value=width + 1),
        e.ExpectColumnValuesToBeBetween(column="y1", min_value=-1, max_value=height + 1),
        e.ExpectColumnValuesToBeBetween(column="y2", min_value=-1, max_value=height + 1),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="x2", column_B="x1"),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="y2", column_B="y1"),
    ]
    if tracks:
        out += [
            e.ExpectColumnValuesToNotBeNull(column="track_id"),
            e.ExpectColumnValuesToBeBetween(column="track_id", min_value=1),
        ]
    return out


# The polygon expectations, checked with pyarrow compute rather than GE (see polygon_failures).
POLYGON_SHAPE = f"expect_column_values_to_be_polygons({MASK})"
POLYGON_IN_FRAME = f"expect_polygon_points_to_be_in_frame({MASK})"


def polygon_failures(mask: pa.Array, width: int, height: int) -> dict[str, int]:
    """Rows whose instance polygon breaks the contract, per polygon expectation.

    A non-null polygon is flattened x, y pairs (``results_to_rows``): an even number of
    coordinates, at least three points, each inside the frame with the boxes' one-pixel margin
    (a missing or NaN coordinate is not inside). Computed on the arrow column, never as Python
    lists, which would be most of the table's memory.

    Args:
        mask: The ``mask`` column of a batch of detections (list of float32, nullable).
        width: Frame width in pixels of the normalised video.
        height: Frame height in pixels.

    Returns:
        Expectation label -> rows that fail it, for the expectations some row fails.
    """
    lengths = pc.list_value_length(mask)  # null for a null polygon: not checked
    malformed = pc.or_(pc.less(lengths, 6), pc.not_equal(pc.bit_wise_and(lengths, 1), 0))
    failures = {POLYGON_SHAPE: malformed.true_count}
    outside = []
    for start, limit in ((0, width + 1), (1, height + 1)):  # x at even positions, y at odd
        coords = pc.list_slice(mask, start, None, 2)
        values = pc.list_flatten(coords)
        inside = pc.and_(pc.greater_equal(values, -1), pc.less_equal(values, limit))
        rows = pc.list_parent_indices(coords)
        outside.append(pc.filter(rows, pc.invert(inside.fill_null(False))))
    failures[POLYGON_IN_FRAME] = pc.count_distinct(pa.concat_arrays(outside)).as_py()
    return {label: count for label, count in failures.items() if count}


def validate_detection_file(
    path: str | Path,
    duration_s: float,
    width: int,
    height: int,
    tracks: bool,
    batch_rows: int = ROW_GROUP_ROWS,
) -> dg.AssetCheckResult:
    """The detections (or tracks) contract over a parquet file, read a batch of rows at a time.

    A 30-minute case holds hundreds of MB of polygons; only one batch is ever in memory, and
    the polygons never become Python objects: GE validates each batch without the ``mask``
    column, and :func:`polygon_failures` checks that column in arrow.

    Args:
        path: A local detections or tracks parquet file.
        duration_s: The video's duration (times must lie inside it).
        width: Frame width in pixels of the normalised video, for files that do not record
            the frame size they were detected on (:func:`ml_models.tables.frame_size_of`).
        height: Frame height in pixels, likewise.
        tracks: Whether the file is a tracks table (a track id on every row).
        batch_rows: Rows per batch.

    Returns:
        The check's result; failures name the expectation and its unexpected rows summed
        over batches.
    """
    name = "tracks" if tracks else "detections"
    # The frame the detector saw, kept with the boxes, over the size the case's settings imply
    # now (a changed transcode limit would misjudge every box of an older case).
    width, height = frame_size_of(path) or (width, height)
    expectations = detection_expectations(duration_s, width, height, tracks)
    # Pre-buffering reads row groups ahead of the batch being decoded: with it the arrow pool's
    # peak grew with the case (117 MB for 5 minutes, 232 MB for 30, with ~1600-point outlines);
    # without it, ~105 MB for both.
    source = pq.ParquetFile(str(path), pre_buffer=False)
    has_mask = MASK in source.schema_arrow.names
    columns = [c for c in source.schema_arrow.names if c != MASK]
    polygons: Counter[str] = Counter()

    def frames() -> Iterator[pd.DataFrame]:
        seen = False
        for batch in source.iter_batches(batch_size=batch_rows):
            seen = True
            if has_mask:
                polygons.update(polygon_failures(batch.column(MASK), width, height))
            frame = batch.select(columns).to_pandas()
            del batch
            # The allocator keeps the freed pages of each batch's polygons; handing them back
            # is what keeps the process's resident size flat over a long case.
            pa.default_memory_pool().release_unused()
            yield frame
        if not seen:  # an empty table still has to have every column
            yield source.schema_arrow.empty_table().select(columns).to_pandas()

    # Every expectation of the suite is row-level (per-row values, per-row column pairs,
    # column existence), so validating batch by batch and summing unexpected rows gives what
    # one validation of the whole table would.
    tally = validate_frames(
        frames(), name, [e for e in expectations if _column_of(e.configuration.kwargs) != MASK]
    )
    if not has_mask:
        tally.add(f"expect_column_to_exist({MASK})", None)
    tally.add_schema(source.schema_arrow, TRACKS if tracks else DETECTIONS)
    for label, count in polygons.items():
        tally.add(label, count)
    return tally.check_result(name, len(expectations) + 2)


# Limits for a case the catalog does not describe (checks run on the tables alone).
UNKNOWN_DURATION_S = 1e9


def _case_facts(catalog: Catalog, case_id: str) -> tuple[float, int, int]:
    case = catalog.get_case(case_id)
    if case is None or case.duration_s is None:
        return UNKNOWN_DURATION_S, 10_000, 10_000
    w, h, _ = video_limits_from_env().normalised(case.width or 0, case.height or 0, 0.0)
    return float(case.duration_s), w, h


@dg.asset_check(
    asset=instrument_detections,
    blocking=True,
    description="Detections: columns and their types, classes, confidences, boxes in the frame, "
    "times in the video.",
)
def detections_meet_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore, catalog: Catalog
) -> dg.AssetCheckResult:
    """GE suite over detections.parquet, streamed a batch of rows at a time."""
    case_id = context.op_execution_context.partition_key
    with blob_store.local_copy(metadata_key(case_id, "detections.parquet")) as path:
        return validate_detection_file(path, *_case_facts(catalog, case_id), tracks=False)


@dg.asset_check(
    asset=instrument_tracks,
    blocking=True,
    description="Tracks: the detections contract plus a positive track id on every row; usage "
    "intervals of known classes inside the video.",
)
def tracks_meet_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore, catalog: Catalog
) -> dg.AssetCheckResult:
    """GE suite over tracks.parquet, streamed a batch of rows at a time, and over the
    instrument_usage table written beside it."""
    case_id = context.op_execution_context.partition_key
    return tracks_contract(blob_store, case_id, _case_facts(catalog, case_id))


def tracks_contract(
    blob_store: BlobStore, case_id: str, facts: tuple[float, int, int]
) -> dg.AssetCheckResult:
    """The tracks check on a case's stored tracks and usage tables.

    Args:
        blob_store: Where the case's tables are.
        case_id: The case.
        facts: The video's duration, width and height.
    """
    with blob_store.local_copy(metadata_key(case_id, "tracks.parquet")) as path:
        result = validate_detection_file(path, *facts, tracks=True)
    usage = SuiteTally()
    usage.add_side_table(
        "instrument_usage",
        side_table_tally(
            "instrument_usage",
            stored_table(blob_store, case_id, "instrument_usage"),
            usage_expectations(facts[0]),
        ),
    )
    if not usage.failed:
        return result
    failed = usage.check_result("instrument_usage", 0).description
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=failed if result.passed else f"{result.description}; {failed}",
        metadata={**result.metadata, "failed": (0 if result.passed else 1) + len(usage.failed)},
    )


def usage_expectations(duration_s: float) -> list:
    """The instrument_usage contract: a known class per track interval inside the video."""
    import great_expectations as gx

    from ml_models.formats.cholec80 import INSTRUMENT_CLASSES

    e = gx.expectations
    return _columns_exist(INSTRUMENT_USAGE.names) + [
        e.ExpectColumnValuesToBeBetween(column="track_id", min_value=1),
        e.ExpectColumnValuesToBeInSet(column="class_name", value_set=list(INSTRUMENT_CLASSES)),
        e.ExpectColumnValuesToBeBetween(column="start_s", min_value=0, max_value=duration_s + 1.0),
        e.ExpectColumnValuesToBeBetween(column="end_s", min_value=0, max_value=duration_s + 1.0),
        e.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="end_s", column_B="start_s", or_equal=True
        ),
        e.ExpectColumnValuesToBeBetween(column="detections", min_value=1),
        e.ExpectColumnValuesToBeBetween(column="mean_confidence", min_value=0, max_value=1),
    ]


def stored_table(blob_store: BlobStore, case_id: str, name: str) -> pa.Table | None:
    """A case's small table ``{name}.parquet``, or None when it was never written."""
    if not blob_store.exists(metadata_key(case_id, f"{name}.parquet")):
        return None
    return read_table(blob_store, case_id, f"{name}.parquet")


def side_table_tally(
    name: str,
    table: pa.Table | None,
    expectations: list,
    prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> SuiteTally:
    """A small table an asset writes beside its main one (``{name}.parquet``, read by
    :func:`stored_table`; None: missing), validated whole against ``expectations`` and its
    contract's column types."""
    from ml_models.tables import SCHEMAS

    if table is None:
        tally = SuiteTally()
        tally.add(f"expect_table_to_exist({name}.parquet)", None)
        return tally
    df = table.to_pandas()
    tally = validate_frames([prepare(df) if prepare else df], name, expectations)
    tally.add_schema(table.schema, SCHEMAS[name])
    return tally


def phase_expectations(duration_s: float, min_segment_s: float = 0.0) -> list:
    """The phase timeline contract: ordered, contiguous segments covering the video, from its
    start to its end (within two seconds: the timeline is read at one frame a second); none
    shorter than the smoothing's minimum when there are several; each name the one its id has
    in the model's vocabulary (the per-second probabilities beside it)."""
    import great_expectations as gx

    from ml_models.tables import PHASES

    e = gx.expectations
    # Segments are whole seconds (read at 1 fps): the minimum rounds as the smoothing rounds it.
    shortest = max(1.0, round(min_segment_s)) - 0.5 if min_segment_s > 0 else 0.0
    return _columns_exist(PHASES.names) + [
        e.ExpectColumnValuesToBeBetween(column="length_s", min_value=shortest),
        e.ExpectColumnPairValuesToBeEqual(column_A="phase_name", column_B="vocabulary_name"),
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToNotBeNull(column="phase_name"),
        e.ExpectColumnValuesToBeBetween(column="confidence", min_value=0, max_value=1),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s"),
        e.ExpectColumnMinToBeBetween(column="start_s", min_value=0, max_value=0),
        e.ExpectColumnMaxToBeBetween(
            column="end_s",
            min_value=0 if duration_s >= UNKNOWN_DURATION_S else max(0.0, duration_s - 2.0),
            max_value=duration_s + 1.0,
        ),
        e.ExpectColumnValuesToBeIncreasing(column="start_s", strictly=True),
        # Contiguity: each segment starts where the previous ended (gap column computed below).
        e.ExpectColumnValuesToBeBetween(column="gap_s", min_value=-1e-6, max_value=1e-6),
    ]


@dg.asset_check(
    asset=phase_timeline,
    blocking=True,
    description="Phases: ordered, contiguous segments from the video's start to its end, none "
    "shorter than the smoothing's minimum, each named as its id is in the model's vocabulary, "
    "column types as contracted; per-second probabilities in [0, 1] summing to one.",
)
def phases_meet_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore, catalog: Catalog
) -> dg.AssetCheckResult:
    """GE suite over phases.parquet, and over the per-second probabilities beside it."""
    case_id = context.op_execution_context.partition_key
    return phases_contract(blob_store, case_id, _case_facts(catalog, case_id)[0])


def phase_columns(df: pd.DataFrame, vocabulary: dict[int, str]) -> pd.DataFrame:
    """The phases table with the columns :func:`phase_expectations` reads beside its own: the
    gap to the previous segment, each segment's length (none for a lone segment, which may be
    shorter than the minimum: the whole video is), and the name its id has in ``vocabulary``."""
    length = df["end_s"] - df["start_s"] if len(df) > 1 else float("nan")
    return df.assign(
        gap_s=(df["start_s"] - df["end_s"].shift(1)).fillna(0.0),
        length_s=length,
        vocabulary_name=df["phase_id"].map(vocabulary),
    )


def phases_contract(blob_store: BlobStore, case_id: str, duration: float) -> dg.AssetCheckResult:
    """The phases check on a case's stored phases and phase probabilities."""

    phases = stored_table(blob_store, case_id, "phases")
    per_second = stored_table(blob_store, case_id, "phase_probabilities")
    vocabulary: dict[int, str] = {}
    if per_second is not None:
        pairs = per_second.group_by(["phase_id", "phase_name"]).aggregate([]).to_pydict()
        vocabulary = dict(zip(pairs["phase_id"], pairs["phase_name"], strict=True))
    meta = (phases.schema.metadata if phases is not None else None) or {}
    min_segment_s = float(meta.get(MIN_SEGMENT_KEY, 0.0))

    def with_sums(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(second_total=df.groupby("t_s")["probability"].transform("sum"))

    expectations = phase_expectations(duration, min_segment_s)
    tally = side_table_tally(
        "phases", phases, expectations, lambda df: phase_columns(df, vocabulary)
    )
    probabilities = probability_expectations(duration)
    tally.add_side_table(
        "phase_probabilities",
        side_table_tally("phase_probabilities", per_second, probabilities, with_sums),
    )
    return tally.check_result("phases", len(expectations) + len(probabilities))


def probability_expectations(duration_s: float) -> list:
    """The per-second phase probabilities: each in [0, 1], each second's summing to one."""
    import great_expectations as gx

    e = gx.expectations
    return _columns_exist(PHASE_PROBABILITIES.names) + [
        e.ExpectColumnValuesToBeBetween(column="t_s", min_value=0, max_value=duration_s + 1.0),
        e.ExpectColumnValuesToBeBetween(column="phase_id", min_value=0),
        e.ExpectColumnValuesToBeBetween(column="probability", min_value=0, max_value=1),
        e.ExpectColumnValuesToBeBetween(column="second_total", min_value=0.99, max_value=1.01),
    ]


def event_expectations(duration_s: float) -> list:
    """The events contract."""
    import great_expectations as gx

    from ml_models.events import EVENT_KINDS
    from ml_models.tables import EVENTS

    e = gx.expectations
    return _columns_exist(EVENTS.names) + [
        e.ExpectColumnValuesToBeInSet(column="kind", value_set=list(EVENT_KINDS)),
        e.ExpectColumnValuesToBeBetween(column="score", min_value=0, max_value=1),
        e.ExpectColumnValuesToBeBetween(column="start_s", min_value=0, max_value=duration_s + 1.0),
        e.ExpectColumnValuesToBeBetween(column="end_s", min_value=0, max_value=duration_s + 1.0),
        e.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="end_s", column_B="start_s", or_equal=True
        ),
    ]


@dg.asset_check(
    asset=video_events,
    blocking=True,
    description="Events: known kinds, scores in [0, 1], intervals inside the video, column types "
    "as contracted.",
)
def events_meet_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore, catalog: Catalog
) -> dg.AssetCheckResult:
    """GE suite over events.parquet."""
    case_id = context.op_execution_context.partition_key
    return events_contract(blob_store, case_id, _case_facts(catalog, case_id)[0])


def events_contract(blob_store: BlobStore, case_id: str, duration: float) -> dg.AssetCheckResult:
    """The events check on a case's stored events table."""
    expectations = event_expectations(duration)
    tally = side_table_tally("events", stored_table(blob_store, case_id, "events"), expectations)
    return tally.check_result("events", len(expectations))


@dg.asset_check(
    asset=deidentified_video,
    blocking=True,
    description="Re-runs the detectors on the output: no sharp out-of-body frame, text or tag.",
)
def deidentified_video_is_clean(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore, registry: ModelRegistry
) -> dg.AssetCheckResult:
    """Fails if an out-of-body frame or a burned-in text region survives de-identification."""
    from ml_models.deid import residual_identifiers
    from ml_models.events import OutOfBodyClassifier
    from surg_assets.models import approved_model

    case_id = context.op_execution_context.partition_key
    _, weights = approved_model(registry, "out_of_body_model")
    with blob_store.local_copy(deidentified_video_key(case_id)) as video:
        problems = residual_identifiers(video, OutOfBodyClassifier.load(weights))
        tags = inspect_layout(video).foreign_tags
    if tags:
        problems.append(f"container metadata kept: {sorted(tags)}")
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems[:5]) or "no identifying frame or text survives",
        metadata={"problems": len(problems)},
    )
