"""Build ``cholec80_reference.json``: the phase and instrument statistics the generator uses.

Run once, by a developer who has the real annotations beside the repository::

    python -m ml_models.synthetic.build_reference ../shared/data/cholec80-annotations

The real annotations are CC BY-NC-SA and never enter the repository; only these few aggregate
numbers do, so a user's clone generates realistic timelines without the data.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path

from ml_models.formats.cholec80 import INSTRUMENT_CLASSES, PHASES

REFERENCE_PATH = Path(__file__).with_name("cholec80_reference.json")


def _runs(values: list[int]) -> list[int]:
    """Lengths of the runs of ones in a 0/1 sequence."""
    out, n = [], 0
    for v in values:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    if n:
        out.append(n)
    return out


def build(annotation_dir: Path) -> dict:
    """Aggregate the 1 fps Cholec80 phase and tool files of a folder into the reference table.

    Args:
        annotation_dir: Folder holding ``videoNN-phase.txt`` and ``videoNN-tool.txt``.

    Returns:
        The JSON-serialisable table written to ``cholec80_reference.json``.
    """
    durations: dict[int, list[float]] = {p: [] for p in range(len(PHASES))}
    present = [[0] * len(INSTRUMENT_CLASSES) for _ in PHASES]
    seconds = [0] * len(PHASES)
    dwell: dict[tuple[int, int], list[int]] = {}
    concurrent: list[list[int]] = [[] for _ in PHASES]
    totals = []
    videos = sorted(annotation_dir.glob("video*-phase.txt"))
    for phase_file in videos:
        with phase_file.open() as f:
            phase_rows = {int(r["Frame"]): int(r["Phase"]) for r in csv.DictReader(f)}
        tool_file = phase_file.with_name(phase_file.name.replace("-phase", "-tool"))
        with tool_file.open() as f:
            tool_rows = {
                int(r["Frame"]): [int(v) for v in list(r.values())[1:]] for r in csv.DictReader(f)
            }
        frames = sorted(phase_rows)
        totals.append(len(frames))
        seq = [phase_rows[fr] for fr in frames]
        for p in range(len(PHASES)):
            n = sum(1 for s in seq if s == p)
            if n:
                durations[p].append(float(n))
        per_phase_tools: dict[int, list[list[int]]] = {}
        for fr, p in zip(frames, seq, strict=True):
            tools = tool_rows.get(fr)
            if tools is None:
                continue
            seconds[p] += 1
            concurrent[p].append(sum(tools))
            for c, v in enumerate(tools):
                present[p][c] += v
            per_phase_tools.setdefault(p, []).append(tools)
        for p, rows in per_phase_tools.items():
            for c in range(len(INSTRUMENT_CLASSES)):
                dwell.setdefault((p, c), []).extend(_runs([r[c] for r in rows]))
    phases = []
    for p, name in enumerate(PHASES):
        d = durations[p]
        logs = [math.log(x) for x in d]
        phases.append(
            {
                "id": p,
                "name": name,
                "videos_with_phase": len(d),
                "median_s": statistics.median(d),
                "mean_s": round(statistics.fmean(d), 1),
                "log_mean": round(statistics.fmean(logs), 4),
                "log_std": round(statistics.stdev(logs), 4),
                "mean_tools_present": round(statistics.fmean(concurrent[p]), 3),
                "tool_presence": {
                    INSTRUMENT_CLASSES[c]: round(present[p][c] / max(1, seconds[p]), 4)
                    for c in range(len(INSTRUMENT_CLASSES))
                },
                "tool_mean_dwell_s": {
                    INSTRUMENT_CLASSES[c]: round(statistics.fmean(dwell[(p, c)]), 1)
                    if dwell.get((p, c))
                    else 0.0
                    for c in range(len(INSTRUMENT_CLASSES))
                },
            }
        )
    return {
        "source": "Cholec80 videos 01-60, 1 fps phase and tool annotations (aggregates only)",
        "videos": len(videos),
        "median_video_s": statistics.median(totals),
        "phases": phases,
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: build the table from the folder named in argv[0] and write it."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m ml_models.synthetic.build_reference ANNOTATION_DIR")
    table = build(Path(args[0]))
    REFERENCE_PATH.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {REFERENCE_PATH} from {table['videos']} videos")


if __name__ == "__main__":
    main()
