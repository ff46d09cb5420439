"""De-identification on a synthetic case whose overlay and out-of-body scenes are known."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

from ml_models.deid import deidentify, plan_redaction, residual_identifiers, sharpness
from ml_models.events import Event
from ml_models.video import sample_frames


def _truth_events(case: Path) -> list[Event]:
    payload = json.loads((case / "events.json").read_text())
    events = [
        Event(e["kind"], e["start_s"], e["end_s"], 1.0)
        for e in payload["events"]
        if e["kind"] == "out_of_body"
    ]
    boxes = payload["overlay_text"]
    union = [
        min(b["box"][0] for b in boxes), min(b["box"][1] for b in boxes),
        max(b["box"][2] for b in boxes), max(b["box"][3] for b in boxes),
    ]  # fmt: skip
    text = next(e for e in payload["events"] if e["kind"] == "burned_in_text")
    events.append(
        Event("burned_in_text", text["start_s"], text["end_s"], 1.0, json.dumps({"box": union}))
    )
    return events


def test_overlay_and_operating_room_are_gone_and_the_rest_is_kept(
    synthetic_case: Path, tmp_path: Path
) -> None:
    src = synthetic_case / "video.mp4"
    assert residual_identifiers(src, None), "the raw synthetic video must show its overlay"
    events = _truth_events(synthetic_case)
    plan = plan_redaction(events)
    out = tmp_path / "deid.mp4"
    result = deidentify(src, out, plan)
    assert result.frames == 24 * 25
    assert residual_identifiers(out, None) == []
    oob = plan.blur  # the truth intervals, padded by the plan's safety margin
    original = {round(f.t_s, 2): f.bgr for f in sample_frames(src, 2.0)}
    for frame in sample_frames(out, 2.0):
        inside = any(a <= frame.t_s < b for a, b in oob)
        if inside:
            assert sharpness(frame.bgr) < 60, f"out-of-body frame at {frame.t_s} s is sharp"
        else:
            # Outside the redactions the picture is the same up to re-encoding.
            before = original[round(frame.t_s, 2)].astype(np.int16)
            x2, y2 = json.loads(events[-1].detail)["box"][2:]
            diff = np.abs(before - frame.bgr.astype(np.int16))
            diff[: y2 + 10, : x2 + 10] = 0
            assert diff.mean() < 4
    with av.open(str(out)) as c:
        assert "title" not in c.metadata and not c.streams.audio
