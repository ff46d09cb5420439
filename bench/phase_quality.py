"""Phase recognition of the Approved phase model on held-out synthetic cases of several lengths.

The cases (seeds 2001-2005, 3 to 40 minutes, never used in training) are rendered straight at
1 fps with :func:`ml_models.training.render_phase_cases`, as the phase corpus is, so five case
lengths cost a minute rather than an hour of rendering. Segments are smoothed to 10 s, as in the
pipeline. Prints frame accuracy and mean Jaccard per case and appends them to BENCHMARKS.md::

    python bench/phase_quality.py [--model PATH] [--no-append]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_models.metrics.phases import phase_metrics  # noqa: E402
from ml_models.phases import PhaseModel, segments_from_probabilities  # noqa: E402
from ml_models.training import render_phase_cases  # noqa: E402
from surg_assets.models import default_weights_file  # noqa: E402

HELD_OUT = ((2001, 3.0), (2002, 6.0), (2003, 10.0), (2004, 20.0), (2005, 40.0))
MIN_SEGMENT_S = 10.0


def score(model: PhaseModel, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(frame accuracy, mean Jaccard) of the smoothed segments against per-second labels."""
    probs = model.predict_images(images)
    pred = np.zeros(len(labels), int)
    for seg in segments_from_probabilities(probs, 1.0, MIN_SEGMENT_S, model.prior):
        pred[int(seg.start_s) : int(seg.end_s)] = seg.phase_id
    metrics = phase_metrics(labels, pred, fps=1.0)
    return metrics.accuracy, metrics.mean_jaccard


def main() -> None:
    """Score the model on every held-out case and append the table to BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="Default: the shipped model.")
    parser.add_argument("--no-append", action="store_true", help="Print only.")
    args = parser.parse_args()
    path = args.model or default_weights_file("phase_model")
    model = PhaseModel.load(path)
    started = time.perf_counter()
    rows = []
    for (seed, minutes), case in zip(
        HELD_OUT,
        render_phase_cases([s for s, _ in HELD_OUT], [m for _, m in HELD_OUT]),
        strict=True,
    ):
        acc, jac = score(model, case.images, case.labels)
        rows.append((seed, minutes, acc, jac))
        print(f"seed {seed} ({minutes:g} min): frame accuracy {acc:.3f}, mean Jaccard {jac:.3f}")
    mean_acc = float(np.mean([r[2] for r in rows]))
    mean_jac = float(np.mean([r[3] for r in rows]))
    print(f"mean: frame accuracy {mean_acc:.3f}, mean Jaccard {mean_jac:.3f}")
    if args.no_append:
        return
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "",
        f"## Phase recognition on held-out synthetic cases, {now}",
        "",
        f"`python bench/phase_quality.py` with `{path.name}` ({platform.machine()}, Python "
        f"{platform.python_version()}, {time.perf_counter() - started:.0f} s). Cases rendered at "
        f"1 fps, segments smoothed to {MIN_SEGMENT_S:g} s.",
        "",
        "| held-out case | frame accuracy | mean Jaccard |",
        "|---|---:|---:|",
        *[f"| seed {s}, {m:g} min | {a:.3f} | {j:.3f} |" for s, m, a, j in rows],
        f"| mean (targets >= 0.90 / >= 0.75) | {mean_acc:.3f} | {mean_jac:.3f} |",
    ]
    with (REPO / "BENCHMARKS.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
