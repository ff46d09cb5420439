"""The lab's commands: ``surg synth`` (synthetic cases) and ``surg eval`` (metrics on label files).

Registered by ``surg_assets.cli``; user mistakes raise :class:`ml_models.errors.InputError`,
which the main CLI prints as one ``error: ...`` line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ml_models.errors import InputError

console = Console()

eval_app = typer.Typer(
    help="Score predictions against ground truth (detection, tracking, phases, events).",
    no_args_is_help=True,
)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (e.g. ``854x480``).

    Raises:
        InputError: When the text is not two positive whole numbers joined by ``x``.
    """
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"--size must look like 854x480; got {text!r}.")
    return int(parts[0]), int(parts[1])


def synth_command(
    out: Path = typer.Option(..., "--out", help="Folder to write the video and labels into."),
    minutes: float = typer.Option(10.0, "--minutes", help="Length of the video in minutes."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same video)."),
    size: str = typer.Option("854x480", "--size", help="Frame size WIDTHxHEIGHT."),
    fps: int = typer.Option(25, "--fps", help="Frames per second."),
) -> None:
    """Generate a synthetic laparoscopic cholecystectomy with ground truth for every frame."""
    from ml_models.synthetic import generate  # imported here: `surg --help` stays quick

    width, height = parse_size(size)
    with Progress(
        TextColumn("[bold]synth[/bold]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} frames"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("render", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = generate(out, minutes, seed, (width, height), fps, progress=progress)
    table = Table(title=f"synthetic case in {out}", show_header=False)
    for key in ("n_frames", "duration_s", "tracks", "instances", "sampled_frames", "events"):
        table.add_row(key, str(summary[key]))
    table.add_row("speed", f"{summary['x_realtime']}x real time ({summary['elapsed_s']} s)")
    console.print(table)


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _clean(obj: object) -> object:
    """JSON has no NaN: absent values become null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=1) + "\n")
    tmp.replace(path)
    console.print(f"wrote {path}")


def _exists(path: Path, role: str) -> Path:
    if not path.exists():
        raise InputError(f"the {role} {path} does not exist; check the path.")
    return path


GT = typer.Option(..., "--gt", help="Ground-truth annotations (file or folder).")
PRED = typer.Option(..., "--pred", help="Predicted annotations (file or folder).")
JSON_OUT = typer.Option(None, "--json", help="Also write the scores as JSON here.")


@eval_app.command("detection")
def eval_detection(
    gt: Path = GT,
    pred: Path = PRED,
    masks: bool = typer.Option(False, "--masks", help="Score polygon masks instead of boxes."),
    json_path: Path | None = JSON_OUT,
) -> None:
    """mAP50 and mAP50-95 of detections (YOLO folders or COCO JSON, predictions with scores)."""
    from ml_models.formats import load_annotations
    from ml_models.metrics import detection_map

    g = load_annotations(_exists(gt, "ground truth")).of_kind("instrument")
    p = load_annotations(_exists(pred, "predictions"), predictions=True).of_kind("instrument")
    s = detection_map(g, p, iou_type="segm" if masks else "bbox")
    table = Table(title=f"detection ({s.iou_type}): {s.images} frames, {s.gt} boxes")
    for col in ("class", "gt", "AP50", "AP50-95"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, row in s.per_class.items():
        table.add_row(name, str(row["gt"]), _fmt(row["ap50"]), _fmt(row["ap50_95"]))
    table.add_row("[bold]all[/bold]", str(s.gt), _fmt(s.map50), _fmt(s.map50_95))
    console.print(table)
    _write_json(json_path, s.to_dict())


@eval_app.command("tracking")
def eval_tracking(
    gt: Path = GT,
    pred: Path = PRED,
    fps: float = typer.Option(25.0, "--fps", help="Frame rate of the video."),
    json_path: Path | None = JSON_OUT,
) -> None:
    """HOTA, IDF1 and MOTA of tracks (MOT Challenge files)."""
    from ml_models.formats import load_annotations
    from ml_models.metrics import tracking_metrics

    g = load_annotations(_exists(gt, "ground truth"), fps=fps).of_kind("instrument")
    p = load_annotations(_exists(pred, "predictions"), fps=fps, predictions=True)
    s = tracking_metrics(g, p.of_kind("instrument"))
    table = Table(title="tracking")
    for col in ("HOTA", "DetA", "AssA", "IDF1", "MOTA", "MOTP", "IDSW", "GT ids", "pred ids"):
        table.add_column(col, justify="right")
    table.add_row(
        *(_fmt(v) for v in (s.hota, s.deta, s.assa, s.idf1, s.mota, s.motp)),
        str(s.id_switches),
        str(s.gt_ids),
        str(s.pred_ids),
    )
    console.print(table)
    _write_json(json_path, s.to_dict())


@eval_app.command("phases")
def eval_phases(
    gt: Path = GT,
    pred: Path = PRED,
    fps: float = typer.Option(1.0, "--fps", help="Frames per second to compare at."),
    window: float = typer.Option(10.0, "--window", help="Relaxed boundary window in seconds."),
    video_fps: float = typer.Option(25.0, "--video-fps", help="Frame rate the files count in."),
    json_path: Path | None = JSON_OUT,
) -> None:
    """Phase accuracy, precision, recall and Jaccard, strict and with the relaxed boundary."""
    from ml_models.formats import PHASES, load_annotations
    from ml_models.metrics import phase_metrics, phases_to_frames

    g = load_annotations(_exists(gt, "ground truth"), fps=video_fps).of_kind("phase")
    p = load_annotations(_exists(pred, "predictions"), fps=video_fps).of_kind("phase")
    if not g or not p:
        raise InputError("both --gt and --pred must hold phase annotations (Cholec80 phase files).")
    gt_frames = phases_to_frames(g, fps)
    pred_frames = phases_to_frames(p, fps, n_frames=len(gt_frames))
    s = phase_metrics(gt_frames, pred_frames, fps=fps, relaxed_window_s=window)
    r = s.relaxed
    table = Table(title=f"phases: {s.frames} frames at {fps:g} fps")
    table.caption = f"* relaxed boundary ({window:g} s window)"
    table.add_column("phase", overflow="fold")
    for col in ("prec", "rec", "jacc", "prec*", "rec*", "jacc*"):
        table.add_column(col, justify="right")
    for i, name in enumerate(PHASES):
        table.add_row(
            name,
            *(_fmt(v) for v in (s.precision[i], s.recall[i], s.jaccard[i])),
            *(_fmt(v) for v in (r.precision[i], r.recall[i], r.jaccard[i])),
        )
    table.add_row(
        "[bold]mean[/bold]",
        *(_fmt(v) for v in (s.mean_precision, s.mean_recall, s.mean_jaccard)),
        *(_fmt(v) for v in (r.mean_precision, r.mean_recall, r.mean_jaccard)),
    )
    console.print(table)
    console.print(f"accuracy {_fmt(s.accuracy)} (relaxed {_fmt(r.accuracy)})")
    _write_json(json_path, s.to_dict())


@eval_app.command("events")
def eval_events(
    gt: Path = GT,
    pred: Path = PRED,
    iou: float = typer.Option(0.5, "--iou", help="Temporal IoU an interval needs to match."),
    tolerance: float = typer.Option(1.0, "--tolerance", help="Seconds for instant events."),
    json_path: Path | None = JSON_OUT,
) -> None:
    """Precision and recall of event intervals (events.json files)."""
    from ml_models.formats import load_annotations
    from ml_models.metrics import event_metrics

    g = load_annotations(_exists(gt, "ground truth")).of_kind("event")
    p = load_annotations(_exists(pred, "predictions")).of_kind("event")
    s = event_metrics(g, p, iou_threshold=iou, tolerance_s=tolerance)
    table = Table(title=f"events (tIoU >= {iou:g})")
    for col in ("kind", "precision", "recall", "F1", "TP", "FP", "FN"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind, row in s.per_kind.items():
        table.add_row(
            kind,
            *(_fmt(row[k]) for k in ("precision", "recall", "f1")),
            *(str(row[k]) for k in ("tp", "fp", "fn")),
        )
    table.add_row("[bold]all[/bold]", _fmt(s.precision), _fmt(s.recall), _fmt(s.f1), "", "", "")
    console.print(table)
    _write_json(json_path, s.to_dict())


annotations_app = typer.Typer(help="Annotations in the catalog.", no_args_is_help=True)


@annotations_app.command("import")
def annotations_import(
    path: Path = typer.Argument(..., help="An annotation file or dataset folder."),
    dataset: str = typer.Option(..., "--dataset", help="Name of the dataset in the catalog."),
    fmt: str | None = typer.Option(None, "--format", help="Format (guessed when omitted)."),
    fps: float = typer.Option(25.0, help="Frame rate of the annotated video."),
    author: str = typer.Option("import", help="Who annotated it, when the file does not say."),
) -> None:
    """Import annotations (YOLO, COCO, LabelMe, CholecT50, Cholec80, ANVIL, MOT) to the catalog."""
    from ml_models.formats import load_annotations
    from resources.settings import load_settings
    from surg_assets.settings import build_resources

    loaded = load_annotations(path, fmt=fmt, fps=fps)
    catalog = build_resources(load_settings())["catalog"]
    ids = catalog.add_annotations(loaded.to_records(), dataset=dataset, author=author)
    kinds: dict[str, int] = {}
    for a in loaded.annotations:
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    console.print(
        f"imported {len(ids)} annotations into dataset {dataset} "
        f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); "
        f"{len(loaded.skipped)} inputs skipped"
    )
