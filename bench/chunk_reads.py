"""What a detection chunk reads from the encrypted lake: a whole copy, or its range.

A case is detected in chunks of ``--chunk-minutes`` (one Dagster step each, maybe each on its
own GPU worker). Each chunk used to copy the whole normalised video out of the lake (decrypted
to a temporary file) to decode a few minutes of it; it now reads the video by range
(:meth:`resources.blob_store.BlobStore.open_ranged`). This bench renders a synthetic case of
``--minutes`` (854x480, the lab's generator), normalises it as the pipeline does, stores it in an
encrypted local lake, and for every chunk of the plan measures:

- **whole copy**: the decrypted copy the chunk used to make (bytes, seconds);
- **by range**: the pipeline's sampler (5 fps) over the chunk's read range through the ranged
  reader (bytes fetched and decrypted, seconds, the decode included);
- **plain file**: the same sampler over an unencrypted file (the decode alone).

The sampled frames of the two decodes are compared (same times, same pixels). Appends to
BENCHMARKS.md::

    python bench/chunk_reads.py [--minutes 10] [--chunk-minutes 1] [--no-append]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _cases import held_out_case  # noqa: E402

KEY = "processed-videos/c0123456789abcdef/video.mp4"
MB = 1e6


def _sampled(video: object, start_s: float, end_s: float | None) -> tuple[int, str, float]:
    """(frames, a digest of their times and pixels, seconds) of the pipeline's 5 fps sampler."""
    from ml_models.video import sample_frames

    digest = hashlib.sha256()
    n = 0
    started = time.perf_counter()
    for frame in sample_frames(video, 5.0, start_s=start_s, end_s=end_s):
        digest.update(repr(frame.t_s).encode())
        digest.update(frame.bgr.tobytes())
        n += 1
    return n, digest.hexdigest(), time.perf_counter() - started


def measure(minutes: float, chunk_minutes: float, seed: int) -> dict:
    """Render, normalise and store a case; read each chunk both ways; return the totals."""
    from ml_models.chunking import plan_chunks
    from ml_models.video import VideoLimits, probe_video, transcode
    from resources.blob_store import LocalBlobStore

    case = held_out_case(minutes, seed)
    with tempfile.TemporaryDirectory(prefix="surg-chunk-reads-") as tmp:
        plain = Path(tmp) / "video.mp4"
        transcode(case / "video.mp4", plain, VideoLimits())
        duration = probe_video(plain).duration_s
        store = LocalBlobStore(root=f"{tmp}/lake")
        store.put_file(KEY, plain)
        size = store.head(KEY).size
        chunks = plan_chunks(duration, chunk_minutes * 60.0)
        copy_s = range_s = plain_s = 0.0
        copied = fetched = fetches = frames = 0
        for chunk in chunks:
            started = time.perf_counter()
            with store.local_copy(KEY) as local:
                copied += local.stat().st_size
            copy_s += time.perf_counter() - started
            started = time.perf_counter()
            with store.open_ranged(KEY) as f:
                n, by_range, _ = _sampled(f, chunk.read_start_s, chunk.read_end_s)
                fetched += f.fetched_bytes
                fetches += f.fetches
            range_s += time.perf_counter() - started
            n_plain, from_file, seconds = _sampled(plain, chunk.read_start_s, chunk.read_end_s)
            plain_s += seconds
            if (n, by_range) != (n_plain, from_file):
                sys.exit(f"chunk {chunk.mapping_key}: the ranged read decoded other frames")
            frames += n
    return {
        "minutes": minutes,
        "chunk_minutes": chunk_minutes,
        "chunks": len(chunks),
        "video_mb": size / MB,
        "frames": frames,
        "copied_mb": copied / MB,
        "copy_s": copy_s,
        "fetched_mb": fetched / MB,
        "fetches": fetches,
        "block_mb": store.range_block_bytes / MB,
        "range_s": range_s,
        "plain_s": plain_s,
    }


def main() -> None:
    """Measure, print the table and append it to BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--chunk-minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=2001)
    parser.add_argument("--no-append", action="store_true", help="Print only.")
    args = parser.parse_args()
    r = measure(args.minutes, args.chunk_minutes, args.seed)
    lines = [
        "",
        f"## Detection chunks read by range, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`python bench/chunk_reads.py --minutes {args.minutes:g} --chunk-minutes "
        f"{args.chunk_minutes:g} --seed {args.seed}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end. A synthetic "
        f"case normalised as the pipeline does ({r['video_mb']:.1f} MB), in an encrypted local "
        f"lake; {r['chunks']} chunks, {r['frames']} frames sampled at 5 fps over their read "
        "ranges (the same frames, pixel for pixel, through the lake and from a plain file). "
        f"Reads of {r['block_mb']:.2f} MB: {r['fetches']} in all (on S3, ranged GETs).",
        "",
        "| per case | bytes decrypted | seconds |",
        "|---|---:|---:|",
        f"| whole copy per chunk (before) | {r['copied_mb']:.1f} MB | {r['copy_s']:.2f} "
        "(the copies alone, before any decode) |",
        f"| by range (now), decode included | {r['fetched_mb']:.1f} MB | {r['range_s']:.2f} |",
        f"| the same decode from a plain file | - | {r['plain_s']:.2f} |",
    ]
    print("\n".join(lines))
    if not args.no_append:
        with (REPO / "BENCHMARKS.md").open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
