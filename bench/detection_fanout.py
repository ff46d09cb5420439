"""Dagster overhead of detection fanned out over chunks, on a real 32 s Cholec80 clip.

Materialises ``instrument_detections`` on an ephemeral Dagster instance (in-process executor) with
the detection in one chunk and in several, after a warm-up run (ONNX export, model download), and
reports per run the wall time of ``dg.materialize``, the detection time summed over the chunks
(the asset's ``seconds`` metadata) and the difference: what the graph (plan, map, merge, step
outputs through the blob store) costs on top of the model. ``--chunk-minutes`` accepts ``none``
for code that predates the fan-out (the same script measured the single-op asset it replaced).
Prints a markdown table; run it with ``python bench/detection_fanout.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cholec80-clips" / "clips"


def _measure(video: Path, chunk_minutes: list[str], repeats: int) -> list[dict]:
    import dagster as dg

    from resources.settings import load_settings
    from surg_assets.assets.ingest import raw_video, transcoded_video
    from surg_assets.assets.perception import instrument_detections
    from surg_assets.intake import ingest_file
    from surg_assets.settings import build_resources, video_limits_from_env

    resources = build_resources(load_settings())
    case_id = ingest_file(
        video, resources["blob_store"], resources["catalog"], video_limits_from_env()
    ).case_id
    rows = []
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("cases", [case_id])
        dg.materialize([raw_video, transcoded_video], instance=instance, resources=resources,
                       partition_key=case_id)  # fmt: skip

        def once(minutes: str) -> tuple[float, dict]:
            config = {} if minutes == "none" else {"chunk_minutes": float(minutes)}
            started = time.perf_counter()
            result = dg.materialize(
                [instrument_detections],
                instance=instance,
                resources=resources,
                partition_key=case_id,
                run_config={"ops": {"instrument_detections": {"config": config}}},
            )
            wall = time.perf_counter() - started
            meta = result.asset_materializations_for_node("instrument_detections")[0].metadata
            return wall, {k: v.value for k, v in meta.items() if k != "preview"}

        once(chunk_minutes[0])  # warm-up: ONNX export, weights into the cache
        for minutes in chunk_minutes:
            walls, detect = [], []
            for _ in range(repeats):
                wall, meta = once(minutes)
                walls.append(wall)
                detect.append(float(meta["seconds"]))
            rows.append(
                {
                    "chunk_minutes": minutes,
                    "chunks": meta.get("chunks", 1),
                    "frames": meta["frames"],
                    "rows": meta["rows"],
                    "wall_s": statistics.median(walls),
                    "detect_s": statistics.median(detect),
                }
            )
    return rows


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", type=Path, default=None, help="default: the first clip")
    parser.add_argument("--chunk-minutes", nargs="+", default=["0", "0.25"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    video = args.video or next(iter(sorted(CLIPS.glob("*.mp4"))), None)
    if video is None:
        print(f"skipped: no clip under {CLIPS}")
        return
    with tempfile.TemporaryDirectory() as home:
        os.environ["SURG_HOME"] = home
        rows = _measure(video, args.chunk_minutes, args.repeats)
    print(f"clip {video.name}, median of {args.repeats} runs, in-process executor\n")
    print("| chunk minutes | chunks | frames | rows | wall s | detection s | overhead s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['chunk_minutes']} | {r['chunks']} | {r['frames']} | {r['rows']} | "
            f"{r['wall_s']:.2f} | {r['detect_s']:.2f} | {r['wall_s'] - r['detect_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
