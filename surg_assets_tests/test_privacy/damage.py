"""Damaging real video files the way storage and networks do: bytes of some packets overwritten."""

from __future__ import annotations

import random
from pathlib import Path

import av


def damage_packets(
    src: Path, dst: Path, start_s: float, end_s: float, seed: int = 3
) -> list[float]:
    """Copy ``src`` to ``dst`` with the payload of every video packet in [start_s, end_s) noised.

    The container (index, headers) stays intact, so the file opens and plays up to the damage;
    only the coded pictures in the window are garbage, as after a bad sector in the middle of a
    recording. The first four bytes of each packet (the NAL length prefix) are kept so the
    demuxer still finds the packet boundaries.

    Returns:
        The presentation times (seconds) of the damaged packets.
    """
    data = bytearray(src.read_bytes())
    rng = random.Random(seed)
    damaged = []
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is None or packet.pos is None or not packet.size:
                continue
            t = float(packet.pts * packet.time_base)
            if start_s <= t < end_s:
                for i in range(packet.pos + 4, packet.pos + packet.size):
                    data[i] = rng.randrange(256)
                damaged.append(t)
    dst.write_bytes(bytes(data))
    return sorted(damaged)
