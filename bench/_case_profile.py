"""Where `surg analyze` spends its time: fixed overhead against per-step work, wall and CPU.

Runs what `surg analyze` runs (ingest, then the ``analyze_case`` job in process) in a fresh
SURG_HOME, with a thread sampling the process's CPU time every 50 ms. Per step: wall seconds from
the Dagster event log (STEP_START to STEP_SUCCESS) and the process CPU seconds spent inside that
interval (the in-process executor runs one step at a time, so CPU time is attributable; it counts
every thread: decoder, ONNX Runtime, encoder). CPU seconds are the figure to compare on a loaded
machine: they do not grow when other people's work takes the cores.

Fixed overhead is reported separately: interpreter start and imports (of the CLI and of the
definitions), building the Definitions, ingest, the Dagster instance and run setup (wall between
the run start and the first step), and the time between steps::

    python bench/case_profile.py VIDEO [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pipeline_speed import peak_rss_mb  # noqa: E402


class CpuSampler:
    """Samples (wall clock, process CPU seconds) in a background thread."""

    def __init__(self, period_s: float = 0.05) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._period = period_s
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), time.process_time()))
            self._stop.wait(self._period)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), time.process_time()))

    def cpu_between(self, t0: float, t1: float) -> float:
        """Process CPU seconds between wall times ``t0`` and ``t1`` (nearest samples)."""
        import bisect

        times = [s[0] for s in self.samples]

        def at(t: float) -> float:
            i = min(max(bisect.bisect_left(times, t), 0), len(self.samples) - 1)
            return self.samples[i][1]

        return at(t1) - at(t0)


def profile_case(video: str, warm_with: str | None = None) -> dict:
    """Run ingest + the analyze_case job on ``video`` in a fresh SURG_HOME; return the breakdown.

    With ``warm_with``, that video is analysed first in the same SURG_HOME and process (timed as
    the first case: it pays the one-off costs, the ONNX export of the detector and the lazy
    imports of the steps), so the profile of ``video`` is the steady state of a running
    installation.
    """
    t_import0 = time.perf_counter()
    from surg_assets import cli  # noqa: F401  (what the `surg` command imports first)

    t_cli = time.perf_counter() - t_import0
    with tempfile.TemporaryDirectory() as home:
        os.environ["SURG_HOME"] = home
        t0 = time.perf_counter()
        from surg_assets.definitions import defs

        defs()
        t_defs = time.perf_counter() - t0
        from surg_assets.cli import _context, dagster_instance, run_case
        from surg_assets.intake import ingest_file
        from surg_assets.settings import video_limits_from_env

        first_case = None
        if warm_with:
            settings, blob_store, catalog = _context()
            c0, t0 = time.process_time(), time.perf_counter()
            warm = ingest_file(
                Path(warm_with), blob_store, catalog, video_limits_from_env(), label="warm-up"
            )
            if not run_case(warm.case_id, settings, catalog).success:
                raise RuntimeError(f"the warm-up case run failed on {warm_with}")
            wall = time.perf_counter() - t0
            first_case = {
                "video": Path(warm_with).name,
                "wall_s": round(wall, 2),
                "cpu_s": round(time.process_time() - c0, 2),
                "x_real_time": round(warm.probe.duration_s / wall, 3),
            }
        with CpuSampler() as sampler:
            t0 = time.perf_counter()
            settings, blob_store, catalog = _context()
            outcome = ingest_file(
                Path(video), blob_store, catalog, video_limits_from_env(), label="the input file"
            )
            t_ingest = time.perf_counter() - t0
            c0 = time.process_time()
            t0 = time.perf_counter()
            result = run_case(outcome.case_id, settings, catalog)
            t_run = time.perf_counter() - t0
            c_run = time.process_time() - c0
        if not result.success:
            raise RuntimeError(f"the case run failed on {video}")
        with dagster_instance(settings) as instance:
            logs = instance.all_logs(result.run_id)
        duration = outcome.probe.duration_s
    starts: dict[str, float] = {}
    steps: dict[str, dict[str, float]] = {}
    run_start = first_step = last_step = None
    for entry in logs:
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type_value
        if kind == "PIPELINE_START":
            run_start = entry.timestamp
        if kind == "STEP_START":
            starts[entry.step_key] = entry.timestamp
            first_step = first_step or entry.timestamp
        elif kind == "STEP_SUCCESS" and entry.step_key in starts:
            t0, t1 = starts[entry.step_key], entry.timestamp
            steps[entry.step_key] = {
                "wall_s": round(t1 - t0, 2),
                "cpu_s": round(sampler.cpu_between(t0, t1), 2),
            }
            last_step = t1
    in_steps_wall = sum(s["wall_s"] for s in steps.values())
    in_steps_cpu = sum(s["cpu_s"] for s in steps.values())
    return {
        "video": Path(video).name,
        "duration_s": round(duration, 2),
        "load_average": round(os.getloadavg()[0], 1),
        "fixed": {
            "interpreter_and_cli_imports_s": round(t_import0 - STARTED + t_cli, 2),
            "definitions_import_and_build_s": round(t_defs, 2),
            "ingest_s": round(t_ingest, 2),
            "run_setup_s": round((first_step - run_start) if run_start and first_step else 0, 2),
            "between_steps_s": round(
                (last_step - first_step) - in_steps_wall if first_step and last_step else 0, 2
            ),
        },
        "first_case": first_case,
        "steps": steps,
        "run_wall_s": round(t_run, 2),
        "run_cpu_s": round(c_run, 2),
        "steps_wall_s": round(in_steps_wall, 2),
        "steps_cpu_s": round(in_steps_cpu, 2),
        "x_real_time_run": round(duration / t_run, 3),
        # What the run would take with both cores all its own: CPU time over the cores.
        "x_real_time_cpu_bound": round(duration / (c_run / (os.cpu_count() or 1)), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def breakdown_markdown(profile: dict) -> str:
    """The profile as a markdown table (steps by CPU seconds, then the fixed overheads)."""
    d = profile["duration_s"]
    lines = [
        f"Breakdown of one `surg analyze` on {profile['video']} ({d:.1f} s of video, load "
        f"average {profile['load_average']}): run wall {profile['run_wall_s']:.1f} s, run CPU "
        f"{profile['run_cpu_s']:.1f} s (all threads), peak RSS {profile['peak_rss_mb']:.0f} MB.\n",
        (
            f"Steady state: {profile['first_case']['video']} was analysed first in the same "
            f"SURG_HOME and process (first case: {profile['first_case']['wall_s']:.1f} s wall, "
            f"{profile['first_case']['cpu_s']:.1f} s CPU, with the detector's ONNX export).\n"
            if profile.get("first_case")
            else "First case in a fresh SURG_HOME (includes the detector's ONNX export).\n"
        ),
        "| step | wall s | CPU s | CPU s per video s |",
        "|---|---:|---:|---:|",
    ]
    for key, s in sorted(profile["steps"].items(), key=lambda kv: -kv[1]["cpu_s"]):
        lines.append(f"| {key} | {s['wall_s']:.2f} | {s['cpu_s']:.2f} | {s['cpu_s'] / d:.3f} |")
    for key, v in profile["fixed"].items():
        lines.append(f"| _fixed: {key.removesuffix('_s').replace('_', ' ')}_ | {v:.2f} | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Profile one video and print the breakdown (and write it as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("video")
    parser.add_argument("--json", default=None, help="Write the profile here as JSON.")
    parser.add_argument("--warm-with", default=None, help="Analyse this first (steady state).")
    args = parser.parse_args()
    profile = profile_case(args.video, args.warm_with)
    if args.json:
        Path(args.json).write_text(json.dumps(profile, indent=1))
    print(breakdown_markdown(profile))
    print(json.dumps(profile))


if __name__ == "__main__":
    main()
