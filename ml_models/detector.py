"""Instrument detection and segmentation with an ultralytics YOLO segmentation model.

The model is built from a yaml (no pretrained weights exist here) and trained by the project.
Inference streams over a video: PyAV decodes in its own thread into a bounded queue (memory is flat
in video length), frames are sampled at a fixed rate, batched, run through the model, and turned
into a pyarrow table by one adapter, :func:`results_to_rows`; for whole cases the rows go to a
parquet file batch by batch (``detect_video(..., sink=path)``) so the detections are not held
either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ml_models.errors import InputError
from ml_models.formats.cholec80 import INSTRUMENT_CLASSES
from ml_models.formats.yolo import data_yaml_parts
from ml_models.tables import DETECTIONS, RowGroupWriter, table_from_rows
from ml_models.ultra import OFFLINE_TRAIN_ARGS, ultralytics_offline
from ml_models.video import SampledFrame, VideoSource, sample_frames

DEFAULT_ARCH = "yolo11n-seg.yaml"


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda:0`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def half_precision_args(device: str) -> dict[str, Any]:
    """Predict arguments for FP16 on a GPU, in the spelling the installed ultralytics knows.

    Ultralytics 8.4 replaced ``half=True`` with ``quantize=16`` and warns on every call that
    still passes ``half`` (even ``half=False``), so the CPU passes neither.
    """
    if not device.startswith("cuda"):
        return {}
    ultralytics_offline()
    from ultralytics.utils import DEFAULT_CFG_DICT

    return {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}


def load_model(
    weights: str | Path,
    runtime: str = "torch",
    imgsz: int = 320,
    cache_dir: str | Path | None = None,
) -> Any:
    """Load trained YOLO weights for inference.

    Args:
        weights: A local ``.pt`` file (a missing file is the user's error).
        runtime: ``torch``, or ``onnx`` for ONNX Runtime (about 1.3x faster on a CPU here, same
            detections); the ONNX file is exported once per weights and input size and cached.
        imgsz: Input size the ONNX graph is exported for.
        cache_dir: Where exported graphs are kept (default: beside the weights).
    """
    path = Path(weights)
    if not path.is_file():
        raise InputError(
            "the instrument detector weights file does not exist; train one with "
            "`surg train detector` or `make models`."
        )
    if runtime not in ("torch", "onnx"):
        raise InputError(f"inference runtime {runtime!r} is unknown; use 'torch' or 'onnx'.")
    ultralytics_offline()
    from ultralytics import YOLO

    if runtime == "onnx":
        return YOLO(str(onnx_graph(path, imgsz, cache_dir)), task="segment")
    return _checkpoint(path)


def _checkpoint(path: Path) -> Any:
    """Ultralytics' model of a ``.pt`` checkpoint; a file it cannot read is the user's error
    (an export or inference failure afterwards is not, and is not reported as one)."""
    from ultralytics import YOLO

    try:
        return YOLO(str(path), task="segment")
    except Exception as e:  # a truncated or foreign file fails deep inside torch/ultralytics
        raise _damaged(e) from None


def _damaged(error: Exception) -> InputError:
    return InputError(
        f"the instrument detector weights file cannot be read ({type(error).__name__}); it "
        "is damaged or not an ultralytics checkpoint: register it again or retrain with "
        "`surg train detector`."
    )


# What a checkpoint that does not record its training size is run at: the defaults' size.
DEFAULT_IMGSZ = 320


def trained_imgsz(weights: str | Path) -> int:
    """The input size ``weights`` were trained at (ultralytics keeps its training arguments in
    the checkpoint); :data:`DEFAULT_IMGSZ` for weights that do not record it.

    A detector sees instruments at the scale it learnt them: one trained at 416 px and run at
    320 px found the named instrument in 0.162 of the real clips' frames, at 416 px in 0.188
    (BENCHMARKS.md, "Real detector at 416 px, and what the real clips show").
    """
    import torch

    path = Path(weights)
    if not path.is_file():
        raise InputError(
            "the instrument detector weights file does not exist; train one with "
            "`surg train detector` or `make models`."
        )
    # The project's own checkpoints (ultralytics loads them the same way, unpickling in full).
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated zip or not a torch file at all
        raise _damaged(e) from None
    args = checkpoint.get("train_args") if isinstance(checkpoint, dict) else None
    size = (args or {}).get("imgsz")
    if isinstance(size, list | tuple):  # [h, w]: the long side is what a letterbox scales to
        size = max(size)
    return int(size) if isinstance(size, int | float) and size > 0 else DEFAULT_IMGSZ


def onnx_graph(weights: Path, imgsz: int, cache_dir: str | Path | None = None) -> Path:
    """The ONNX export of ``weights`` at ``imgsz`` (dynamic batch), made once and cached."""
    import hashlib
    import os
    import shutil
    import tempfile

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    target = Path(cache_dir or weights.parent) / f"{weights.stem}-{digest}-{imgsz}.onnx"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.pt"
        shutil.copyfile(weights, local)
        exported = _checkpoint(local).export(
            format="onnx", imgsz=imgsz, dynamic=True, simplify=True, verbose=False
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        # One part file per process: chunk steps of one case may export at the same time.
        part = target.with_suffix(f".{os.getpid()}.part")
        shutil.move(exported, part)
        part.replace(target)  # atomic: readers never see half a graph
    return target


def letterbox_input(bgr: np.ndarray, imgsz: int, stride: int = 32) -> np.ndarray:
    """One frame as the exported graph takes it (1x3xHxW float RGB in 0..1), as ultralytics
    prepares it: long side scaled to ``imgsz``, short side padded to a multiple of ``stride``."""
    import cv2

    h, w = bgr.shape[:2]
    scale = imgsz / max(h, w)
    nw, nh = round(w * scale), round(h * scale)
    img = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    ph, pw = -nh % stride, -nw % stride
    img = cv2.copyMakeBorder(
        img, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_CONSTANT, value=(114,) * 3
    )
    return (img[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0).copy()


def int8_graph(fp32_graph: Path, calibration: list[np.ndarray], imgsz: int, target: Path) -> Path:
    """Static INT8 quantisation (QDQ, per-channel int8 weights, uint8 activations) of an
    exported detector graph, calibrated on ``calibration`` BGR frames (frames of the videos the
    model will see, never the frames it is evaluated on). Ultralytics' metadata (class names,
    stride, task) is carried over, so ``YOLO(target)`` loads it like the FP32 graph.

    The detection head's decoding (sigmoids, distribution focal loss, the concat of box pixels
    with class scores) stays in float: quantised with one scale, the scores (0..1) next to box
    coordinates (0..imgsz) round to zero and nothing is detected. Its convolutions are quantised.
    """
    import re
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graph = onnx.load(str(fp32_graph)).graph
    name = graph.input[0].name
    layers = [int(x) for n in graph.node for x in re.findall(r"^/model\.(\d+)/", n.name)]
    head = f"/model.{max(layers)}/" if layers else None
    keep_float = [
        n.name for n in graph.node if head and n.name.startswith(head) and n.op_type != "Conv"
    ]
    inputs = iter([{name: letterbox_input(f, imgsz)} for f in calibration])

    class Frames(CalibrationDataReader):
        def get_next(self) -> dict | None:
            return next(inputs, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_graph), str(pre), skip_symbolic_shape=True)
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre),
            str(out),
            Frames(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
        )
        model = onnx.load(str(out))
        source = onnx.load(str(fp32_graph))
        del model.metadata_props[:]
        model.metadata_props.extend(source.metadata_props)
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(target))
    return target


def _local_init(init: str | Path) -> str | Path:
    """A weights file that exists, or a model yaml ultralytics ships: never a name it would
    download (``yolo11n-seg.pt`` means COCO-pretrained weights from the internet)."""
    if Path(init).is_file():
        return init
    if Path(init).suffix in (".yaml", ".yml") and "://" not in str(init):
        ultralytics_offline()
        from ultralytics.nn.tasks import yaml_model_load

        try:
            # How ultralytics itself reads a model yaml (yolo11n-seg.yaml is yolo11-seg.yaml at
            # scale n): found among the files it ships, never downloaded.
            yaml_model_load(str(init))
        except FileNotFoundError:
            pass
        else:
            return init
    raise InputError(
        f"--model {Path(init).name}: no such weights file or model yaml. No weights are "
        "downloaded here; pass a model yaml such as yolo11n-seg.yaml to train from scratch, "
        "or a weights file of your own to fine-tune."
    )


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    weights: Path
    metrics: dict[str, float]
    epochs: int
    imgsz: int
    seconds: float


def train_detector(
    data_yaml: str | Path,
    out_dir: str | Path,
    epochs: int = 30,
    imgsz: int = 320,
    init: str | Path = DEFAULT_ARCH,
    batch: int = 16,
    device: str = "auto",
    seed: int = 0,
    workers: int = 0,
    extra: dict[str, Any] | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the segmentation detector on a YOLO dataset; return the best weights and metrics.

    Args:
        data_yaml: YOLO ``data.yaml`` (segmentation labels; box-only labels are converted to
            rectangles by the dataset builders).
        out_dir: Folder for ultralytics' run (weights under ``train/weights``).
        epochs: Training epochs.
        imgsz: Training image size.
        init: A model yaml (from scratch) or weights to fine-tune.
        batch: Batch size.
        device: ``auto``, ``cpu`` or ``cuda:N``.
        seed: Seed for reproducibility.
        workers: Dataloader workers (0 keeps memory predictable on small machines).
        extra: More ultralytics training arguments.
        on_epoch: Called with the epoch number (from 1) after each epoch's validation.
    """
    ultralytics_offline()
    from ultralytics import YOLO

    if not Path(data_yaml).is_file():
        raise InputError("the detector dataset's data.yaml does not exist; check --data.")
    data_yaml_parts(data_yaml)  # before ultralytics, which would download what is missing
    started = time.perf_counter()
    model = YOLO(str(_local_init(init)), task="segment")
    if on_epoch is not None:

        def tell(trainer: Any) -> None:
            # Ultralytics fires this hook once more after its final validation of the best
            # weights, as epoch ``epochs + 1``: that is not an epoch of training.
            if trainer.epoch < trainer.epochs:
                on_epoch(trainer.epoch + 1)

        model.add_callback("on_fit_epoch_end", tell)
    out_dir = Path(out_dir).resolve()
    model.train(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=resolve_device(device),
        seed=seed,
        deterministic=True,
        workers=workers,
        project=str(out_dir),
        name="train",
        **{**OFFLINE_TRAIN_ARGS, **(extra or {})},
    )
    trainer = model.trainer
    best = Path(trainer.best if Path(trainer.best).exists() else trainer.last)
    metrics = {
        k.replace("metrics/", ""): float(v)
        for k, v in (trainer.metrics or {}).items()
        if isinstance(v, int | float)
    }
    return TrainResult(best, metrics, epochs, imgsz, time.perf_counter() - started)


def evaluate_detector(
    weights: str | Path, data_yaml: str | Path, imgsz: int = 320, split: str = "val"
) -> dict[str, float]:
    """Box and mask mAP50 / mAP50-95 of weights on a dataset split (ultralytics' validator)."""
    data_yaml_parts(data_yaml)  # refuses what ultralytics would otherwise download
    model = load_model(weights)
    r = model.val(
        data=str(data_yaml), imgsz=imgsz, split=split, plots=False, verbose=False, workers=0
    )
    return {
        "box_map50": float(r.box.map50),
        "box_map50_95": float(r.box.map),
        "mask_map50": float(r.seg.map50),
        "mask_map50_95": float(r.seg.map),
    }


def results_to_rows(
    results: list[Any],
    frames: list[SampledFrame],
    case_id: str,
    model_version: str,
    names: dict[int, str] | None = None,
) -> list[dict[str, Any]]:
    """The one adapter from ultralytics ``Results`` to rows of the detections table."""
    rows: list[dict[str, Any]] = []
    for result, frame in zip(results, frames, strict=True):
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            continue
        xyxy = boxes.xyxy.cpu().numpy()
        conf = boxes.conf.cpu().numpy()
        cls = boxes.cls.cpu().numpy().astype(int)
        polygons = result.masks.xy if result.masks is not None else [None] * len(cls)
        label = names or result.names
        for i in range(len(cls)):
            poly = polygons[i]
            rows.append(
                {
                    "case_id": case_id,
                    "frame_index": frame.frame_index,
                    "t_s": round(frame.t_s, 4),
                    "class_id": int(cls[i]),
                    "class_name": label.get(int(cls[i]), str(int(cls[i]))),
                    "confidence": float(conf[i]),
                    "x1": float(xyxy[i, 0]),
                    "y1": float(xyxy[i, 1]),
                    "x2": float(xyxy[i, 2]),
                    "y2": float(xyxy[i, 3]),
                    # A mask of a pixel or two outlines as one or two points: no polygon, so
                    # the row keeps its box and no outline (the mask column is nullable).
                    "mask": (
                        np.asarray(poly, np.float32).reshape(-1).round(1).tolist()
                        if poly is not None and len(poly) >= 3
                        else None
                    ),
                    "model_version": model_version,
                }
            )
    return rows


@dataclass
class DetectionRun:
    """Counters of one streaming detection pass."""

    frames: int = 0
    detections: int = 0
    seconds: float = 0.0
    batches: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    # Times of every sampled frame, detections or not: chunk merges count frames by them.
    frame_times: list[float] = field(default_factory=list)
    # (width, height) of the frames detected on: the frame the boxes are pixels of.
    frame_size: tuple[int, int] | None = None

    @property
    def fps(self) -> float:
        """Sampled frames processed per second of wall time."""
        return self.frames / self.seconds if self.seconds else 0.0


def detect_video(
    model: Any,
    video: VideoSource,
    case_id: str,
    model_version: str,
    sample_fps: float = 5.0,
    batch_size: int = 8,
    imgsz: int = 320,
    conf: float = 0.25,
    device: str = "auto",
    progress: Callable[[DetectionRun], None] | None = None,
    start_s: float = 0.0,
    end_s: float | None = None,
    sink: str | Path | None = None,
) -> tuple[pa.Table, DetectionRun]:
    """Run the detector over a video (or the chunk ``start_s``..``end_s``), streaming.

    Held in memory, the detections grow with the video (the instance polygons are a few kB per
    frame); whole cases pass ``sink`` so that memory stays flat in video length.

    Args:
        model: Weights loaded by :func:`load_model`.
        video: The (normalised) video file.
        case_id: Written into every row.
        model_version: Written into every row (``instrument_detector:N``).
        sample_fps: Frames per second of video that are detected.
        batch_size: Frames per inference call.
        imgsz: Input size of the model.
        conf: Lowest confidence kept.
        device: ``auto``, ``cpu`` or ``cuda:N``.
        progress: Called after every batch with the counters so far.
        start_s: First second read.
        end_s: Second reading stops before (``None``: the end of the video).
        sink: A parquet file to write the detections to as they are made, in time order, in row
            groups of :data:`ml_models.tables.ROW_GROUP_ROWS` rows (complete only when this
            returns: write it somewhere private and publish it afterwards).

    Returns:
        The detections table (empty when they went to ``sink``) and counters.
    """
    run = DetectionRun()
    started = time.perf_counter()
    dev = resolve_device(device)
    precision = half_precision_args(dev)
    pending: list[SampledFrame] = []
    held: list[pa.Table] = []
    writer = RowGroupWriter(sink, DETECTIONS) if sink is not None else None

    def flush() -> None:
        results = model.predict(
            [f.bgr for f in pending],
            imgsz=imgsz,
            conf=conf,
            device=dev,
            **precision,
            verbose=False,
            retina_masks=False,
        )
        rows = results_to_rows(results, pending, case_id, model_version)
        if rows:
            table = table_from_rows(DETECTIONS, rows)
            if writer:
                writer.write(table)
            else:
                held.append(table)
        run.frames += len(pending)
        run.frame_times.extend(f.t_s for f in pending)
        run.frame_size = run.frame_size or (pending[0].bgr.shape[1], pending[0].bgr.shape[0])
        run.detections += len(rows)
        run.batches += 1
        for r in rows:
            run.per_class[r["class_name"]] = run.per_class.get(r["class_name"], 0) + 1
        pending.clear()
        run.seconds = time.perf_counter() - started
        if progress:
            progress(run)

    try:
        for frame in sample_frames(video, sample_fps, start_s=start_s, end_s=end_s):
            pending.append(frame)
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    finally:
        if writer:
            writer.close()
    run.seconds = time.perf_counter() - started
    table = pa.concat_tables(held).combine_chunks() if held else DETECTIONS.empty_table()
    return table, run


def class_names() -> dict[int, str]:
    """Class id -> name of the Cholec80 instruments (the detector's vocabulary)."""
    return dict(enumerate(INSTRUMENT_CLASSES))
