"""Perception building blocks: sampling, the detector adapter, tracking, phases, events."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from ml_models import tracking
from ml_models.errors import InputError
from ml_models.events import (
    TextPersistence,
    black_score,
    colour_bars_score,
    events_table,
    scene_cuts,
)
from ml_models.frames import frames_per_second
from ml_models.phases import MSTCN, PhasePrior, decode_case, segments_from_probabilities
from ml_models.tables import DETECTIONS, EVENTS, TRACKS, table_from_rows
from ml_models.tracking import track_detections, usage_intervals
from ml_models.video import (
    SampledFrame,
    _decode_skipping,
    may_be_sampled,
    sample_frames,
    write_sample_video,
)


def test_sampling_takes_the_requested_rate_in_a_bounded_queue(tmp_path: Path) -> None:
    video = write_sample_video(tmp_path / "v.mp4", seconds=4, fps=25)
    frames = list(sample_frames(video, 5.0, max_queue=2))
    assert len(frames) == 20
    assert [f.frame_index for f in frames[:4]] == [0, 5, 10, 15]
    assert np.allclose(np.diff([f.t_s for f in frames]), 0.2)
    assert frames[0].bgr.shape == (240, 320, 3)


def test_chunks_sample_exactly_the_frames_of_a_whole_pass(tmp_path: Path) -> None:
    video = write_sample_video(tmp_path / "v.mp4", seconds=6, fps=25)
    whole = [(f.frame_index, round(f.t_s, 3)) for f in sample_frames(video, 5.0)]
    chunks = [
        (f.frame_index, round(f.t_s, 3))
        for start, end in [(0.0, 2.1), (2.1, 4.0), (4.0, None)]
        for f in sample_frames(video, 5.0, start_s=start, end_s=end)
    ]
    assert len(whole) == 30 and chunks == whole


def test_only_pictures_on_the_sampling_grid_count_as_wanted() -> None:
    frame_s, step = 1 / 25, 1 / 5
    wanted = [k for k in range(50) if may_be_sampled(k * frame_s, frame_s, step)]
    assert wanted == list(range(0, 50, 5))
    # 30 fps sampled at 4 fps: the grid falls between pictures, the first one after it counts.
    wanted = [k for k in range(30) if may_be_sampled(k / 30, 1 / 30, 0.25)]
    assert wanted == [0, 8, 15, 23]


def test_sampling_skips_non_reference_pictures_and_keeps_the_sampled_ones_identical(
    tmp_path: Path,
) -> None:
    # x264's defaults put non-reference B-frames between the others, as recorders do.
    video = write_sample_video(tmp_path / "v.mp4", seconds=6, fps=25)
    with av.open(str(video)) as c:
        s = c.streams.video[0]
        skipped = sum(1 for _ in _decode_skipping(c, s, 25.0, 0.2, skipping=True))
    assert 75 <= skipped < 150  # the decoder did less work, but not less than the grid needs
    for kwargs in ({}, {"start_s": 2.1, "end_s": 4.7}):
        fast = list(sample_frames(video, 5.0, **kwargs))
        # every_frame forces the full decode of before.
        full = list(sample_frames(video, 5.0, every_frame=lambda f: None, **kwargs))
        assert [f.frame_index for f in fast] == [f.frame_index for f in full]
        assert all(np.array_equal(a.bgr, b.bgr) for a, b in zip(fast, full, strict=True))


def test_sampling_stops_the_decoder_when_the_consumer_stops_early(tmp_path: Path) -> None:
    video = write_sample_video(tmp_path / "v.mp4", seconds=4, fps=25)
    gen = sample_frames(video, 25.0, max_queue=1)
    first = next(gen)
    gen.close()  # must not hang on a full queue
    assert first.frame_index == 0


def test_detector_adapter_maps_results_to_the_table_schema(tmp_path: Path) -> None:
    from ml_models.detector import results_to_rows
    from ml_models.ultra import ultralytics_offline

    ultralytics_offline()
    from ultralytics import YOLO

    model = YOLO("yolo11n-seg.yaml", task="segment")  # random weights: boxes are noise
    video = write_sample_video(tmp_path / "v.mp4", seconds=1, fps=5)
    frames = list(sample_frames(video, 5.0))
    results = model.predict([f.bgr for f in frames], imgsz=160, conf=0.0, verbose=False)
    rows = results_to_rows(results, frames, "c1", "instrument_detector:v0")
    expected = sum(len(r.boxes) for r in results)
    assert len(rows) == expected > 0
    table = table_from_rows(DETECTIONS, rows)
    assert table.schema.equals(DETECTIONS)
    first = results[0].boxes
    assert rows[0]["x1"] == pytest.approx(float(first.xyxy[0, 0]))
    assert rows[0]["confidence"] == pytest.approx(float(first.conf[0]))
    assert rows[0]["frame_index"] == frames[0].frame_index


def test_a_mask_too_small_to_outline_leaves_the_box_without_a_polygon() -> None:
    """Ultralytics outlines a one-pixel mask as a single point; the contract wants three."""
    from ml_models.detector import results_to_rows
    from ml_models.ultra import ultralytics_offline
    from surg_assets.checks import polygon_failures

    ultralytics_offline()
    from ultralytics.engine.results import Results

    masks = torch.zeros((2, 64, 64))
    masks[0, 10:30, 10:40] = 1  # an instrument
    masks[1, 50, 50] = 1  # a speck
    boxes = torch.tensor([[10.0, 10.0, 40.0, 30.0, 0.9, 2.0], [49.0, 49.0, 51.0, 51.0, 0.3, 0.0]])
    result = Results(
        np.zeros((64, 64, 3), np.uint8), "frame", {0: "grasper", 2: "hook"}, boxes, masks
    )
    assert len(result.masks.xy[1]) < 3  # what ultralytics gives for the speck
    frame = SampledFrame(frame_index=0, t_s=0.0, bgr=np.zeros((64, 64, 3), np.uint8))
    rows = results_to_rows([result], [frame], "c1", "instrument_detector:v0")
    assert [r["class_name"] for r in rows] == ["hook", "grasper"]
    assert len(rows[0]["mask"]) >= 6 and rows[1]["mask"] is None
    assert rows[1]["x2"] == pytest.approx(51.0)  # the box is kept
    table = table_from_rows(DETECTIONS, rows)
    assert polygon_failures(table.column("mask").combine_chunks(), 64, 64) == {}


def _two_instruments() -> list[dict]:
    """Two instruments crossing the view; the hook hides for 3 samples (occlusion)."""
    rows = []
    for f in range(40):
        for x, cls, name in ((50 + 4 * f, 0, "grasper"), (500 - 4 * f, 2, "hook")):
            if cls == 2 and 15 <= f < 18:
                continue
            rows.append(
                {
                    "case_id": "c1", "frame_index": f * 5, "t_s": f / 5, "class_id": cls,
                    "class_name": name, "confidence": 0.9, "x1": x, "y1": 200.0,
                    "x2": x + 60, "y2": 260.0, "mask": [0.0, 0.0], "model_version": "v",
                }
            )  # fmt: skip
    return rows


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_tracks_are_stable_through_an_occlusion(tracker: str) -> None:
    detections = table_from_rows(DETECTIONS, _two_instruments())
    tracks = track_detections(detections, (854, 480), 5.0, tracker)
    assert tracks.schema.equals(TRACKS)
    df = tracks.to_pandas()
    ids = df.groupby("class_name")["track_id"].unique()
    assert len(ids["grasper"]) == 1 and len(ids["hook"]) == 1
    assert ids["grasper"][0] != ids["hook"][0]
    usage = usage_intervals(tracks, 5.0, max_gap_s=2.0).to_pandas()
    # The 0.6 s occlusion is bridged: one interval per instrument, covering the whole 8 s.
    assert sorted(usage["class_name"]) == ["grasper", "hook"]
    assert (usage["start_s"] == 0).all() and np.allclose(usage["end_s"], 8.0)
    short_gap = usage_intervals(tracks, 5.0, max_gap_s=0.5).to_pandas()
    assert len(short_gap[short_gap.class_name == "hook"]) == 2


def _row(f: int, x: float, cls: int, name: str) -> dict:
    return {
        "case_id": "c1", "frame_index": f * 5, "t_s": f / 5, "class_id": cls, "class_name": name,
        "confidence": 0.9, "x1": x, "y1": 200.0, "x2": x + 60, "y2": 260.0, "mask": [0.0, 0.0],
        "model_version": "v",
    }  # fmt: skip


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_an_instrument_entering_where_another_left_gets_its_own_track(tracker: str) -> None:
    # A grasper works at x=300 for 4 s and leaves; 1 s later a hook appears at the same place.
    # The online tracker keeps the grasper's lost track for 4 s and hands its id to the hook;
    # the offline split must give the hook its own track.
    rows = [_row(f, 300.0, 0, "grasper") for f in range(20)]
    rows += [_row(f, 300.0, 2, "hook") for f in range(25, 45)]
    detections = table_from_rows(DETECTIONS, rows)
    tracker_obj = tracking._tracker(tracker, 5.0)
    online = pa.concat_tables(
        list(
            tracking._track_frames(
                tracking._frames(detections.to_batches()), (854, 480), tracker_obj
            )
        )
    )
    assert len(set(online.column("track_id").to_pylist())) == 1  # what the split is for
    tracks = track_detections(detections, (854, 480), 5.0, tracker).to_pandas()
    ids = tracks.groupby("class_name")["track_id"].unique()
    assert list(ids["grasper"]) == [1] and list(ids["hook"]) == [2]


def test_duplicates_are_suppressed_whatever_their_class_and_separate_boxes_kept() -> None:
    boxes = np.array(
        [
            [100, 100, 400, 200],  # 0: a whole hook, 0.9
            [330, 110, 390, 190],  # 1: its tip inside it, as another class, 0.5
            [105, 102, 395, 205],  # 2: the same hook again (IoU 0.95), 0.6
            [500, 100, 700, 300],  # 3: another instrument, apart
            [380, 150, 520, 260],  # 4: crossing 0 and 3, neither nested nor IoU > 0.6
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.5, 0.6, 0.8, 0.7])
    assert list(tracking.suppress_duplicates(boxes, scores)) == [0, 3, 4]
    # A confident tip in a less confident whole box: the whole box is the duplicate.
    assert list(tracking.suppress_duplicates(boxes[:2], np.array([0.4, 0.9]))) == [1]
    # Without the nesting rule the tip stays (it overlaps the whole box at IoU 0.16 only).
    assert list(tracking.suppress_duplicates(boxes[:2], scores[:2], inside=1.0)) == [0, 1]
    assert list(tracking.suppress_duplicates(boxes[:1], scores[:1])) == [0]
    assert len(tracking.suppress_duplicates(np.zeros((0, 4)), np.zeros(0))) == 0


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_a_tip_detected_inside_an_instrument_does_not_make_a_second_track(tracker: str) -> None:
    # The detector sees a hook moving right, and in every other frame also its tip alone, as a
    # grasper: the tip must not become a track of its own.
    rows = []
    for f in range(30):
        rows.append(_row(f, 200.0 + 4 * f, 2, "hook") | {"x2": 200.0 + 4 * f + 240})
        if f % 2 == 0:
            tip = _row(f, 200.0 + 4 * f + 180, 0, "grasper") | {"confidence": 0.6}
            rows.append(tip | {"x2": tip["x1"] + 55, "y1": 205.0, "y2": 255.0})
    detections = table_from_rows(DETECTIONS, rows)
    tracks = track_detections(detections, (854, 480), 5.0, tracker).to_pandas()
    assert set(tracks["class_name"]) == {"hook"} and tracks["track_id"].nunique() == 1
    assert len(tracks) >= 28  # the hook itself is kept in (nearly) every frame
    # What the suppression is for: the online tracker alone confirms the tip as a track.
    trk = tracking._tracker(tracker, 5.0)
    from ultralytics.engine.results import Boxes

    ids = set()
    for _, frame in detections.to_pandas().groupby("frame_index"):
        data = frame[["x1", "y1", "x2", "y2", "confidence", "class_id"]].to_numpy(np.float32)
        ids |= {int(i) for i in trk.update(Boxes(data, (480, 854)))[:, 4]}
    assert len(ids) == 2


def test_backfill_gives_unreported_detections_to_the_track_beside_them() -> None:
    t = np.array([0.0, 0.2, 0.4, 0.6, 0.6, 0.8, 0.8, 3.0, 0.8])
    boxes = np.array(
        [
            [95, 100, 195, 200],  # 0: unreported, two samples before track 5's first row
            [100, 100, 200, 200],  # 1: unreported, the sample before
            [105, 100, 205, 200],  # 2: track 5
            [110, 100, 210, 200],  # 3: track 5
            [112, 100, 212, 200],  # 4: unreported, same sample as 3: track 5 is taken there
            [600, 300, 700, 400],  # 5: unreported and next to nothing: stays without a track
            [115, 100, 215, 200],  # 6: unreported, after track 5's last row, overlapping it
            [120, 100, 220, 200],  # 7: unreported, 2 s after everything
            [400, 100, 500, 200],  # 8: unreported, beside track 5 in time, not in space
        ],
        float,
    )
    ids = np.array([0, 0, 5, 5, 0, 0, 0, 0, 0])
    out = tracking.backfill_tracks(ids, t, boxes, 5.0)
    assert list(out) == [1, 1, 1, 1, 0, 0, 1, 0, 0]
    # Growth is limited: with 0.2 s allowed, only the next sample on each side joins.
    short = tracking.backfill_tracks(ids, t, boxes, 5.0, max_s=0.2)
    assert list(short) == [0, 1, 1, 1, 0, 0, 1, 0, 0]
    # Two candidates for one track at one sample: the better overlap wins.
    pair = tracking.backfill_tracks(
        np.array([3, 0, 0]),
        np.array([0.0, 0.2, 0.2]),
        np.array([[0, 0, 100, 100], [40, 0, 140, 100], [5, 0, 105, 100]], float),
        5.0,
    )
    assert list(pair) == [1, 0, 1]


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_an_instrument_keeps_the_first_sample_of_each_appearance(tracker: str) -> None:
    # A grasper is seen from 2 s to 6 s; the online tracker reports it from its second sample
    # only (a hook seen first makes the grasper's first frame not the tracker's first). A lone
    # box at 10 s (one sample, nothing beside it) is not a track.
    rows = [_row(f, 600.0, 2, "hook") for f in range(0, 6)]
    rows += [_row(f, 300.0 + 2 * f, 0, "grasper") for f in range(10, 31)]
    rows.append(_row(50, 100.0, 2, "hook") | {"y1": 20.0, "y2": 80.0})
    detections = table_from_rows(DETECTIONS, rows)
    online = pa.concat_tables(
        list(
            tracking._track_frames(
                tracking._frames(detections.to_batches()),
                (854, 480),
                tracking._tracker(tracker, 5.0),
            )
        )
    ).to_pandas()
    assert online.loc[online.t_s == 2.0, "track_id"].tolist() == [0]  # what the backfill is for
    tracks = track_detections(detections, (854, 480), 5.0, tracker).to_pandas()
    grasper = tracks[tracks.class_name == "grasper"]
    assert grasper["t_s"].min() == pytest.approx(2.0) and len(grasper) == 21
    assert list(grasper["track_id"].unique()) == [2]
    assert list(tracks.loc[tracks.class_name == "hook", "t_s"]) == pytest.approx(np.arange(6) / 5)


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_doubtful_boxes_continue_a_track_but_do_not_start_one(tracker: str) -> None:
    # A hook tracked with confident boxes, then seen at 0.3 for 2 s: it continues. Elsewhere, a
    # run of 0.3 boxes with no track to continue starts none (below NEW_TRACK_CONFIDENCE).
    assert tracking.NEW_TRACK_CONFIDENCE > 0.3
    rows = [_row(f, 300.0 + f, 2, "hook") for f in range(10)]
    rows += [_row(f, 300.0 + f, 2, "hook") | {"confidence": 0.3} for f in range(10, 20)]
    rows += [
        _row(f, 600.0, 0, "grasper") | {"confidence": 0.3, "y1": 20.0, "y2": 80.0}
        for f in range(30)
    ]
    rows.sort(key=lambda r: r["frame_index"])
    tracks = track_detections(table_from_rows(DETECTIONS, rows), (854, 480), 5.0, tracker)
    df = tracks.to_pandas()
    assert set(df["class_name"]) == {"hook"} and len(df) == 20 and df["track_id"].nunique() == 1


@pytest.mark.parametrize("tracker", ["bytetrack", "botsort"])
def test_a_weak_box_of_a_tracked_instrument_joins_by_overlap_alone(tracker: str) -> None:
    # A hook held still at 0.9, then seen for 2 s at 0.3 with its box 40 px taller (IoU 0.6
    # with the track). Scaled by the confidence (ultralytics' score fusion) that overlap is
    # 0.18, under the match threshold, so the track was lost and the backfill kept only 1 s of
    # the weak boxes. Matched by overlap alone, the track takes all of them.
    assert tracking.FUSE_SCORE is False
    rows = [_row(f, 300.0, 2, "hook") for f in range(10)]
    rows += [_row(f, 300.0, 2, "hook") | {"confidence": 0.3, "y2": 300.0} for f in range(10, 20)]
    df = track_detections(table_from_rows(DETECTIONS, rows), (854, 480), 5.0, tracker).to_pandas()
    assert len(df) == 20 and df["track_id"].nunique() == 1


def test_split_tracks_cuts_at_lasting_class_changes_and_long_gaps_only() -> None:
    t = np.arange(60) / 5.0
    cls = np.zeros(60, np.int64)
    cls[10:13] = 3  # 0.6 s of flicker: same instrument
    cls[30:] = 2  # a lasting change at 6 s
    ids = tracking.split_tracks(np.full(60, 7), t, cls, 5.0)
    assert list(np.unique(ids[:30])) == [1] and list(np.unique(ids[30:])) == [2]
    # 0.8 s between samples: the same track; 3.6 s: a new one. Ids count in order of first sight.
    assert tracking.SPLIT_GAP_S > 0.8
    gaps = np.r_[np.arange(10), np.arange(13, 23), np.arange(40, 50)] / 5.0
    other = tracking.split_tracks(np.full(30, 4), gaps, np.zeros(30, np.int64), 5.0)
    assert list(other) == [1] * 20 + [2] * 10
    # 2 s between samples now starts a new track (the 2 s gap used before, chosen for an
    # earlier detector, kept it).
    later = np.r_[np.arange(10), np.arange(19, 29)] / 5.0
    assert (
        list(tracking.split_tracks(np.full(20, 4), later, np.zeros(20), 5.0)) == [1] * 10 + [2] * 10
    )
    early = tracking.split_tracks(np.array([9, 9, 3]), np.array([1.0, 1.2, 0.0]), np.zeros(3), 5.0)
    assert list(early) == [2, 2, 1]
    assert len(tracking.split_tracks(np.array([]), np.array([]), np.array([]), 5.0)) == 0


def test_phase_segments_respect_the_minimum_length() -> None:
    probs = np.zeros((60, 3), np.float32)
    probs[:25, 0] = 0.9
    probs[25:28, 1] = 0.6  # a 3 s flicker inside phase 0 ...
    probs[25:28, 0] = 0.3
    probs[28:30, 0] = 0.9
    probs[30:, 2] = 0.8
    probs[probs.sum(1) == 0, 0] = 1.0
    segs = segments_from_probabilities(probs, 1.0, min_segment_s=5)
    assert [(s.phase_id, s.start_s, s.end_s) for s in segs] == [(0, 0, 30), (2, 30, 60)]
    assert segs[1].confidence == pytest.approx(0.8)
    raw = segments_from_probabilities(probs, 1.0, min_segment_s=1)
    assert [s.phase_id for s in raw] == [0, 1, 0, 2]


def _ordered_prior(n_videos: int = 6, bins: int = 10) -> PhasePrior:
    # Training videos that always run phase 0 -> 1 -> 2, each phase a third of the video.
    seqs = [np.repeat([0, 1, 2], n) for n in range(20, 20 + n_videos)]
    return PhasePrior.from_labels(seqs, 3, bins=bins)


def test_phase_prior_counts_order_first_phase_and_progress() -> None:
    prior = _ordered_prior()
    assert prior.initial.tolist() == [6, 0, 0]
    assert prior.transitions[0, 1] == 6 and prior.transitions[1, 0] == 0
    assert prior.transitions[0, 0] == sum(n - 1 for n in range(20, 26))
    # Early bins hold phase 0 only, late bins phase 2 only.
    assert prior.progress[0].argmax() == 0 and prior.progress[0, 2] == 0
    assert prior.progress[-1].argmax() == 2 and prior.progress[-1, 0] == 0
    again = PhasePrior.from_dict(prior.to_dict())
    assert np.array_equal(again.transitions, prior.transitions)
    assert np.array_equal(again.progress, prior.progress)


def test_whole_case_decoding_follows_the_training_order() -> None:
    # The causal model is unsure in the middle and wrongly favours phase 2 for a stretch that
    # comes before any phase 1: the order the training data shows puts that stretch in phase 0.
    probs = np.full((90, 3), 0.05, np.float32)
    probs[:30, 0] = 0.9
    probs[30:40] = [0.40, 0.05, 0.55]
    probs[40:60, 1] = 0.9
    probs[60:, 2] = 0.9
    probs /= probs.sum(1, keepdims=True)
    argmax = segments_from_probabilities(probs, 1.0, min_segment_s=5)
    assert [s.phase_id for s in argmax] == [0, 2, 1, 2]
    path = decode_case(probs, _ordered_prior())
    assert np.all(np.diff(path) >= 0)  # never goes back: training never did
    segs = segments_from_probabilities(probs, 1.0, min_segment_s=5, prior=_ordered_prior())
    assert [s.phase_id for s in segs] == [0, 1, 2]
    # The unsure stretch goes to phase 0 or 1 (progress says 1 is due), never to 2.
    assert 30 <= segs[0].end_s <= 40 and segs[1].end_s == 60
    # Confidence stays the temporal model's own probability of the decoded phase.
    end = int(segs[0].end_s)
    assert segs[0].confidence == pytest.approx(float(probs[:end, 0].mean()), abs=1e-6)


def test_phase_model_bundle_keeps_its_prior(tmp_path: Path) -> None:
    from ml_models.frames import FrameCNN
    from ml_models.phases import PhaseModel, train_phase_model

    rng = np.random.default_rng(0)
    videos = [
        (rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8), np.repeat([0, 1], n // 2))
        for n in (8, 12)
    ]
    model = train_phase_model(videos, ["a", "b"], encoder_epochs=1, temporal_epochs=1, layers=2)
    # Counted from the training labels themselves.
    assert model.prior is not None and model.prior.transitions.tolist() == [[8, 2], [0, 8]]
    model.save(tmp_path / "m.pt")
    again = PhaseModel.load(tmp_path / "m.pt")
    assert again.prior is not None
    assert np.array_equal(again.prior.progress, model.prior.progress)
    # A bundle from before priors existed still loads, and decodes by argmax.
    bare = PhaseModel(FrameCNN(2), model.temporal, ["a", "b"])
    bare.save(tmp_path / "old.pt")
    assert PhaseModel.load(tmp_path / "old.pt").prior is None


def test_whole_case_decoding_keeps_a_return_the_training_data_knows() -> None:
    # Procedures that return to an earlier phase (Cholec80's coagulation between packaging and
    # retraction) must not be forced into a straight line when training showed the return.
    seqs = [np.repeat([0, 1, 0, 1], n) for n in range(15, 21)]
    prior = PhasePrior.from_labels(seqs, 2, bins=10)
    probs = np.full((80, 2), 0.1, np.float32)
    for a, b, k in ((0, 20, 0), (20, 40, 1), (40, 60, 0), (60, 80, 1)):
        probs[a:b, k] = 0.9
    path = decode_case(probs, prior)
    assert [r[0] for r in _runs_of(path)] == [0, 1, 0, 1]


def _runs_of(path: np.ndarray) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for x in path.tolist():
        if runs and runs[-1][0] == x:
            runs[-1] = (x, runs[-1][1] + 1)
        else:
            runs.append((x, 1))
    return runs


def test_temporal_model_is_causal() -> None:
    torch.manual_seed(0)
    model = MSTCN(in_dim=8, n_classes=4, stages=2, channels=8, layers=4).eval()
    x = torch.randn(1, 8, 50)
    y = x.clone()
    y[:, :, 30:] = torch.randn(1, 8, 20)  # change only the future
    with torch.no_grad():
        a, b = model(x)[-1], model(y)[-1]
    assert torch.allclose(a[:, :, :30], b[:, :, :30], atol=1e-6)
    assert not torch.allclose(a[:, :, 30:], b[:, :, 30:])


def test_offline_temporal_model_sees_the_future() -> None:
    torch.manual_seed(0)
    model = MSTCN(in_dim=8, n_classes=4, stages=2, channels=8, layers=4, causal=False).eval()
    x = torch.randn(1, 8, 50)
    y = x.clone()
    y[:, :, 30:] = torch.randn(1, 8, 20)
    with torch.no_grad():
        a, b = model(x)[-1], model(y)[-1]
    assert a.shape == (1, 4, 50)
    # Each stage sees 1 + 2 + 4 + 8 = 15 steps ahead: two stages reach back to step 0.
    assert not torch.allclose(a[:, :, :30], b[:, :, :30])


def test_offline_model_finds_a_phase_that_only_its_end_reveals() -> None:
    # Phase 1 is the 8 steps before a marker, as clipping is the time before the clips are
    # seen on the duct; nothing in the phase itself shows it. The causal model cannot know it
    # until too late; the offline model reads it from what follows.
    from ml_models.phases import train_temporal_model

    rng = np.random.default_rng(5)

    def video() -> tuple[np.ndarray, np.ndarray]:
        feats = rng.normal(0, 0.3, (60, 4)).astype(np.float32)
        labels = np.zeros(60, np.int64)
        t0 = int(rng.integers(15, 55))
        feats[t0, 0] = 3.0
        labels[t0 - 8 : t0] = 1
        return feats, labels

    train = [video() for _ in range(16)]
    test = [video() for _ in range(8)]
    feats, labels = [f for f, _ in train], [y for _, y in train]
    jaccard = {}
    for causal in (True, False):
        model = train_temporal_model(feats, labels, 2, 4, 40, seed=0, causal=causal)
        inter = union = 0
        for f, y in test:
            with torch.no_grad():
                found = model(torch.from_numpy(f.T[None]))[-1][0].argmax(0).numpy() == 1
            inter += (found & (y == 1)).sum()
            union += (found | (y == 1)).sum()
        jaccard[causal] = inter / union
    # Phase 1's Jaccard: the causal model can only guess where it falls (0.0-0.3 over data
    # and training seeds), the offline one finds it (0.9-1.0).
    assert jaccard[False] > 0.8
    assert jaccard[True] < 0.45


def test_black_and_colour_bar_scores() -> None:
    rng = np.random.default_rng(0)
    black = np.full((240, 320, 3), 3, np.uint8)
    tissue = rng.integers(60, 200, (240, 320, 3), dtype=np.uint8)
    bars = np.zeros((240, 320, 3), np.uint8)
    colours = [(255, 255, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 0, 255),
               (0, 0, 255), (255, 0, 0)]  # fmt: skip
    for i, c in enumerate(colours):
        bars[:, i * 320 // 7 : (i + 1) * 320 // 7] = c
    assert black_score(black) == 1.0 and black_score(tissue) == 0.0
    assert colour_bars_score(bars) > 0.9
    assert colour_bars_score(tissue) < 0.2 and colour_bars_score(black) < 0.2


def _overlay_boxes(words: str) -> tuple[list[tuple[int, int, int, int]], list[float]]:
    """Boxes and scores :class:`TextPersistence` gives after 8 frames of moving tissue under a
    fixed overlay of ``words``."""
    rng = np.random.default_rng(1)
    text = TextPersistence(window=6)
    boxes: list[tuple[int, int, int, int]] = []
    for i in range(8):
        frame = cv2.GaussianBlur(rng.integers(40, 220, (240, 320, 3), dtype=np.uint8), (0, 0), 3)
        frame = np.roll(frame, 7 * i, axis=1)  # the scene moves, the overlay does not
        cv2.putText(frame, words, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (235, 235, 235), 1, cv2.LINE_AA)  # fmt: skip
        boxes = text.update(frame)
    return boxes, text.scores


def test_burned_in_text_is_found_where_it_was_drawn() -> None:
    boxes, _ = _overlay_boxes("DOE JANE 1970")
    assert len(boxes) >= 1
    x1, y1, x2, y2 = (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
    assert x1 <= 12 and x2 >= 120 and y1 <= 18 and y2 >= 28 and y2 <= 45


def test_a_text_box_scores_by_its_letters() -> None:
    """0.5 at the fewest letters that make a box text, 1.0 at twice as many: a whole line of
    a name and date scores above a lone word."""
    line, line_scores = _overlay_boxes("DOE JANE 1970")
    word, word_scores = _overlay_boxes("JANE")
    assert len(line_scores) == len(line) == 1 and len(word_scores) == len(word) == 1
    assert line_scores[0] == 1.0 and 0.5 <= word_scores[0] < 0.9


def _video_with_a_cut(path: Path, colours: tuple[tuple[int, int, int], ...] = ()) -> None:
    """One second per colour (red then blue unless given) with a white disc moving across."""
    colours = colours or ((200, 60, 60), (40, 160, 220))
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 160, 120, "yuv420p"
        for i in range(25 * len(colours)):
            colour = colours[i // 25]
            img = np.full((120, 160, 3), colour, np.uint8)
            cv2.circle(img, (20 + i, 60), 10, (255, 255, 255), -1)
            for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def test_scene_cut_found_at_the_cut(tmp_path: Path) -> None:
    video = tmp_path / "cut.mp4"
    _video_with_a_cut(video)
    cuts = scene_cuts(video)
    assert [round(c.start_s, 2) for c in cuts] == [1.0]
    table = events_table(cuts, "c1")
    assert table.schema.equals(EVENTS) and table.column("kind").to_pylist() == ["scene_cut"]
    assert json.loads(table.to_pandas().to_json())  # serialisable for the web app


def test_a_scene_cut_scores_by_how_much_the_picture_changed(tmp_path: Path) -> None:
    """Blue to dark grey changes hue, saturation and brightness (far past twice the threshold);
    grey 60 to grey 150 changes brightness alone, just past it; grey 150 to 175 is no cut."""
    video = tmp_path / "cuts.mp4"
    greys = ((60, 60, 60), (150, 150, 150), (175, 175, 175))
    _video_with_a_cut(video, ((40, 160, 220), *greys))
    cuts = scene_cuts(video)
    assert [round(c.start_s, 2) for c in cuts] == [1.0, 2.0]
    hard, mild = (c.score for c in cuts)
    assert hard == 1.0 and 0.5 <= mild < 0.7


def test_cuts_from_the_shared_decode_are_pyscenedetects_own(
    synthetic_case: Path, tmp_path: Path
) -> None:
    from scenedetect import ContentDetector, SceneManager, open_video

    from ml_models.events import scan_video

    cut = tmp_path / "cut.mp4"
    _video_with_a_cut(cut)
    for video in (cut, synthetic_case / "video.mp4"):
        stream = open_video(str(video), backend="pyav")
        manager = SceneManager()
        manager.auto_downscale = True
        manager.add_detector(ContentDetector(threshold=27.0, min_scene_len=5))
        manager.detect_scenes(stream, show_progress=False)
        own = [round(c.seconds, 4) for c in manager.get_cut_list()]
        scan = scan_video(video, None)
        shared = [round(e.start_s, 4) for e in scan.events if e.kind == "scene_cut"]
        assert shared == own and own, video.name


def test_onnx_runtime_gives_the_detections_of_torch(synthetic_case: Path, tmp_path: Path) -> None:
    from ml_models.detector import detect_video, load_model
    from surg_assets.models import default_weights_file

    # The shipped default detector: its scores spread out, unlike a one-epoch model's (all one
    # value), so which boxes each runtime keeps is decided by the model, not by float noise.
    weights = default_weights_file("instrument_detector")
    video = synthetic_case / "video.mp4"
    tables = {}
    for runtime in ("torch", "onnx"):
        model = load_model(weights, runtime, 320, tmp_path / "onnx")
        tables[runtime], _ = detect_video(
            model, video, "c1", "v", sample_fps=5.0, imgsz=320, conf=0.05, end_s=8.0
        )
    a, b = (tables[r].to_pandas().sort_values(["frame_index", "confidence"]) for r in tables)
    assert list((tmp_path / "onnx").glob("*.onnx"))
    # Near the 0.05 threshold float differences may flip a box in or out. Every box clearly
    # above it must be found by the other runtime, at the same place with the same score, both
    # ways round.
    boxes = ["x1", "y1", "x2", "y2"]
    for one, other in ((a, b), (b, a)):
        confident = one[one.confidence >= 0.1]
        assert len(confident) >= 5
        for row in confident.itertuples():
            same = other[(other.frame_index == row.frame_index) & (other.class_id == row.class_id)]
            assert len(same), f"a box at frame {row.frame_index} is missing in one runtime"
            gaps = np.abs(same[boxes].to_numpy() - np.array([row.x1, row.y1, row.x2, row.y2]))
            best = gaps.max(axis=1).argmin()
            assert gaps[best].max() < 2.0  # pixels
            assert abs(same.confidence.iloc[best] - row.confidence) < 0.01


def test_phase_corpus_frames_match_the_video_the_pipeline_would_decode(tmp_path: Path) -> None:
    # The phase model trains on frames rendered straight at 1 fps; they must carry the labels
    # and look like the frames the pipeline decodes from the same case's H.264 video.
    from ml_models.synthetic import generate
    from ml_models.training import phase_labels_at, render_phase_cases, tool_presence_at

    generate(tmp_path, minutes=0.5, seed=77, size=(426, 240))
    times, decoded = frames_per_second(tmp_path / "video.mp4", 1.0)
    [case] = render_phase_cases([77], [0.5], size=(426, 240))
    images = case.images
    assert images.shape == decoded.shape
    assert np.array_equal(case.labels, phase_labels_at(tmp_path, times))
    # The instruments drawn are the case's tool.txt, and some seconds have some.
    assert np.array_equal(case.tools, tool_presence_at(tmp_path, times))
    assert 0 < case.tools.sum() < case.tools.size
    diff = np.abs(images.astype(np.int16) - decoded.astype(np.int16)).mean(axis=(1, 2, 3))
    assert diff.max() < 6.0  # grey levels: codec and JPEG losses only, the same picture


def test_phase_model_keeps_its_depth_through_save_and_load(tmp_path: Path) -> None:
    from ml_models.phases import PhaseModel, train_phase_model

    rng = np.random.default_rng(0)
    videos = [(rng.integers(0, 255, (40, 96, 96, 3), np.uint8), np.repeat([0, 1], 20))]
    model = train_phase_model(
        videos, ["a", "b"], encoder_epochs=1, temporal_epochs=1, layers=5, encoder_frames=16
    )
    model.save(tmp_path / "phase.pt")
    loaded = PhaseModel.load(tmp_path / "phase.pt")
    assert len(loaded.temporal.stages[0].blocks) == 5
    assert len(loaded.offline.stages[0].blocks) == 5
    assert loaded.temporal.causal and not loaded.offline.causal
    frames = videos[0][0]
    for causal in (True, False):
        expected = model.predict_images(frames, causal=causal)
        assert np.allclose(loaded.predict_images(frames, causal=causal), expected)
    # Whole videos get the offline model by default, a different reading from the causal one.
    assert np.array_equal(model.predict_images(frames), model.predict_images(frames, causal=False))
    assert not np.allclose(model.predict_images(frames), model.predict_images(frames, causal=True))
    # The causal model has its own seed: training the offline one too does not change it.
    alone = train_phase_model(
        videos, ["a", "b"], encoder_epochs=1, temporal_epochs=1, layers=5, encoder_frames=16,
        offline=False,
    )  # fmt: skip
    assert alone.offline is None
    assert np.allclose(alone.predict_images(frames), model.predict_images(frames, causal=True))


def test_a_video_is_embedded_as_it_is_decoded_with_the_same_result(tmp_path: Path) -> None:
    from ml_models.frames import embed_images, embed_video, frames_per_second
    from ml_models.phases import train_phase_model
    from ml_models.video import write_sample_video

    video = write_sample_video(tmp_path / "v.mp4", seconds=12, fps=10, size=(160, 120))
    times, images = frames_per_second(video, 1.0)
    model = train_phase_model(
        [(images, np.repeat([0, 1], 6))], ["a", "b"], encoder_epochs=1, temporal_epochs=1,
        layers=3, encoder_frames=8,
    )  # fmt: skip
    # Batches of 5 frames: the streamed embeddings cross batch borders, held frames never
    # exceed one batch, and the result is the whole-array one.
    streamed_times, streamed = embed_video(model.encoder, video, 1.0, batch_size=5)
    assert np.array_equal(streamed_times, times) and len(times) == 12
    assert np.allclose(streamed, embed_images(model.encoder, images), atol=1e-5)
    for causal in (True, False):
        t, probs = model.predict_video(video, causal=causal)
        assert np.array_equal(t, times)
        assert np.allclose(probs, model.predict_images(images, causal=causal), atol=1e-5)


def test_phase_encoder_learns_tool_presence_beside_the_phase(tmp_path: Path) -> None:
    # Two tools drawn as bright squares in opposite corners, independent of the phase: the
    # tool head must learn them (multi-task), and the bundle must keep the head.
    from ml_models.frames import embed_images, to_tensor
    from ml_models.phases import PhaseModel, train_phase_model

    rng = np.random.default_rng(1)
    n = 240
    images = rng.integers(60, 120, (n, 96, 96, 3), np.uint8)
    tools = rng.integers(0, 2, (n, 2))
    images[tools[:, 0] == 1, :24, :24] = 250
    images[tools[:, 1] == 1, -24:, -24:] = 250
    labels = np.repeat([0, 1], n // 2)
    images[labels == 1, 40:56, 40:56, 2] = 250
    model = train_phase_model(
        [(images, labels)], ["a", "b"], encoder_epochs=6, temporal_epochs=1, layers=2,
        tools=[tools],
    )  # fmt: skip
    model.save(tmp_path / "phase.pt")
    loaded = PhaseModel.load(tmp_path / "phase.pt")
    assert loaded.encoder.n_tools == 2
    with torch.no_grad():
        emb = torch.from_numpy(embed_images(loaded.encoder, images))
        predicted = (torch.sigmoid(loaded.encoder.tool_head(emb)) > 0.5).numpy()
        assert torch.equal(loaded.encoder.embed(to_tensor(images[:4])), emb[:4])
    assert (predicted == tools).mean() > 0.9
    with pytest.raises(InputError, match="one row per labelled second"):
        train_phase_model([(images, labels)], ["a", "b"], tools=[tools[:-1]])


def test_max_pooled_encoder_learns_a_small_detail_anywhere_in_the_frame() -> None:
    # Phase 1 differs from phase 0 by three clip-sized specks at a random place in a noisy
    # frame, as the clips on the duct tell Calot-triangle dissection from gallbladder
    # dissection. The spatial max keeps a speck wherever it is.
    from ml_models.frames import FrameCNN, predict_proba, train_classifier

    rng = np.random.default_rng(3)
    n = 480
    images = rng.integers(60, 120, (n, 96, 96, 3), np.uint8)
    labels = np.tile([0, 1], n // 2)
    for i in np.flatnonzero(labels == 1):
        y, x = rng.integers(4, 84, 2)
        for k in range(3):
            images[i, y + 3 * k : y + 3 * k + 2, x : x + 3] = 240
    torch.manual_seed(0)
    model = FrameCNN(2, pool="avgmax")
    train_classifier(model, images[: n // 2], labels[: n // 2], epochs=10, augment=False)
    held_out = predict_proba(model, images[n // 2 :]).argmax(1)
    assert (held_out == labels[n // 2 :]).mean() > 0.9
    with pytest.raises(ValueError, match="pool must be one of"):
        FrameCNN(2, pool="median")


def test_phase_bundle_without_pool_or_offline_model_loads_as_before(tmp_path: Path) -> None:
    # Bundles written before the pool was recorded hold a mean-pooled encoder; they must load
    # and predict as they did.
    from ml_models.phases import PhaseModel, train_phase_model

    rng = np.random.default_rng(4)
    videos = [(rng.integers(0, 255, (30, 96, 96, 3), np.uint8), np.repeat([0, 1], 15))]
    model = train_phase_model(
        videos, ["a", "b"], encoder_epochs=1, temporal_epochs=1, layers=3, pool="avg"
    )
    model.save(tmp_path / "phase.pt")
    blob = torch.load(tmp_path / "phase.pt", weights_only=False)
    assert blob["pool"] == "avg"
    # Nor did they hold an offline temporal model: they read whole videos causally, as before.
    for key in ("pool", "offline", "offline_stages", "offline_layers"):
        del blob[key]
    torch.save(blob, tmp_path / "legacy.pt")
    loaded = PhaseModel.load(tmp_path / "legacy.pt")
    assert loaded.encoder.pool == "avg"
    assert loaded.offline is None
    causal = model.predict_images(videos[0][0], causal=True)
    assert np.allclose(loaded.predict_images(videos[0][0]), causal)
    maxed = train_phase_model(videos, ["a", "b"], encoder_epochs=1, temporal_epochs=1, layers=3)
    maxed.save(tmp_path / "maxed.pt")
    assert PhaseModel.load(tmp_path / "maxed.pt").encoder.pool == "avgmax"


def test_phase_encoder_can_learn_from_other_cases_than_the_temporal_model() -> None:
    # The encoder set marks phase 1 with a blue square; the long videos are noise. An encoder
    # that learned from the encoder set tells the squares apart; the temporal model still
    # trains on the videos (its labels decide the prior's transitions).
    from ml_models.frames import predict_proba
    from ml_models.phases import train_phase_model

    rng = np.random.default_rng(2)
    images = rng.integers(60, 120, (200, 96, 96, 3), np.uint8)
    labels = np.repeat([0, 1], 100)
    images[labels == 1, 30:66, 30:66, 2] = 250
    video = rng.integers(60, 120, (50, 96, 96, 3), np.uint8)
    model = train_phase_model(
        [(video, np.repeat([0, 1], 25))], ["a", "b"], encoder_epochs=4, temporal_epochs=1,
        layers=2, encoder_set=(images, labels, None),
    )  # fmt: skip
    assert (predict_proba(model.encoder, images).argmax(1) == labels).mean() > 0.95
    assert model.prior is not None and model.prior.transitions[0, 1] == 1


def test_int8_graph_loads_like_the_fp32_one_and_finds_the_confident_boxes(
    tiny_models: dict[str, Path], synthetic_case: Path, tmp_path: Path
) -> None:
    from ultralytics import YOLO

    from ml_models.detector import detect_video, int8_graph, letterbox_input, onnx_graph

    video = synthetic_case / "video.mp4"
    frames = [f.bgr for f in sample_frames(video, 1.0, start_s=8.0, end_s=16.0)]
    assert letterbox_input(frames[0], 320).shape == (1, 3, 192, 320)  # ultralytics' rect input
    fp32 = onnx_graph(tiny_models["instrument_detector"], 320, tmp_path / "onnx")
    int8 = YOLO(str(int8_graph(fp32, frames, 320, tmp_path / "int8.onnx")), task="segment")
    reference = YOLO(str(fp32), task="segment")
    tables = {}
    for name, model in (("fp32", reference), ("int8", int8)):
        tables[name], _ = detect_video(
            model, video, "c1", "v", sample_fps=1.0, imgsz=320, conf=0.001, end_s=8.0
        )
    a, b = (tables[n].to_pandas() for n in ("fp32", "int8"))
    assert len(a) > 0 and len(b) > 0
    # Ultralytics' metadata came along: the same class names, not the generic class0..N.
    assert int8.names == reference.names and set(b.class_name) <= set(reference.names.values())
    # Quantisation moves boxes a little; each confident FP32 box has an INT8 box of its class
    # on the same frame overlapping it (IoU >= 0.5).
    for row in a.nlargest(min(len(a), 10), "confidence").itertuples():
        same = b[(b.frame_index == row.frame_index) & (b.class_id == row.class_id)]
        ix = (same.x2.clip(upper=row.x2) - same.x1.clip(lower=row.x1)).clip(lower=0)
        iy = (same.y2.clip(upper=row.y2) - same.y1.clip(lower=row.y1)).clip(lower=0)
        union = (row.x2 - row.x1) * (row.y2 - row.y1) + (same.x2 - same.x1) * (same.y2 - same.y1)
        assert ((ix * iy) / (union - ix * iy)).max() >= 0.5


def test_the_detector_runs_at_the_size_its_checkpoint_was_trained_at(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:

    from ml_models.detector import DEFAULT_IMGSZ, trained_imgsz
    from surg_assets.models import default_weights_file

    assert trained_imgsz(tiny_models["instrument_detector"]) == 160
    assert trained_imgsz(default_weights_file("instrument_detector")) == 320
    # Weights that do not record their training arguments run at the defaults' size.
    checkpoint = torch.load(tiny_models["instrument_detector"], weights_only=False)
    checkpoint.pop("train_args")
    torch.save(checkpoint, tmp_path / "bare.pt")
    assert trained_imgsz(tmp_path / "bare.pt") == DEFAULT_IMGSZ == 320
    with pytest.raises(InputError, match="weights file does not exist"):
        trained_imgsz(tmp_path / "missing.pt")
