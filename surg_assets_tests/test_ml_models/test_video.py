"""Probing, validating and normalising videos with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ml_models.errors import VideoValidationError
from ml_models.video import (
    VideoLimits,
    check_limits,
    inspect_layout,
    normalised_size,
    probe_video,
    transcode,
)


def test_probe_reads_the_facts_of_a_generated_video(videos: dict[str, Path]) -> None:
    probe = probe_video(videos["good"])
    assert (probe.codec, probe.width, probe.height) == ("h264", 320, 240)
    assert probe.fps == 25.0
    assert probe.duration_s == pytest.approx(3.0, abs=0.05)
    assert probe.extension == "mp4"
    assert probe.has_audio is False


def test_probe_accepts_mpeg4_in_avi_and_names_the_container(videos: dict[str, Path]) -> None:
    probe = probe_video(videos["mpeg4_avi"])
    assert (probe.container, probe.extension, probe.codec) == ("avi", "avi", "mpeg4")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("zero", "empty"),
        ("text", "not a readable video"),
        ("truncated", "truncated"),
        ("broken", "cannot be decoded"),
        ("audio_only", "no video stream"),
        ("ffv1_mkv", "codec 'ffv1' is not supported"),
    ],
)
def test_probe_refuses_bad_files_with_one_clear_sentence(
    videos: dict[str, Path], name: str, fragment: str
) -> None:
    with pytest.raises(VideoValidationError) as info:
        probe_video(videos[name])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    # The message never repeats the file name (it may be a patient's name).
    assert videos[name].name not in message


def test_probe_refuses_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(VideoValidationError, match="does not exist"):
        probe_video(tmp_path / "nope.mp4")


def test_limits_refuse_long_large_or_odd_videos(videos: dict[str, Path]) -> None:
    probe = probe_video(videos["good"])
    check_limits(probe, VideoLimits())
    with pytest.raises(VideoValidationError, match="SURG_MAX_DURATION_S"):
        check_limits(probe, VideoLimits(max_duration_s=2.0))
    with pytest.raises(VideoValidationError, match="shorter than the minimum"):
        check_limits(probe, VideoLimits(min_duration_s=10.0))
    with pytest.raises(VideoValidationError, match="320x240 exceeds the limit of 200x2160"):
        check_limits(probe, VideoLimits(max_width=200))
    with pytest.raises(VideoValidationError, match="frame rate 25 fps is outside"):
        check_limits(probe, VideoLimits(max_fps=24))


@pytest.mark.parametrize(
    ("size", "max_h", "expected"),
    [((854, 480), 480, (854, 480)), ((1920, 1080), 480, (854, 480)), ((321, 241), 480, (320, 240))],
)
def test_normalised_size_keeps_aspect_never_upscales_and_is_even(
    size: tuple[int, int], max_h: int, expected: tuple[int, int]
) -> None:
    assert normalised_size(*size, max_h) == expected


def test_transcode_writes_the_normalised_contract(videos: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "video.mp4"
    result = transcode(videos["with_audio_and_tags"], out, VideoLimits(transcode_max_height=240))
    layout = inspect_layout(out)
    assert (layout.codec, layout.pixel_format) == ("h264", "yuv420p")
    assert (layout.width, layout.height) == (320, 240) == (result.width, result.height)
    assert layout.frame_count == result.frames_written == 50
    assert layout.constant_frame_rate
    assert layout.max_keyframe_gap_s <= 1.0 + 1e-6
    assert layout.faststart
    assert layout.has_audio is False
    assert layout.foreign_tags == {}
    with av.open(str(out)) as c:
        tags = " ".join(
            f"{k}={v}" for k, v in {**c.metadata, **c.streams.video[0].metadata}.items()
        )
    assert "Jane" not in tags and "MRN" not in tags


def _write_vfr(path: Path) -> list[float]:
    """A variable-frame-rate video: frames at irregular times (as phone recorders write)."""
    times = [0.0, 0.04, 0.08, 0.20, 0.24, 0.25, 0.26, 0.40, 0.44, 0.48, 0.52, 1.0]
    with av.open(str(path), "w", format="mp4") as out:
        st = out.add_stream("libx264", rate=100)
        st.width, st.height, st.pix_fmt = 128, 96, "yuv420p"
        st.codec_context.time_base = Fraction(1, 1000)
        for t in times:
            img = np.full((96, 128, 3), int(t * 200), np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = int(t * 1000)
            frame.time_base = Fraction(1, 1000)
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return times


def test_transcode_maps_variable_frame_rate_onto_a_constant_grid(tmp_path: Path) -> None:
    src = tmp_path / "vfr.mp4"
    _write_vfr(src)
    out = tmp_path / "cfr.mp4"
    result = transcode(src, out, VideoLimits(transcode_fps=25, min_duration_s=0.1))
    layout = inspect_layout(out)
    assert layout.constant_frame_rate
    assert layout.fps == 25
    # 0.0..1.0 s on a 25 fps grid is 26 slots: gaps filled by repeats, bursts thinned.
    assert result.frames_written == layout.frame_count == 26
    assert result.frames_duplicated > 0
    assert result.frames_dropped > 0
