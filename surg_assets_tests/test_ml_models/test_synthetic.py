"""The synthetic case generator: its video, its labels in every format, and its determinism."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest

from ml_models.errors import InputError
from ml_models.formats import (
    INSTRUMENT_CLASSES,
    load_cholec80_phases,
    load_cholec80_tools,
    load_events,
    load_mot,
    load_yolo,
)
from ml_models.synthetic import SyntheticCase, generate
from ml_models.synthetic.timeline import build_timeline, reference_table

SIZE = (426, 240)
SECONDS = 16
SEED = 11


@pytest.fixture(scope="session")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, SECONDS / 60, SEED, size=SIZE, fps=25)
    return out


@pytest.fixture(scope="session")
def truth(case_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (case_dir / "ground_truth.jsonl").read_text().splitlines()]


def test_video_has_the_asked_length_size_and_rate(case_dir: Path) -> None:
    summary = json.loads((case_dir / "summary.json").read_text())
    with av.open(str(case_dir / "video.mp4")) as c:
        s = c.streams.video[0]
        frames = sum(1 for _ in c.decode(s))
        assert (s.codec_context.name, s.width, s.height) == ("h264", *SIZE)
        assert s.average_rate == 25
    assert frames == summary["n_frames"] == SECONDS * 25


def test_every_frame_has_truth_and_the_phases_run_in_cholec80_order(truth: list[dict]) -> None:
    assert [t["frame_index"] for t in truth] == list(range(SECONDS * 25))
    phases = [t["phase_id"] for t in truth]
    assert phases == sorted(phases)  # monotone: 0..6 in order, no phase skipped back
    assert set(phases) == set(range(7))
    segs = [t["segment"] for t in truth]
    # The recorder starts on colour bars, goes black, shows the room, then the abdomen.
    order = [s for i, s in enumerate(segs) if i == 0 or s != segs[i - 1]]
    assert order[:4] == ["colour_bars", "black", "out_of_body", "surgery"]
    assert order[-2:] == ["out_of_body", "black"]
    assert any(t["faces"] for t in truth if t["segment"] == "out_of_body")
    assert not any(t["instruments"] for t in truth if t["segment"] != "surgery")


def test_boxes_lie_inside_the_frame_and_tracks_are_contiguous(truth: list[dict]) -> None:
    w, h = SIZE
    frames_of = defaultdict(list)
    for t in truth:
        for i in t["instruments"]:
            x1, y1, x2, y2 = i["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert 0 < i["visibility"] <= 1
            assert i["class_name"] == INSTRUMENT_CLASSES[i["class_id"]]
            frames_of[i["track_id"]].append(t["frame_index"])
        for role, box in ((b["role"], b["box"]) for b in t["text_boxes"]):
            assert role in {"patient_name", "patient_id", "datetime"}
            assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
    assert frames_of, "a 16 s case should show instruments"
    for frames in frames_of.values():
        # A track is one visit; it may drop out briefly (fully occluded) but never comes back
        # after a long gap under the same id.
        assert max(np.diff(frames), default=1) <= 25


def test_yolo_detect_labels_load_back_exactly(case_dir: Path, truth: list[dict]) -> None:
    s = load_yolo(case_dir / "yolo")
    got = sorted((a.frame_index, a.class_id, tuple(round(v) for v in a.box)) for a in s)
    sampled = {a.frame_index for a in s}
    images = sorted(p.stem for p in (case_dir / "yolo" / "images").glob("*.jpg"))
    assert len(images) == SECONDS  # one sample a second
    want = sorted(
        (t["frame_index"], i["class_id"], tuple(i["box"]))
        for t in truth
        if t["frame_index"] % 25 == 0
        for i in t["instruments"]
    )
    assert got == want
    assert sampled <= {t["frame_index"] for t in truth if t["frame_index"] % 25 == 0}
    assert all(a.image_width == SIZE[0] and a.image_height == SIZE[1] for a in s)


def test_yolo_seg_polygons_load_back_exactly(case_dir: Path, truth: list[dict]) -> None:
    s = load_yolo(case_dir / "yolo-seg")
    got = sorted(
        (a.frame_index, a.class_id, tuple((round(x), round(y)) for x, y in a.polygon)) for a in s
    )
    want = sorted(
        (t["frame_index"], i["class_id"], tuple(tuple(p) for p in i["polygon"]))
        for t in truth
        if t["frame_index"] % 25 == 0
        for i in t["instruments"]
        if "polygon" in i
    )
    assert got == want and got


def test_mot_ground_truth_loads_back_exactly(case_dir: Path, truth: list[dict]) -> None:
    s = load_mot(case_dir / "mot" / "gt" / "gt.txt", fps=25)
    got = sorted((a.frame_index, a.track_id, a.class_id, a.box) for a in s)
    want = sorted(
        (t["frame_index"], i["track_id"], i["class_id"], tuple(float(v) for v in i["box"]))
        for t in truth
        for i in t["instruments"]
    )
    assert got == want


def test_phase_and_tool_files_load_back_exactly(case_dir: Path, truth: list[dict]) -> None:
    phases = load_cholec80_phases(case_dir / "phase.txt", fps=25)
    per_frame = np.full(len(truth), -1)
    for a in phases:
        per_frame[a.frame_index : a.end_frame] = a.phase_id
    assert per_frame.tolist() == [t["phase_id"] for t in truth]
    summary = json.loads((case_dir / "summary.json").read_text())
    assert [(a.phase_id, a.frame_index, a.end_frame) for a in phases] == [
        (p["phase_id"], p["start_frame"], p["end_frame"]) for p in summary["phases"]
    ]
    tools = load_cholec80_tools(case_dir / "tool.txt", fps=25)
    for t in truth[::25]:
        present = {a.class_id for a in tools if a.frame_index <= t["frame_index"] < a.end_frame}
        assert present == {i["class_id"] for i in t["instruments"]}


def test_events_load_back_and_match_the_frames(case_dir: Path, truth: list[dict]) -> None:
    s = load_events(case_dir / "events.json")
    events = s.of_kind("event")
    flag = {
        "black": lambda t: t["segment"] == "black",
        "colour_bars": lambda t: t["segment"] == "colour_bars",
        "out_of_body": lambda t: t["segment"] == "out_of_body",
        "smoke": lambda t: t["smoke"],
        "motion_blur": lambda t: t["motion_blur"],
        "burned_in_text": lambda t: bool(t["text_boxes"]),
    }
    for kind, fn in flag.items():
        covered = np.zeros(len(truth), bool)
        for e in events:
            if e.class_name == kind:
                covered[e.frame_index : e.end_frame] = True
                assert e.t_s == pytest.approx(e.frame_index / 25)
        assert covered.tolist() == [fn(t) for t in truth], kind
    cuts = [e.frame_index for e in events if e.class_name == "scene_cut"]
    segs = [t["segment"] for t in truth]
    assert cuts == [i for i in range(1, len(segs)) if segs[i] != segs[i - 1]]
    texts = s.of_kind("text")
    assert {a.class_name for a in texts} == {"patient_name", "patient_id", "datetime"}


def test_same_seed_same_case_other_seed_other_case(case_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, SECONDS / 60, SEED, size=SIZE, fps=25)
    for name in ("ground_truth.jsonl", "phase.txt", "tool.txt", "events.json", "mot/gt/gt.txt"):
        assert (again / name).read_bytes() == (case_dir / name).read_bytes(), name
    a = SyntheticCase(SECONDS, SEED, SIZE)
    b = SyntheticCase(SECONDS, SEED, SIZE)
    c = SyntheticCase(SECONDS, SEED + 1, SIZE)
    for f in (0, 150, 300):
        assert np.array_equal(a.render(f)[0], b.render(f)[0])
    assert not np.array_equal(a.render(300)[0], c.render(300)[0])


def test_frames_are_random_access(case_dir: Path) -> None:
    # Frame i depends on nothing rendered before it: the generator streams with flat memory.
    case = SyntheticCase(SECONDS, SEED, SIZE)
    img_late, truth_late = case.render(320)
    fresh = SyntheticCase(SECONDS, SEED, SIZE)
    for i in range(0, 320, 40):
        fresh.render(i)
    img2, truth2 = fresh.render(320)
    assert np.array_equal(img_late, img2)
    assert truth_late.to_json() == truth2.to_json()


def test_long_cases_follow_cholec80_statistics() -> None:
    # Timelines are cheap: check full-length (40 min) cases without rendering them.
    fps, n = 25, 40 * 60 * 25
    ref = reference_table()
    shown = np.zeros((7, 7))
    frames = np.zeros(7)
    classes: set[int] = set()
    for seed in range(4):
        tl = build_timeline(n, fps, seed=seed)
        present = np.zeros((7, n), bool)
        for v in tl.visits:
            present[v.class_id, v.start : v.end] = True
            classes.add(v.class_id)
        for p in range(7):
            in_phase = tl.phase_of_frame == p
            shown[p] += present[:, in_phase].sum(1)
            frames[p] += in_phase.sum()
        durations = [p.end - p.start for p in tl.phases]
        assert durations[1] > durations[0] and durations[3] > durations[6]
        cleaning = [s for s in tl.segments if s.kind == "out_of_body"][1]
        assert tl.phases[3].start < cleaning.start < tl.phases[3].end  # scope out to be cleaned
    assert classes == set(range(7))
    for p in range(7):
        for c, name in enumerate(INSTRUMENT_CLASSES):
            want = ref["phases"][p]["tool_presence"][name]
            got = shown[p, c] / frames[p]
            if want == 0:
                assert got == 0, (p, name)  # never where Cholec80 never shows it
            else:
                assert abs(got - want) < 0.25, (p, name, got, want)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"minutes": 0}, "minutes"),
        ({"minutes": 1, "size": (855, 480)}, "size"),
        ({"minutes": 1, "fps": 0}, "fps"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        generate(tmp_path, seed=0, **kwargs)
    assert not (tmp_path / "video.mp4").exists()


def test_an_interrupted_run_leaves_nothing_behind(tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done > 50:
            raise Stop

    (tmp_path / "keep.txt").write_text("the user's file")
    with pytest.raises(Stop):
        generate(tmp_path, 0.1, 1, size=(160, 96), progress=progress)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
