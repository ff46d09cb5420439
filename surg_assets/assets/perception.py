"""Perception assets: instruments (detections, tracks), surgical phases, video events."""

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from ml_models.chunking import ChunkDetections, VideoChunk
from ml_models.tables import (
    MIN_SEGMENT_KEY,
    PHASE_PROBABILITIES,
    PHASES,
    from_parquet_bytes,
    table_from_rows,
    to_parquet_bytes,
)
from ml_models.tracking import TRACKERS, USAGE_GAP_S
from resources.blob_store import SEQUENTIAL_BLOCK, BlobStore
from resources.catalog import Catalog
from resources.registry import ModelRegistry
from surg_assets.assets.ingest import decode_gaps_key, processed_video_key, transcoded_video
from surg_assets.models import approved_model
from surg_assets.partitions import cases
from surg_assets.placement import GPU_OP_TAGS, GPU_POOL
from surg_assets.retries import CASE_STEP_RETRY_POLICY
from surg_assets.step_io import STEP_IO_MANAGER, discard_step_outputs, step_file_key


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


def parquet_head(path: str | Path, columns: list[str], rows: int = 8) -> pa.Table:
    """The first ``rows`` rows of a parquet file (only ``columns``), without reading the rest."""
    source = pq.ParquetFile(str(path))
    first = next(source.iter_batches(batch_size=rows, columns=columns), None)
    if first is None:
        return source.schema_arrow.empty_table().select(columns)
    return pa.Table.from_batches([first])


def preview(table: pa.Table, columns: list[str], rows: int = 8) -> dg.MetadataValue:
    """A markdown preview of the first rows, for the asset's page in the UI."""
    if table.num_rows == 0:
        return dg.MetadataValue.md("_no rows_")
    df = table.select(columns).slice(0, rows).to_pandas()
    return dg.MetadataValue.md(df.to_markdown(index=False, floatfmt=".2f"))


class DetectionConfig(dg.Config):
    """How the detector runs over a case, and how a long case is cut into chunks."""

    # Bounds are checked when a run starts, before any model loads: a rate of 0 would otherwise
    # fail deep in the decoder thread.
    sample_fps: float = Field(5.0, gt=0, le=120)
    batch_size: int = Field(8, ge=1)
    # None: the size the Approved detector was trained at (its checkpoint says), so a detector
    # trained at 416 px is run at 416 px without anyone remembering to set this.
    imgsz: int | None = Field(None, ge=32)
    confidence: float = Field(0.25, ge=0, le=1)
    device: str = "auto"
    # ONNX Runtime is about 2x faster than eager PyTorch on a CPU here with the same detections;
    # "torch" is the choice on a GPU (fp16).
    runtime: str = Field("onnx", pattern="^(torch|onnx)$")
    # Minutes of video per detection step (None: SURG_DETECTION_CHUNK_MINUTES, else 10; 0: the
    # whole case in one step). A step-per-pod executor runs the chunks on as many GPU workers.
    chunk_minutes: float | None = Field(None, ge=0)
    # Seconds each chunk also reads past its borders (detected twice, compared, kept once).
    overlap_s: float = Field(2.0, ge=0)


def detection_chunk_seconds(config: DetectionConfig) -> float:
    """Owned length of a detection chunk in seconds, from the config or the settings."""
    from resources.settings import env_float

    minutes = config.chunk_minutes
    if minutes is None:
        minutes = env_float("SURG_DETECTION_CHUNK_MINUTES", 10.0)
    return 60.0 * minutes


@dataclass(frozen=True)
class DetectionWork:
    """One chunk to detect, and the detector version every chunk of the case uses."""

    chunk: VideoChunk
    detector_version: str


@dg.config_mapping
def _detection_config(config: DetectionConfig) -> dict:
    # Keeps the run config of the asset as it was before the fan-out:
    # {"ops": {"instrument_detections": {"config": {...}}}}.
    values = config.model_dump()
    return {
        "plan_detection_chunks": {"config": values},
        "detect_instrument_chunk": {"config": values},
    }


@dg.op(
    ins={"transcoded_video": dg.In(dg.Nothing)},
    out=dg.DynamicOut(io_manager_key=STEP_IO_MANAGER),
    retry_policy=CASE_STEP_RETRY_POLICY,
    description="Cut the case into chunks of N minutes overlapping by a few seconds.",
)
def plan_detection_chunks(
    context: dg.OpExecutionContext,
    config: DetectionConfig,
    catalog: Catalog,
    registry: ModelRegistry,
) -> Iterator[dg.DynamicOutput[DetectionWork]]:
    """One dynamic output per chunk; the detector version is fixed here for the whole case."""
    from ml_models.chunking import plan_chunks

    case = catalog.get_case(context.partition_key)
    version, _ = approved_model(registry, "instrument_detector")
    chunks = plan_chunks(
        case.duration_s if case else None, detection_chunk_seconds(config), config.overlap_s
    )
    context.log.info(
        f"case {context.partition_key}: {len(chunks)} detection chunk(s), "
        f"instrument_detector:{version.version}"
    )
    for chunk in chunks:
        yield dg.DynamicOutput(DetectionWork(chunk, version.version), mapping_key=chunk.mapping_key)


@dg.op(
    out=dg.Out(io_manager_key=STEP_IO_MANAGER),
    retry_policy=CASE_STEP_RETRY_POLICY,
    pool=GPU_POOL,
    tags=GPU_OP_TAGS,
    description="Streaming, batched detection over one chunk of the normalised video.",
)
def detect_instrument_chunk(
    context: dg.OpExecutionContext,
    config: DetectionConfig,
    blob_store: BlobStore,
    registry: ModelRegistry,
    work: DetectionWork,
) -> ChunkDetections:
    """The detector over the chunk's read range (its own range plus the overlap)."""
    from ml_models.detector import detect_video, load_model, resolve_device, trained_imgsz

    case_id, chunk = context.partition_key, work.chunk
    version = next(
        v for v in registry.versions("instrument_detector") if v.version == work.detector_version
    )
    runtime = "torch" if resolve_device(config.device).startswith("cuda") else config.runtime
    weights = registry.local_file(version)
    imgsz = config.imgsz or trained_imgsz(weights)
    model = load_model(
        weights, runtime, imgsz, cache_dir=f"{registry.cache_dir}/onnx/{version.version}"
    )
    last = [0.0]

    def progress(run: object) -> None:
        if time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            context.log.info(
                f"case {case_id} {chunk.mapping_key}: {run.frames} frames, {run.fps:.1f} frames/s"
            )

    # The rows go to a parquet file as they are made and on to the blob store, where the merge
    # step (maybe on another machine) reads them: neither step holds a chunk's detections.
    key = step_file_key(context.run_id, str(context.node_handle), f"{chunk.mapping_key}.parquet")
    # Read by range: a chunk fetches and decrypts only the part of the video it covers (a
    # whole copy per chunk made a 6-hour case in 10-minute chunks decrypt it 36 times).
    with (
        blob_store.open_ranged(processed_video_key(case_id)) as video,
        tempfile.TemporaryDirectory(prefix="surg-detections-") as tmp,
    ):
        sink = Path(tmp) / "detections.parquet"
        _, run = detect_video(
            model,
            video,
            case_id,
            f"instrument_detector:{version.version}",
            sample_fps=config.sample_fps,
            batch_size=config.batch_size,
            imgsz=imgsz,
            conf=config.confidence,
            device=config.device,
            progress=progress,
            start_s=chunk.read_start_s,
            end_s=chunk.read_end_s,
            sink=sink,
        )
        read = video.fetched_bytes
        blob_store.put_file(key, sink)
    return ChunkDetections(
        chunk,
        None,
        run.frame_times,
        run.seconds,
        model_version=work.detector_version,
        runtime=runtime,
        file=key,
        imgsz=imgsz,
        frame_size=run.frame_size,
        video_bytes_read=read,
    )


@dg.op(
    retry_policy=CASE_STEP_RETRY_POLICY,
    description="Merge the chunks (each sampled frame once) into detections.parquet.",
)
def merge_detection_chunks(
    context: dg.OpExecutionContext,
    config: DetectionConfig,
    blob_store: BlobStore,
    parts: list[ChunkDetections],
) -> dg.Output[None]:
    """Write the merged table atomically, then drop the run's intermediate chunk objects."""
    from ml_models.chunking import merge_chunks

    case_id = context.partition_key
    key = metadata_key(case_id, "detections.parquet")
    columns = ["t_s", "class_name", "confidence", "x1", "y1", "x2", "y2"]
    with (
        contextlib.ExitStack() as stack,
        tempfile.TemporaryDirectory(prefix="surg-detections-") as tmp,
    ):
        # Chunk files are read batch by batch into one file: memory flat in the case's length.
        local = [
            replace(p, file=str(stack.enter_context(blob_store.local_copy(p.file))))
            if p.file
            else p
            for p in parts
        ]
        sink = Path(tmp) / "detections.parquet"
        merged = merge_chunks(local, sink=sink, sample_fps=config.sample_fps)
        head = parquet_head(sink, columns)
        blob_store.put_file(key, sink)
    discard_step_outputs(blob_store, context.run_id, f"{context.node_handle.parent.name}.")
    seconds = sum(p.seconds for p in parts)
    video = blob_store.head(processed_video_key(case_id))
    read = sum(p.video_bytes_read for p in parts)
    detector = {p.model_version for p in parts}
    return dg.Output(
        None,
        metadata={
            "key": key,
            "rows": merged.rows,
            "frames": merged.frames,
            "frames_per_second": round(merged.frames / seconds, 2) if seconds else 0.0,
            "seconds": round(seconds, 2),
            "model_version": ", ".join(f"instrument_detector:{v}" for v in sorted(detector)),
            "runtime": parts[0].runtime if parts else config.runtime,
            "imgsz": parts[0].imgsz if parts else config.imgsz,
            "chunks": len(parts),
            "chunk_minutes": round(detection_chunk_seconds(config) / 60.0, 3),
            "overlap_frames": merged.overlap_frames,
            "overlap_mismatches": merged.overlap_mismatches,
            # 1.0: the chunks read the video once between them (plus overlaps and the index).
            "video_read_fraction": round(read / video.size, 3) if video and video.size else None,
            "per_class": dg.MetadataValue.json(merged.per_class),
            "preview": preview(head, columns),
        },
    )


@dg.graph_asset(
    partitions_def=cases,
    ins={"transcoded_video": dg.AssetIn(dagster_type=dg.Nothing)},
    group_name="perception",
    kinds={"pytorch", "parquet"},
    config=_detection_config,
    description=(
        "Instrument boxes, classes, confidences and instance polygons (YOLO segmentation), "
        "detected in chunks of N minutes fanned out over GPU workers and merged."
    ),
)
def instrument_detections(transcoded_video: None) -> None:
    """Plan chunks, detect each (a dynamic map), merge into detections.parquet."""
    parts = plan_detection_chunks(transcoded_video=transcoded_video).map(detect_instrument_chunk)
    return merge_detection_chunks(parts.collect())


class TrackingConfig(dg.Config):
    """Tracker choice (ultralytics' configs) and how usage intervals are bridged."""

    # BoT-SORT (no re-id, no camera-motion compensation: it tracks from the table) scored above
    # ByteTrack on both held-out synthetic cases with the default detector (HOTA 0.63 / 0.58
    # against 0.58 / 0.57; BENCHMARKS.md 2026-12-02).
    tracker: str = Field("botsort", pattern=f"^({'|'.join(TRACKERS)})$")
    # Bridges gaps within one track. Tracks are already cut where unseen for over
    # ml_models.tracking.SPLIT_GAP_S (1 s), so only a value below that changes the intervals;
    # gaps between tracks of one class are bridged by case_analysis (its usage_gap_s).
    max_gap_s: float = Field(USAGE_GAP_S, ge=0)


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
    from ml_models.chunking import detections_sample_fps
    from ml_models.tables import frame_size_of
    from ml_models.tracking import USAGE_COLUMNS, track_detections_to_parquet, usage_intervals
    from ml_models.video import video_frame_size

    started = time.perf_counter()
    case_id = context.partition_key
    case = catalog.get_case(case_id)
    key = metadata_key(case_id, "tracks.parquet")
    with (
        blob_store.local_copy(metadata_key(case_id, "detections.parquet")) as detections,
        tempfile.TemporaryDirectory(prefix="surg-tracks-") as tmp,
    ):
        # The frame the boxes are pixels of, kept with them; only older files need the video.
        frame_size = frame_size_of(detections)
        if frame_size is None:
            with blob_store.open_ranged(processed_video_key(case_id)) as video:
                frame_size = video_frame_size(video)
        # Streamed file to file, and the light columns only where whole columns are needed:
        # the instance polygons, most of both tables, are never all in memory.
        sample_fps = detections_sample_fps(detections, DetectionConfig().sample_fps)
        # The detector the tracks stand on (one version per case; a column of one repeated
        # value is cheap to read).
        detector = sorted(
            set(pq.read_table(detections, columns=["model_version"]).column(0).unique().to_pylist())
        )
        sink = Path(tmp) / "tracks.parquet"
        run = track_detections_to_parquet(detections, sink, frame_size, sample_fps, config.tracker)
        light = pq.read_table(sink, columns=USAGE_COLUMNS)
        usage = usage_intervals(light, sample_fps, config.max_gap_s)
        blob_store.put_file(key, sink)
    write_table(blob_store, case_id, "instrument_usage.parquet", usage)
    return dg.MaterializeResult(
        metadata={
            "key": key,
            "rows": run.rows,
            "tracks": run.tracks,
            "usage_intervals": usage.num_rows,
            "tracker": config.tracker,
            "model_version": ", ".join(detector),
            "sample_fps": sample_fps,
            "seconds": round(time.perf_counter() - started, 2),
            "video_duration_s": case.duration_s if case else None,
            "preview": preview(usage, ["track_id", "class_name", "start_s", "end_s", "detections"]),
        }
    )


class PhaseConfig(dg.Config):
    """How the phase timeline is read, smoothed, and where the model runs."""

    min_segment_s: float = Field(10.0, ge=0)
    # Whole cases are read by the offline temporal model (each second sees the past and the
    # future) and decoded under the model's training-data prior (phase order and timing);
    # off: the causal model's per-second argmax, as a live view would see it.
    whole_case_decoding: bool = True
    # Shorter videos are taken as excerpts, not whole cases: where a phase falls in a case says
    # nothing about a clip cut from its middle, and its last second is not the end of a case,
    # so they are read causally.
    whole_case_min_s: float = Field(120.0, ge=0)
    # Where both stages run: the GPU the step was placed on when there is one (a 6-hour case is
    # 21,600 frames through the encoder), else the CPU.
    device: str = "auto"


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
    """Two-stage recognition (frame CNN + MS-TCN) at one frame per second."""
    from ml_models.detector import resolve_device
    from ml_models.phases import PhaseModel

    started = time.perf_counter()
    case_id = context.partition_key
    version, weights = approved_model(registry, "phase_model")
    model = PhaseModel.load(weights)
    model_version = f"phase_model:{version.version}"
    device = resolve_device(config.device)
    # Read through the lake (decrypted as decoded): no plaintext copy of the video on disk.
    with blob_store.open_ranged(processed_video_key(case_id), SEQUENTIAL_BLOCK) as video:
        # Embedded while decoding: only the per-second features of the case are held.
        times, feats = model.embed_video(video, device)
    probs, segments, whole_case = model.read_case(
        feats,
        config.min_segment_s,
        config.whole_case_decoding,
        config.whole_case_min_s,
        device,
    )
    # Bundles from before the offline model read whole cases causally too; say which it was.
    reader = "offline TCN" if model.offline is not None else "causal TCN"
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
    phases = phases.replace_schema_metadata({MIN_SEGMENT_KEY: repr(float(config.min_segment_s))})
    key = write_table(blob_store, case_id, "phases.parquet", phases)
    write_table(blob_store, case_id, "phase_probabilities.parquet", probabilities)
    return dg.MaterializeResult(
        metadata={
            "key": key,
            "rows": phases.num_rows,
            "segments": phases.num_rows,
            "min_segment_s": config.min_segment_s,
            "seconds_analysed": len(times),
            "decoding": (
                f"whole case: {reader}, training prior"
                if whole_case and model.prior is not None
                else "causal argmax"
            ),
            "model_version": model_version,
            "device": device,
            "seconds": round(time.perf_counter() - started, 2),
            "preview": preview(phases, ["phase_name", "start_s", "end_s", "confidence"]),
        }
    )


class EventsConfig(dg.Config):
    """Sampling rate of the frame-level event detectors and the scene-cut threshold."""

    sample_fps: float = Field(2.0, gt=0, le=120)
    cut_threshold: float = Field(27.0, gt=0)


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

    started = time.perf_counter()
    case_id = context.partition_key
    version, weights = approved_model(registry, "out_of_body_model")
    classifier = OutOfBodyClassifier.load(weights)
    with blob_store.open_ranged(processed_video_key(case_id), SEQUENTIAL_BLOCK) as video:
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
            "seconds": round(time.perf_counter() - started, 2),
            "preview": preview(table, ["kind", "start_s", "end_s", "score"]),
        }
    )
