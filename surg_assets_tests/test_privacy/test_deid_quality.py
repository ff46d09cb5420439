"""De-identification measured on the lab's ground truth, and container metadata really gone."""

from __future__ import annotations

import json
from pathlib import Path

from ml_models.deid import deid_quality, deidentify, plan_redaction
from ml_models.events import OutOfBodyClassifier, scan_video
from ml_models.video import VideoLimits, inspect_layout, transcode, write_sample_video
from surg_assets.models import default_weights_file


def _truth(case: Path) -> list[dict]:
    return [json.loads(line) for line in (case / "ground_truth.jsonl").open()]


def test_every_text_frame_redacted_and_every_out_of_body_frame_blurred(
    synthetic_case: Path, tmp_path: Path
) -> None:
    """The pipeline's own detectors (not the truth) drive redaction; the truth judges it."""
    normalised = tmp_path / "video.mp4"
    transcode(synthetic_case / "video.mp4", normalised, VideoLimits())
    classifier = OutOfBodyClassifier.load(default_weights_file("out_of_body_model"))
    plan = plan_redaction(scan_video(normalised, classifier).events)
    out = tmp_path / "deidentified.mp4"
    deidentify(normalised, out, plan)
    truth = _truth(synthetic_case)
    q = deid_quality(normalised, out, truth)
    assert q.frames == len(truth)
    assert q.text_frames > 0.8 * q.frames and q.out_of_body_frames > 0
    assert q.text_frames_redacted == q.text_frames
    assert q.out_of_body_frames_blurred == q.out_of_body_frames
    # Only the plan's safety margins (0.5 s around each out-of-body stretch) may spill over.
    assert q.in_body_frames_blurred <= 2 * 25 * len(plan.blur) + 25


def test_the_measure_notices_what_was_not_redacted(synthetic_case: Path, tmp_path: Path) -> None:
    """An empty plan leaves overlay and operating room visible: the measure must say so."""
    normalised = tmp_path / "video.mp4"
    transcode(synthetic_case / "video.mp4", normalised, VideoLimits())
    out = tmp_path / "untouched.mp4"
    deidentify(normalised, out, plan_redaction([]))
    q = deid_quality(normalised, out, _truth(synthetic_case))
    assert q.text_frames > 0 and q.text_frames_redacted == 0
    assert q.out_of_body_frames > 0 and q.out_of_body_frames_blurred == 0
    assert q.in_body_frames_blurred == 0


def test_container_metadata_is_stripped_probed_on_the_output(tmp_path: Path) -> None:
    tags = {"title": "DOE^JANE 1970-01-01", "comment": "MRN 123456", "artist": "Dr Who"}
    src = write_sample_video(tmp_path / "tagged.mp4", seconds=2, metadata=tags)
    assert set(tags) <= set(inspect_layout(src).foreign_tags)  # the probe sees them on input
    normalised = tmp_path / "video.mp4"
    transcode(src, normalised, VideoLimits())
    out = tmp_path / "deidentified.mp4"
    deidentify(src, out, plan_redaction([]))  # even fed the tagged file directly
    for video in (normalised, out):
        layout = inspect_layout(video)
        assert layout.foreign_tags == {} and not layout.has_audio
        assert b"MRN 123456" not in video.read_bytes() and b"DOE^JANE" not in video.read_bytes()
