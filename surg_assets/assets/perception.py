"""Perception assets: instruments (detections, tracks), surgical phases, video events."""

import json
import time

import dagster as dg
import pyarrow as pa

from ml_models.tables import (
    PHASE_PROBABILITIES,
    PHASES,
    from_parquet_bytes,
    table_from_rows,
    to_parquet_bytes,
)
from resources.blob_store import BlobStore
from resources.catalog import Catalog
from resources.registry import ModelRegistry
from surg_assets.assets.ingest import decode_gaps_key, processed_video_key, transcoded_video
from surg_assets.models import approved_model
from surg_assets.partitions import cases
from surg_assets.placement import GPU_OP_TAGS, GPU_POOL
from surg_assets.retries import CASE_STEP_RETRY_POLICY


def metadata_key(case_id: str, name: str) -> str:
    """``processed-metadata/{case_id}/{name}``."""
    return f"processed-metadata/{case_id}/{name}"


def write_table(blob_store: BlobStore, case_id: str, name: str, table: pa.Table) -> str:
    """Store a table as parquet (atomically) and return its key."""
    key = metadata_key(case_id, name)
    blob_store.put_bytes(key, to_parquet_bytes(table))
    return key


def read_table(blob_store: BlobStore, case_id: str, name: str) -> pa.Table:
    """Read one of a case's parquet tables."""
    return from_parquet_bytes(blob_store.get_bytes(metadata_key(case_id, name)))


def preview(table: pa.Table, columns: list[str], rows: int = 8) -> dg.MetadataValue:
    """A markdown preview of the first rows, for the asset's page in the UI."""
    if table.num_rows == 0:
        return dg.MetadataValue.md("_no rows_")
    df = table.select(columns).slice(0, rows).to_pandas()
    return dg.MetadataValue.md(df.to_markdown(index=False, floatfmt=".2f"))


class DetectionConfig(dg.Config):
    """How the detector runs over a case."""

    sample_fps: float = 5.0
    batch_size: int = 8
    imgsz: int = 320
    confidence: float = 0.25
    device: str = "auto"
    # ONNX Runtime is about 2x faster than eager PyTorch on a CPU here with the same detections;
    # "torch" is the choice on a GPU (fp16).
    runtime: str = "onnx"


@dg.asset(
    partitions_def=cases,
    retry_policy=CASE_STEP_RETRY_POLICY,
    deps=[transcoded_video],
    group_name="perception",
    kinds={"pytorch", "parquet"},
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    description="Instrument boxes, classes, confidences and instance polygons (YOLO segmentation).",
)
def instrument_detections(
    context: dg.AssetExecutionContext,
    config: DetectionConfig,
    blob_store: BlobStore,
    registry: ModelRegistry,
) -> dg.MaterializeResult:
    """Streaming, batched detection over the normalised video at ``sample_fps``."""
    from ml_models.detector import detect_video, load_model, resolve_device

    case_id = context.partition_key
    version, weights = approved_model(registry, "instrument_detector")
    runtime = "torch" if resolve_device(config.device).startswith("cuda") else config.runtime
    model = load_model(
        weights, runtime, config.imgsz, cache_dir=f"{registry.cache_dir}/onnx/{version.version}"
    )
    model_version = f"instrument_detector:{version.version}"
    last = [0.0]

    def progress(run: object) -> None:
        if time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            context.log.info(f"case {case_id}: {run.frames} frames, {run.fps:.1f} frames/s")

    with blob_store.local_copy(processed_video_key(case_id)) as video:
        table, run = detect_video(
            model,
            video,
            case_id,
            model_version,
            sample_fps=config.sample_fps,
            batch_size=config.batch_size,
            imgsz=config.imgsz,
            conf=config.confidence,
            device=config.device,
            progress=progress,
        )
    key = write_table(blob_store, case_id, "detections.parquet", table)
    return dg.MaterializeResult(
        metadata={
            "key": key,
            "rows": table.num_rows,
            "frames": run.frames,
            "frames_per_second": round(run.fps, 2),
            "seconds": round(run.seconds, 2),
            "model_version": model_version,
            "runtime": runtime,
            "per_class": dg.MetadataValue.json(run.per_class),
            "preview": preview(table, ["t_s", "class_name", "confidence", "x1", "y1", "x2", "y2"]),
        }
    )


class TrackingConfig(dg.Config):
    """Tracker choice (ultralytics' configs) and how usage intervals are bridged."""

    tracker: str = "bytetrack"
    max_gap_s: float = 2.0


@dg.asset(
    partitions_def=cases,
    retry_policy=CASE_STEP_RETRY_POLICY,
    deps=[instrument_detections],
    group_name="perception",
    kinds={"parquet"},
    description="Instrument tracks (ids stable across the case) and per-instrument usage.",
)
def instrument_tracks(
    context: dg.AssetExecutionContext,
    config: TrackingConfig,
    blob_store: BlobStore,
    catalog: Catalog,
) -> dg.MaterializeResult:
    """ByteTrack / BoT-SORT over the stored detections."""
    from ml_models.tracking import track_detections, usage_intervals

    case_id = context.partition_key
    detections = read_table(blob_store, case_id, "detections.parquet")
    case = catalog.get_case(case_id)
    sample_fps = _sample_fps(detections)
    with blob_store.local_copy(processed_video_key(case_id)) as video:
        from ml_models.video import inspect_layout

        layout = inspect_layout(video)
    tracks = track_detections(detections, (layout.width, layout.height), sample_fps, config.tracker)
    usage = usage_intervals(tracks, sample_fps, config.max_gap_s)
    key = write_table(blob_store, case_id, "tracks.parquet", tracks)
    write_table(blob_store, case_id, "instrument_usage.parquet", usage)
    n_tracks = len(set(tracks.column("track_id").to_pylist())) if tracks.num_rows else 0
    return dg.MaterializeResult(
        metadata={
            "key": key,
            "rows": tracks.num_rows,
            "tracks": n_tracks,
            "usage_intervals": usage.num_rows,
            "tracker": config.tracker,
            "video_duration_s": case.duration_s if case else None,
            "preview": preview(usage, ["track_id", "class_name", "start_s", "end_s", "detections"]),
        }
    )


def _sample_fps(detections: pa.Table) -> float:
    """The sampling rate the detections were made at (from their timestamps)."""
    if detections.num_rows < 2:
        return DetectionConfig().sample_fps
    times = sorted(set(detections.column("t_s").to_pylist()))
    if len(times) < 2:
        return DetectionConfig().sample_fps
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return round(1.0 / min(steps), 3)


class PhaseConfig(dg.Config):
    """Smoothing of the phase timeline."""

    min_segment_s: float = 10.0


@dg.asset(
    partitions_def=cases,
    retry_policy=CASE_STEP_RETRY_POLICY,
    deps=[transcoded_video],
    group_name="perception",
    kinds={"pytorch", "parquet"},
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    description="Surgical phase segments with confidences, and per-second phase probabilities.",
)
def phase_timeline(
    context: dg.AssetExecutionContext,
    config: PhaseConfig,
    blob_store: BlobStore,
    registry: ModelRegistry,
) -> dg.MaterializeResult:
    """Two-stage recognition (frame CNN + causal MS-TCN) at one frame per second."""
    from ml_models.phases import PhaseModel, segments_from_probabilities

    case_id = context.partition_key
    version, weights = approved_model(registry, "phase_model")
    model = PhaseModel.load(weights)
    model_version = f"phase_model:{version.version}"
    with blob_store.local_copy(processed_video_key(case_id)) as video:
        times, probs = model.predict_video(video)
    step = 1.0 / model.sample_fps
    segments = segments_from_probabilities(probs, step, config.min_segment_s)
    phases = table_from_rows(
        PHASES,
        [
            {
                "case_id": case_id,
                "phase_id": s.phase_id,
                "phase_name": model.phases[s.phase_id],
                "start_s": s.start_s,
                "end_s": s.end_s,
                "confidence": s.confidence,
                "model_version": model_version,
            }
            for s in segments
        ],
    )
    probabilities = table_from_rows(
        PHASE_PROBABILITIES,
        [
            {
                "case_id": case_id,
                "t_s": float(t),
                "phase_id": k,
                "phase_name": name,
                "probability": float(probs[i, k]),
            }
            for i, t in enumerate(times)
            for k, name in enumerate(model.phases)
        ],
    )
    key = write_table(blob_store, case_id, "phases.parquet", phases)
    write_table(blob_store, case_id, "phase_probabilities.parquet", probabilities)
    return dg.MaterializeResult(
        metadata={
            "key": key,
            "segments": phases.num_rows,
            "seconds_analysed": len(times),
            "model_version": model_version,
            "preview": preview(phases, ["phase_name", "start_s", "end_s", "confidence"]),
        }
    )


class EventsConfig(dg.Config):
    """Sampling rate of the frame-level event detectors and the scene-cut threshold."""

    sample_fps: float = 2.0
    cut_threshold: float = 27.0


@dg.asset(
    partitions_def=cases,
    retry_policy=CASE_STEP_RETRY_POLICY,
    deps=[transcoded_video],
    group_name="perception",
    kinds={"pytorch", "parquet"},
    description=(
        "Black frames, colour bars, scene cuts, out-of-body frames, burned-in text, and the "
        "stretches of the upload that could not be decoded."
    ),
)
def video_events(
    context: dg.AssetExecutionContext,
    config: EventsConfig,
    blob_store: BlobStore,
    registry: ModelRegistry,
) -> dg.MaterializeResult:
    """One sampled pass (image statistics, out-of-body CNN, text persistence) + PySceneDetect."""
    from ml_models.events import (
        OutOfBodyClassifier,
        decode_gap_events,
        events_table,
        scan_video,
    )

    case_id = context.partition_key
    version, weights = approved_model(registry, "out_of_body_model")
    classifier = OutOfBodyClassifier.load(weights)
    with blob_store.local_copy(processed_video_key(case_id)) as video:
        scan = scan_video(video, classifier, config.sample_fps, config.cut_threshold)
    gaps_key = decode_gaps_key(case_id)
    if blob_store.exists(gaps_key):  # cases transcoded before gaps were recorded have none
        scan.events += decode_gap_events(json.loads(blob_store.get_bytes(gaps_key))["gaps"])
        scan.events.sort(key=lambda e: (e.start_s, e.kind))
    table = events_table(scan.events, case_id)
    key = write_table(blob_store, case_id, "events.parquet", table)
    counts: dict[str, int] = {}
    for e in scan.events:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    return dg.MaterializeResult(
        metadata={
            "key": key,
            "rows": table.num_rows,
            "per_kind": dg.MetadataValue.json(counts),
            "model_version": f"out_of_body_model:{version.version}",
            "preview": preview(table, ["kind", "start_s", "end_s", "score"]),
        }
    )
