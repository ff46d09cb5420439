"""Asset checks: blocking contracts a case asset must meet before anything reads it."""

import contextlib

import dagster as dg
import pandas as pd

from ml_models.video import inspect_layout
from resources.blob_store import BlobStore
from resources.catalog import Catalog
from resources.registry import ModelRegistry
from surg_assets.assets.ingest import processed_video_key, transcoded_video
from surg_assets.assets.perception import (
    instrument_detections,
    instrument_tracks,
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
    with blob_store.local_copy(processed_video_key(case_id)) as local:
        layout = inspect_layout(local)
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


def run_suite(df: pd.DataFrame, name: str, expectations: list) -> dg.AssetCheckResult:
    """Validate a DataFrame against expectations with an ephemeral GE context."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    with contextlib.suppress(Exception):  # progress bars would flood the step's log
        context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(
            globally=False
        )
    batch = (
        context.data_sources.add_pandas(f"{name}-source")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": df})
    )
    suite = gx.ExpectationSuite(name=f"{name}_suite")
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = batch.validate(suite)
    failed = [
        f"{r.expectation_config.type}({_column_of(r.expectation_config.kwargs)}): "
        f"{r.result.get('unexpected_count', 'failed')} unexpected"
        for r in result.results
        if not r.success
    ]
    return dg.AssetCheckResult(
        passed=bool(result.success),
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(failed) or f"{len(df)} rows meet the {name} contract",
        metadata={"rows": len(df), "expectations": len(expectations), "failed": len(failed)},
    )


def _column_of(kwargs: dict) -> str:
    return str(kwargs.get("column") or kwargs.get("column_A") or "")


def _columns_exist(columns: list[str]) -> list:
    import great_expectations as gx

    return [gx.expectations.ExpectColumnToExist(column=c) for c in columns]


def detection_expectations(duration_s: float, width: int, height: int, tracks: bool) -> list:
    """The detections (and tracks) contract as GE expectations."""
    import great_expectations as gx

    from ml_models.formats.cholec80 import INSTRUMENT_CLASSES
    from ml_models.tables import DETECTIONS, TRACKS

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


def _case_facts(catalog: Catalog, case_id: str) -> tuple[float, int, int]:
    case = catalog.get_case(case_id)
    if case is None or case.duration_s is None:
        return 1e9, 10_000, 10_000
    limits = video_limits_from_env()
    from ml_models.video import normalised_size

    w, h = normalised_size(case.width or 0, case.height or 0, limits.transcode_max_height)
    return float(case.duration_s), w, h


@dg.asset_check(
    asset=instrument_detections,
    blocking=True,
    description="Detections: schema, classes, confidences, boxes in the frame, times in the video.",
)
def detections_meet_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore, catalog: Catalog
) -> dg.AssetCheckResult:
    """GE suite over detections.parquet."""
    case_id = context.op_execution_context.partition_key
    df = read_table(blob_store, case_id, "detections.parquet").to_pandas()
    return run_suite(
        df, "detections", detection_expectations(*_case_facts(catalog, case_id), False)
    )


@dg.asset_check(
    asset=instrument_tracks,
    blocking=True,
    description="Tracks: the detections contract plus a positive track id on every row.",
)
def tracks_meet_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore, catalog: Catalog
) -> dg.AssetCheckResult:
    """GE suite over tracks.parquet."""
    case_id = context.op_execution_context.partition_key
    df = read_table(blob_store, case_id, "tracks.parquet").to_pandas()
    return run_suite(df, "tracks", detection_expectations(*_case_facts(catalog, case_id), True))


def phase_expectations(duration_s: float) -> list:
    """The phase timeline contract: ordered, contiguous segments covering the video."""
    import great_expectations as gx

    from ml_models.tables import PHASES

    e = gx.expectations
    return _columns_exist(PHASES.names) + [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToNotBeNull(column="phase_name"),
        e.ExpectColumnValuesToBeBetween(column="confidence", min_value=0, max_value=1),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s"),
        e.ExpectColumnMinToBeBetween(column="start_s", min_value=0, max_value=0),
        e.ExpectColumnMaxToBeBetween(column="end_s", min_value=0, max_value=duration_s + 1.0),
        e.ExpectColumnValuesToBeIncreasing(column="start_s", strictly=True),
        # Contiguity: each segment starts where the previous ended (gap column computed below).
        e.ExpectColumnValuesToBeBetween(column="gap_s", min_value=-1e-6, max_value=1e-6),
    ]


@dg.asset_check(
    asset=phase_timeline,
    blocking=True,
    description="Phases: ordered, contiguous segments from 0 s, inside the video.",
)
def phases_meet_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore, catalog: Catalog
) -> dg.AssetCheckResult:
    """GE suite over phases.parquet."""
    case_id = context.op_execution_context.partition_key
    df = read_table(blob_store, case_id, "phases.parquet").to_pandas()
    df["gap_s"] = (df["start_s"] - df["end_s"].shift(1)).fillna(0.0)
    duration, _, _ = _case_facts(catalog, case_id)
    return run_suite(df, "phases", phase_expectations(duration))


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
        e.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="end_s", column_B="start_s", or_equal=True
        ),
    ]


@dg.asset_check(
    asset=video_events,
    blocking=True,
    description="Events: known kinds, scores in [0, 1], intervals inside the video.",
)
def events_meet_contract(
    context: dg.AssetCheckExecutionContext, blob_store: BlobStore, catalog: Catalog
) -> dg.AssetCheckResult:
    """GE suite over events.parquet."""
    case_id = context.op_execution_context.partition_key
    df = read_table(blob_store, case_id, "events.parquet").to_pandas()
    duration, _, _ = _case_facts(catalog, case_id)
    return run_suite(df, "events", event_expectations(duration))


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
