"""De-identification on a synthetic case whose overlay and out-of-body scenes are known."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

from ml_models.deid import deidentify, plan_redaction, residual_identifiers, sharpness
from ml_models.events import Event
from ml_models.video import sample_frames, write_sample_video


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


def _packets(path: Path) -> dict[int, bytes]:
    with av.open(str(path)) as c:
        return {p.pts: bytes(p) for p in c.demux(c.streams.video[0]) if p.size}


def test_only_the_seconds_with_something_to_hide_are_encoded_again(tmp_path: Path) -> None:
    from ml_models.deid import Redaction
    from ml_models.video import VideoLimits, inspect_layout, transcode

    src = tmp_path / "normalised.mp4"
    transcode(write_sample_video(tmp_path / "raw.mp4", seconds=6, fps=25), src, VideoLimits())
    out = tmp_path / "deid.mp4"
    result = deidentify(src, out, Redaction(blur=[(2.2, 3.1)], boxes=[]))
    # Seconds 2 and 3 hold blurred pictures; 0, 1, 4 and 5 have nothing to hide.
    assert (result.gops_copied, result.gops_reencoded) == (4, 2)
    assert (result.frames, result.frames_blurred) == (150, 23)
    before, after = _packets(src), _packets(out)
    assert sorted(before) == sorted(after)
    tb = 1 / 12800  # the normaliser's MP4 time base
    for pts, data in before.items():
        second = int(pts * tb + 1e-9)
        assert (after[pts] == data) == (second not in (2, 3)), f"packet at {pts * tb:.2f} s"
    layout = inspect_layout(out)
    assert (layout.frame_count, layout.max_keyframe_gap_s, layout.constant_frame_rate) == (
        150,
        1.0,
        True,
    )
    assert layout.faststart and not layout.foreign_tags
    original = {f.frame_index: f.bgr.astype(np.int16) for f in sample_frames(src, 25.0)}
    for frame in sample_frames(out, 25.0):
        diff = np.abs(original[frame.frame_index] - frame.bgr).mean()
        if 2.2 <= frame.t_s < 3.1:
            assert sharpness(frame.bgr) < 60 and diff > 5, f"{frame.t_s} s is not blurred"
        elif 2.0 <= frame.t_s < 4.0:
            assert diff < 4  # re-encoded next to the blur, the same picture
        else:
            assert diff == 0  # copied


def test_a_video_the_normaliser_did_not_write_is_encoded_whole(tmp_path: Path) -> None:
    from ml_models.deid import Redaction
    from ml_models.video import inspect_layout

    for codec in ("libx264", "mpeg4"):  # x264's default settings, another codec
        src = write_sample_video(tmp_path / f"{codec}.mp4", seconds=3, fps=25, codec=codec)
        out = tmp_path / f"{codec}-deid.mp4"
        result = deidentify(src, out, Redaction(blur=[(1.0, 1.5)], boxes=[]))
        assert (result.gops_copied, result.gops_reencoded, result.frames) == (0, 0, 75)
        assert result.frames_blurred == 13
        layout = inspect_layout(out)
        assert (layout.codec, layout.frame_count) == ("h264", 75)
