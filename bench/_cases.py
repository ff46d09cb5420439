"""Held-out synthetic cases shared by the benches of one `make bench`.

``perception_quality.py`` and ``deid_quality.py`` judge the same held-out case (seed 2001, 3
minutes, 854x480); rendering it takes most of a minute on 2 cores, so the first bench renders it
into the temporary folder and the next one reuses it (same seed, length and size: the same
frames and labels, the generator is deterministic).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def held_out_case(minutes: float, seed: int, size: tuple[int, int] = (854, 480)) -> Path:
    """The folder of a rendered synthetic case, rendered now or reused from an earlier bench."""
    from ml_models.synthetic import generate

    root = Path(tempfile.gettempdir()) / "surg-bench-cases"
    case = root / f"seed{seed}-{minutes:g}min-{size[0]}x{size[1]}"
    if (case / "summary.json").is_file():
        return case
    root.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(dir=root, prefix=".rendering-"))
    try:
        generate(part, minutes=minutes, seed=seed, size=size)
        shutil.rmtree(case, ignore_errors=True)  # a half-copied folder of a killed run
        part.rename(case)  # whole or not at all: summary.json is written last by the generator
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return case
