"""Ultralytics, configured never to touch the network.

Ultralytics reaches out on its own in several places: weight downloads when a name like
``yolo11n.pt`` is missing, the Arial font for plots, the AMP check (downloads ``yolo11n.pt``),
update and hub checks, and settings-driven loggers (Comet, ClearML, MLflow...). Hospitals run
air-gapped and our CI has no internet, so every import of ultralytics in the project goes through
:func:`ultralytics_offline`, which sets the offline flags before the first import, keeps
ultralytics' settings file inside ``SURG_HOME`` (never the user's home), and switches every
online integration off.

It also stops ultralytics from idling a core. On import it sets ``OMP_NUM_THREADS=1`` for the
process and its children, and its CPU device selection sets torch to ``cpu_count - 1``
threads: on a 2-core machine that trains and detects on one core.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

_CONFIGURED = False

# Training arguments that would otherwise download (AMP check, plot fonts) or write clutter.
OFFLINE_TRAIN_ARGS = {"amp": False, "plots": False, "exist_ok": True, "verbose": False}


def ultralytics_offline(config_dir: str | Path | None = None) -> ModuleType:
    """Import ultralytics with every online feature disabled; return the module.

    Args:
        config_dir: Where ultralytics keeps its settings (default ``$SURG_HOME/ultralytics``).
            Only honoured on the first call in a process (ultralytics reads it at import).
    """
    global _CONFIGURED
    if not _CONFIGURED:
        home = Path(os.environ.get("SURG_HOME") or "./.surg").expanduser().resolve()
        cfg = Path(config_dir) if config_dir else home / "ultralytics"
        cfg.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg))
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ.setdefault("YOLO_VERBOSE", "False")
        # Before the import, which would otherwise set it to 1 for every later OpenMP user
        # (numpy, OpenCV, torch in child processes such as Dagster's run workers).
        os.environ.setdefault("OMP_NUM_THREADS", str(cpu_threads()))
    import ultralytics
    from ultralytics.utils import SETTINGS

    if not _CONFIGURED:
        online = (
            "sync", "hub", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb",
            "vscode_msg", "openvino_msg",
        )  # fmt: skip
        SETTINGS.update({k: False for k in online if k in SETTINGS})
        _provide_fonts()
        _use_all_cores()
        _CONFIGURED = True
    return ultralytics


def cpu_threads() -> int:
    """Threads torch should use on the CPU: ``OMP_NUM_THREADS`` when set, else every usable core."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _use_all_cores() -> None:
    """Make ultralytics' CPU device selection keep torch at :func:`cpu_threads` threads.

    ``select_device`` calls ``torch.set_num_threads(NUM_THREADS)`` on every CPU train, val and
    predict, with ``NUM_THREADS = cpu_count - 1`` (a number meant for dataloader workers).
    On the 2-core machines the project targets that halves training speed, and it leaves
    torch at one thread for whatever runs next in the process (in a case run, the phase and
    out-of-body models after the detector). The module reads the name at call time, so
    setting it here is enough.
    """
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = cpu_threads()


def _provide_fonts() -> None:
    """Put a font where ultralytics looks for Arial, so its dataset check never downloads one.

    Ultralytics only uses the font to draw labels on plots; matplotlib (one of its dependencies)
    ships DejaVu Sans, which serves the same purpose.
    """
    import shutil

    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = Path(USER_CONFIG_DIR) / name
        if not target.exists() and source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
