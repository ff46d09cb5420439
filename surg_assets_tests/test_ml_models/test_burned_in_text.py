"""Burned-in text found whatever the recorder: other sizes, places and resolutions, real frames.

The synthetic overlay sits top-left at one font size; a hospital's recorder may put its own
anywhere, at 480p or 1080p. Text is drawn with ``cv2.putText`` on real Cholec80 frames (the scene
changes from frame to frame, the text stays), and the detector must box it and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ml_models.events import TextPersistence
from ml_models.video import sample_frames
from surg_assets_tests.conftest import SHARED_DATA, skip_or_fail

LINES = ("DOE^JANE", "ID 40417783  DOB 1961-07-30", "2026-03-14 09:26:53")


def _real_frames(n: int) -> list[np.ndarray]:
    images = sorted((SHARED_DATA / "cholec80-tools-yolo" / "images" / "train").glob("*.jpg"))
    if len(images) < n:
        skip_or_fail(f"real Cholec80 frames not found under {SHARED_DATA}/cholec80-tools-yolo")
    return [cv2.imread(str(p)) for p in images[:n]]


def _draw(
    img: np.ndarray, corner: str, font_scale: float, outline: bool
) -> tuple[int, int, int, int]:
    """Burn three overlay lines into ``img`` at a corner; return the box they cover."""
    h, w = img.shape[:2]
    thickness = max(1, round(font_scale * 1.5))
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness) for t in LINES]
    line_h = max(th + base for (_, th), base in sizes) + max(2, round(4 * font_scale))
    block_w = max(tw for (tw, _), _ in sizes)
    margin = round(0.02 * w)
    x = margin if corner.endswith("left") else w - margin - block_w
    y0 = margin if corner.startswith("top") else h - margin - line_h * len(LINES)
    for i, text in enumerate(LINES):
        org = (x, y0 + (i + 1) * line_h - sizes[i][1])
        if outline:
            cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0),
                        thickness + 2, cv2.LINE_AA)  # fmt: skip
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (240, 240, 240),
                    thickness, cv2.LINE_AA)  # fmt: skip
    return x, y0, x + block_w, y0 + line_h * len(LINES)


def _found(frames: list[np.ndarray]) -> list[tuple[int, int, int, int]]:
    detector = TextPersistence(window=8)
    boxes: list[tuple[int, int, int, int]] = []
    for frame in frames:
        boxes = detector.update(frame)
    return boxes


@pytest.mark.parametrize(
    ("size", "corner", "font_scale", "outline"),
    [
        ((854, 480), "top-left", 0.5, True),
        ((854, 480), "bottom-right", 1.0, False),
        ((1920, 1080), "top-right", 0.8, False),
        ((1920, 1080), "bottom-left", 2.0, True),
    ],
)
def test_text_at_another_place_and_size_is_boxed_and_nothing_else(
    size: tuple[int, int], corner: str, font_scale: float, outline: bool
) -> None:
    frames = [cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in _real_frames(10)]
    assert _found(frames) == [], "real frames without an overlay must give no text box"
    text = None
    for frame in frames:
        text = _draw(frame, corner, font_scale, outline)
    boxes = _found(frames)
    assert boxes, f"no text found at {size[0]}x{size[1]}, {corner}, font scale {font_scale}"
    x1, y1, x2, y2 = text
    tall = y2 - y1
    # The plan pads each box by 6 pixels; the boxes must cover the lines' letters within that.
    union = (min(b[0] for b in boxes), min(b[1] for b in boxes),
             max(b[2] for b in boxes), max(b[3] for b in boxes))  # fmt: skip
    assert union[0] <= x1 + 6 and union[2] >= x2 - 6, (union, text)
    assert union[1] <= y1 + tall / 6 and union[3] >= y2 - tall / 6, (union, text)
    # ...and stay on the text: nothing boxed away from it (tissue, instruments).
    for bx1, by1, bx2, by2 in boxes:
        assert bx1 >= x1 - tall and bx2 <= x2 + tall, (bx1, bx2, text)
        assert by1 >= y1 - tall and by2 <= y2 + tall, (by1, by2, text)


def test_text_over_a_real_moving_clip_is_boxed_at_1080p(real_clip: Path) -> None:
    """Real camera motion (slow, so tissue persists a while) with a small overlay at 1080p."""
    frames = [
        cv2.resize(f.bgr, (1920, 1080), interpolation=cv2.INTER_LINEAR)
        for f in sample_frames(real_clip, 2.0, end_s=8.0)
    ]
    assert _found(frames) == []
    text = None
    for frame in frames:
        text = _draw(frame, "top-left", 0.9, False)
    boxes = _found(frames)
    assert boxes
    x1, y1, x2, y2 = text
    assert min(b[0] for b in boxes) <= x1 + 6 and max(b[2] for b in boxes) >= x2 - 6
    assert all(b[3] <= y2 + (y2 - y1) for b in boxes)


def _overlay_video(path: Path, size: tuple[int, int], seconds: int = 8) -> tuple[int, ...]:
    """Real frames (a new one every half second) under a fixed overlay, as an H.264 file."""
    import av

    frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in _real_frames(2 * seconds)]
    text = ()
    with av.open(str(path), "w", format="mp4") as out:
        st = out.add_stream("libx264", rate=10)
        st.width, st.height, st.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(10 * seconds):
            img = frames[i // 5].copy()
            text = _draw(img, "bottom-left", 0.6, True)
            for packet in st.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    return text


def test_the_blocking_check_sees_text_left_behind_at_854x480(tmp_path: Path) -> None:
    """Redacting with the detector's own plan leaves nothing; half a redaction is caught."""
    from ml_models.deid import Redaction, deidentify, plan_redaction, residual_identifiers
    from ml_models.events import scan_video

    src = tmp_path / "overlay.mp4"
    x1, y1, x2, y2 = _overlay_video(src, (854, 480))
    assert residual_identifiers(src, None), "the check must see the overlay on the input"
    plan = plan_redaction(scan_video(src, None).events)
    assert plan.boxes
    full = tmp_path / "deid.mp4"
    deidentify(src, full, plan)
    assert residual_identifiers(full, None) == []
    # Only the left half of the overlay blacked out: the rest must fail the check.
    half = Redaction([], [(0.0, 60.0, (x1 - 6, y1 - 6, (x1 + x2) // 2, y2 + 6))])
    partial = tmp_path / "partial.mp4"
    deidentify(src, partial, half)
    problems = residual_identifiers(partial, None)
    assert problems and "burned-in text survives" in problems[0]
