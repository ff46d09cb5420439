"""Importers on the real samples in ../shared/data, on hand-made files, and on malformed files."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ml_models.errors import AnnotationFormatError, InputError
from ml_models.formats import (
    INSTRUMENT_CLASSES,
    Annotation,
    AnnotationSet,
    instrument_id,
    load_annotations,
    load_anvil,
    load_cholec80_phases,
    load_cholec80_tools,
    load_cholect50,
    load_coco,
    load_events,
    load_labelme,
    load_mot,
    load_yolo,
    phase_id,
    sniff_format,
)
from ml_models.formats.cholec80 import OFFICIAL_PHASE_NAMES
from surg_assets_tests.conftest import SHARED_DATA, skip_or_fail


def shared(sub: str) -> Path:
    p = SHARED_DATA / sub
    if not p.exists():
        skip_or_fail(f"real data {sub} not found under {SHARED_DATA} (a clone without ../shared)")
    return p


# -- the annotation model --------------------------------------------------------------------


def test_records_round_trip_through_json(tmp_path: Path) -> None:
    a = Annotation(
        kind="instrument",
        video="case-1",
        frame_index=12,
        t_s=0.48,
        class_id=2,
        class_name="hook",
        box=(1.0, 2.0, 30.0, 40.0),
        polygon=[(1.0, 2.0), (30.0, 2.0), (30.0, 40.0)],
        track_id=3,
        attributes={"visibility": 0.5},
        source="mot",
        author="reviewer@hospital",
    )
    b = Annotation(kind="phase", video="case-1", t_s=0.0, end_s=12.5, phase_id=1, class_name="x")
    s = AnnotationSet([a, b], source="test", skipped=["one note"])
    rec = s.to_records()[0]
    assert (rec["x1"], rec["y2"], rec["polygon"][2]) == (1.0, 40.0, [30.0, 40.0])
    json.dumps(s.to_records())  # plain JSON types only
    s.to_json(tmp_path / "set.json")
    back = AnnotationSet.from_json(tmp_path / "set.json")
    assert back.annotations == [a, b]
    assert back.skipped == ["one note"]


def test_cholec80_names_in_every_spelling() -> None:
    assert [instrument_id(n) for n in ("SpecimenBag", "specimen_bag", "Specimen bag")] == [6] * 3
    assert instrument_id("snare") is None
    assert [phase_id(n) for n in OFFICIAL_PHASE_NAMES] == list(range(7))
    assert phase_id("Calot triangle dissection") == 1


# -- real samples ----------------------------------------------------------------------------


def test_yolo_reads_the_real_cholec80_tool_dataset() -> None:
    root = shared("cholec80-tools-yolo")
    images = {p.stem for p in root.rglob("*.jpg")}
    labels = [p for p in root.rglob("labels/*/*.txt") if p.stem in images]
    expected = sum(1 for p in labels for line in p.read_text().splitlines() if line.strip())
    s = load_yolo(root)
    assert len(s) == expected > 300
    # Labels without an image cannot be placed in pixels and are listed, not guessed.
    assert len(s.skipped) == len(list(root.rglob("labels/*/*.txt"))) - len(labels)
    assert {a.class_name for a in s} <= set(INSTRUMENT_CLASSES)
    assert all(a.class_id == INSTRUMENT_CLASSES.index(a.class_name) for a in s)
    for a in s:
        x1, y1, x2, y2 = a.box
        assert -0.5 <= x1 < x2 <= 854.5 and -0.5 <= y1 < y2 <= 480.5
    first = next(a for a in s if a.image.endswith("0002a816-006000.jpg"))
    assert (first.video, first.frame_index, first.image_width) == ("0002a816", 6000, 854)


def test_the_real_box_dataset_gets_a_fixed_split_by_image(tmp_path: Path) -> None:
    from ml_models.training import boxes_to_segment_dataset

    root = shared("cholec80-tools-yolo")
    data, counts = boxes_to_segment_dataset(root, tmp_path / "a")
    again, counts_again = boxes_to_segment_dataset(root, tmp_path / "b")
    sides = {
        side: sorted(p.name for p in (data.parent / "images" / side).iterdir())
        for side in ("train", "val")
    }
    assert counts == counts_again == {k: len(v) for k, v in sides.items()}
    assert sides["val"] == sorted(p.name for p in (again.parent / "images" / "val").iterdir())
    assert not set(sides["train"]) & set(sides["val"])
    assert 0.12 < counts["val"] / (counts["train"] + counts["val"]) < 0.28
    # Boxes became rectangles: four corners, in [0, 1], the YOLO box's extent.
    stem = Path(sides["val"][0]).stem
    source = next(root.glob(f"labels/*/{stem}.txt")).read_text().split()
    rect = (data.parent / "labels" / "val" / f"{stem}.txt").read_text().split()
    c, x, y, w, h = int(source[0]), *map(float, source[1:5])
    assert int(rect[0]) == c and len(rect) % 9 == 0
    assert [float(v) for v in rect[1:9]] == pytest.approx(
        [x - w / 2, y - h / 2, x + w / 2, y - h / 2, x + w / 2, y + h / 2, x - w / 2, y + h / 2],
        abs=1e-5,
    )


def _box_dataset(root: Path, names: list[str], rows: list[str]) -> Path:
    """A one-image YOLO detect dataset whose data.yaml names ``names``."""
    import cv2

    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)  # listed folders must exist (no download)
    (root / "labels" / "train").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "train" / "f1.jpg"), np.zeros((32, 48, 3), np.uint8))
    (root / "labels" / "train" / "f1.txt").write_text("\n".join(rows) + "\n")
    listed = "\n".join(f"  {i}: {n}" for i, n in enumerate(names))
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames:\n{listed}\n")
    return root


def test_box_datasets_become_cholec80_ids_by_name_and_other_classes_are_refused(
    tmp_path: Path,
) -> None:
    from ml_models.training import boxes_to_segment_dataset, require_cholec80_yaml

    # Cholec80's instruments in another order, in the official file spelling: ids by name.
    rows = ["0 0.5 0.5 0.2 0.2", "1 0.3 0.3 0.1 0.1"]
    ok = _box_dataset(tmp_path / "ok", ["Hook", "SpecimenBag"], rows)
    data, counts = boxes_to_segment_dataset(ok, tmp_path / "out")
    side = "train" if counts["train"] else "val"
    written = (data.parent / "labels" / side / "f1.txt").read_text().splitlines()
    assert [int(r.split()[0]) for r in written] == [
        INSTRUMENT_CLASSES.index("hook"),
        INSTRUMENT_CLASSES.index("specimen_bag"),
    ]
    # A data.yaml ultralytics would read as it is must already number them Cholec80's way.
    with pytest.raises(InputError, match="numbers the instruments in another order"):
        require_cholec80_yaml(ok / "data.yaml")
    # Another dataset's instruments are not relabelled by position: one error naming them.
    other = _box_dataset(tmp_path / "endovis", ["Prograsp Forceps", "hook"], rows)
    with pytest.raises(InputError, match=r"names classes that are not Cholec80 instruments "
                       r"\(Prograsp Forceps\)"):  # fmt: skip
        boxes_to_segment_dataset(other, tmp_path / "out2")
    with pytest.raises(InputError, match="Prograsp Forceps"):
        require_cholec80_yaml(other / "data.yaml")
    # A label whose class the data.yaml does not list: the file and line are named.
    bad = _box_dataset(tmp_path / "bad", ["grasper"], ["0 0.5 0.5 0.2 0.2", "4 0.5 0.5 0.1 0.1"])
    with pytest.raises(InputError, match="f1.txt, line 2: class 4 is not one of the dataset's 1"):
        boxes_to_segment_dataset(bad, tmp_path / "out3")
    cholec = _box_dataset(tmp_path / "cholec", list(INSTRUMENT_CLASSES), rows)
    require_cholec80_yaml(cholec / "data.yaml")  # Cholec80's own order passes


def test_joined_training_data_reads_both_training_splits_and_validates_on_the_first(
    tmp_path: Path, synthetic_case: Path
) -> None:
    from ultralytics.data.utils import check_det_dataset, img2label_paths

    from ml_models.training import boxes_to_segment_dataset, detector_dataset, with_extra_training
    from ml_models.ultra import ultralytics_offline

    ultralytics_offline()
    real, counts = boxes_to_segment_dataset(shared("cholec80-tools-yolo"), tmp_path / "real")
    synth = detector_dataset([synthetic_case, synthetic_case], tmp_path / "synth", val_cases=1)
    joined, joined_counts = with_extra_training(real, synth, tmp_path / "joined" / "data.yaml")

    spec = check_det_dataset(str(joined))  # what ultralytics' trainer will read
    assert spec["train"] == [
        str(real.parent / "images" / "train"),
        str(synth.parent / "images" / "train"),
    ]
    assert spec["val"] == str(real.parent / "images" / "val")
    train_images = [p for folder in spec["train"] for p in sorted(Path(folder).iterdir())]
    synthetic_frames = len(list((synth.parent / "images" / "train").iterdir()))
    assert len(train_images) == counts["train"] + synthetic_frames > counts["train"]
    assert joined_counts == {"train": counts["train"], "also_train": synthetic_frames}
    assert all(Path(label).is_file() for label in img2label_paths([str(p) for p in train_images]))

    other = tmp_path / "other.yaml"
    other.write_text(
        f"path: {real.parent}\ntrain: images/train\nval: images/val\nnames:\n  0: needle\n"
    )
    with pytest.raises(InputError, match="other.yaml names other classes than the training data"):
        with_extra_training(real, other, tmp_path / "x.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("just: [unclosed")
    with pytest.raises(InputError, match="broken.yaml is not a YOLO data.yaml"):
        with_extra_training(real, broken, tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()


def test_repeat_factors_show_rare_instruments_more_often_and_ultralytics_keeps_the_repeats(
    tmp_path: Path,
) -> None:
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    from ml_models.training import boxes_to_segment_dataset, with_repeat_factors
    from ml_models.ultra import ultralytics_offline

    ultralytics_offline()
    real, counts = boxes_to_segment_dataset(shared("cholec80-tools-yolo"), tmp_path / "real")
    out, info = with_repeat_factors(real, tmp_path / "rep" / "data.yaml", threshold=0.3)
    shows = {
        p.with_suffix(".jpg").name: {int(r.split()[0]) for r in p.read_text().split("\n") if r}
        for p in (real.parent / "labels" / "train").iterdir()
    }
    grasper, hook, scissors = (INSTRUMENT_CLASSES.index(n) for n in ("grasper", "hook", "scissors"))
    share = {c: sum(c in s for s in shows.values()) / len(shows) for c in (grasper, scissors)}
    # The instruments in most images are not repeated; a rare one by sqrt(threshold / share).
    assert share[grasper] > 0.3 and info.class_repeats["grasper"] == info.class_repeats["hook"] == 1
    assert info.class_repeats["scissors"] == pytest.approx((0.3 / share[scissors]) ** 0.5, abs=0.01)

    spec = check_det_dataset(str(out))  # what ultralytics' trainer reads
    assert spec["val"] == str(real.parent / "images" / "val")  # validation untouched
    dataset = YOLODataset(img_path=spec["train"], data=spec, task="segment", augment=False)
    listed = Counter(Path(f).name for f in dataset.im_files)
    assert info.images == counts["train"] == len(listed) and info.entries == len(dataset)
    # Ultralytics keeps the repeats (a set would quietly undo them): each image as often as its
    # rarest instrument asks, an image of graspers and hooks only once.
    for name, classes in shows.items():
        r = max(info.class_repeats[INSTRUMENT_CLASSES[c]] for c in classes) if classes else 1
        assert int(r) <= listed[name] <= int(r) + 1, name
        if classes <= {grasper, hook}:
            assert listed[name] == 1
    with_scissors = sum(n for name, n in listed.items() if scissors in shows[name])
    assert with_scissors / len(dataset) > 1.5 * share[scissors]
    # The same list on every run; a threshold below every share repeats nothing.
    again, _ = with_repeat_factors(real, tmp_path / "again" / "data.yaml", threshold=0.3)
    listing = out.with_name("data-train.txt").read_text()
    assert again.with_name("data-train.txt").read_text() == listing
    _, none = with_repeat_factors(real, tmp_path / "none" / "data.yaml", threshold=0.001)
    assert none.entries == none.images and set(none.class_repeats.values()) == {1.0}
    for bad in (0, 1.5):
        with pytest.raises(InputError, match=f"the repeat threshold {bad} is not a fraction"):
            with_repeat_factors(real, tmp_path / "bad" / "data.yaml", threshold=bad)
    assert not (tmp_path / "bad").exists()


def test_coco_and_labelme_of_cholecinstanceseg_agree() -> None:
    root = shared("cholecinstanceseg-sample")
    coco_file = root / "_sample_results/generated_coco_files/sample_generated_coco.json"
    raw = json.loads(coco_file.read_text())
    coco = load_coco(coco_file)
    assert len(coco) == len(raw["annotations"])
    for a, r in zip(coco, raw["annotations"], strict=True):
        x, y, w, h = r["bbox"]
        assert a.box == (x, y, x + w, y + h)
        assert len(a.polygon) * 2 == max(len(p) for p in r["segmentation"])
    labelme = load_labelme(root / "_sample_files/VID03_t80_sparse/ann_dir")
    assert len(labelme) == sum(
        len(json.loads(p.read_text())["shapes"])
        for p in (root / "_sample_files/VID03_t80_sparse/ann_dir").glob("*.json")
    )
    # LabelMe splits an occluded instrument into several polygons sharing a group_id; COCO
    # stores one instance per group. Instances per (frame, class) therefore agree.
    groups = Counter({(a.frame_index, a.class_name, a.attributes["group_id"]) for a in labelme})
    per_frame_lm = Counter((f, c) for f, c, _ in groups)
    per_frame_coco = Counter((a.frame_index, a.class_name) for a in coco)
    assert per_frame_lm == per_frame_coco
    assert {a.video for a in labelme} == {"t80_VID03"}
    assert {a.class_id for a in coco if a.class_name == "grasper"} == {0}


def _expand_to_official(one_fps: Path, out: Path, names: tuple[str, ...] | None) -> None:
    """Write the official per-frame, tab-separated layout from a 1 fps CSV (25 frames a row)."""
    with one_fps.open() as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    lines = ["\t".join(header)]
    for r in body:
        for k in range(25 if names else 1):
            value = [names[int(r[1])]] if names else r[1:]
            lines.append("\t".join([str(int(r[0]) + k), *value]))
    out.write_text("\n".join(lines) + "\n")


def test_cholec80_phase_files_in_both_layouts(tmp_path: Path) -> None:
    src = shared("cholec80-annotations") / "video01-phase.txt"
    one_fps = load_cholec80_phases(src)
    with src.open() as f:
        rows = [(int(r["Frame"]), int(r["Phase"])) for r in csv.DictReader(f)]
    # Intervals tile the file: every row's phase is the phase of the interval covering it.
    for frame, ph in rows:
        (hit,) = [a for a in one_fps if a.frame_index <= frame < a.end_frame]
        assert hit.phase_id == ph
    assert [a.phase_id for a in one_fps] == sorted({p for _, p in rows})
    assert one_fps.annotations[-1].end_s == pytest.approx((rows[-1][0] + 25) / 25)
    official = tmp_path / "video01-phase.txt"
    _expand_to_official(src, official, OFFICIAL_PHASE_NAMES)
    per_frame = load_cholec80_phases(official)
    key = lambda s: [(a.phase_id, a.frame_index, a.end_frame, a.t_s, a.end_s) for a in s]  # noqa: E731
    assert key(per_frame) == key(one_fps)


def test_cholec80_tool_files(tmp_path: Path) -> None:
    src = shared("cholec80-annotations") / "video01-tool.txt"
    tools = load_cholec80_tools(src)
    with src.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows[::97]:
        frame = int(r["Frame"])
        present = {a.class_id for a in tools if a.frame_index <= frame < a.end_frame}
        flags = [int(v) for k, v in r.items() if k != "Frame"]
        assert present == {i for i, v in enumerate(flags) if v}
    tab = tmp_path / "video01-tool.txt"
    _expand_to_official(src, tab, None)
    assert [a.to_record() for a in load_cholec80_tools(tab)] == [a.to_record() for a in tools]


def test_every_poemnet_anvil_file_loads() -> None:
    root = shared("poemnet-phase-annotations") / "examples/multiple_annotator_annotations"
    files = sorted(root.glob("*.anvil"))
    assert files
    for f in files:
        s = load_anvil(f)
        text = f.read_text()
        assert len(s) == len(re.findall(r"<el\b", text))
        coder = re.search(r'key="coder"[^>]*>([^<]*)<', text).group(1).strip()
        assert {a.author for a in s} == {coder}
        assert all(a.end_s >= a.t_s for a in s)
        assert s.annotations[0].video == f.stem.rsplit("_", 1)[0]
    first = load_anvil(files[0])
    m = re.search(
        r'<el index="0" start="([\d.]+)" end="([\d.]+)">\s*<attribute[^>]*>(\w+)<',
        files[0].read_text(),
    )
    assert (first.annotations[0].t_s, first.annotations[0].end_s) == (float(m[1]), float(m[2]))
    assert first.annotations[0].class_name == m[3]


def test_cholect50_json(tmp_path: Path) -> None:
    # No CholecT50 label file is public without a licence request, so this one is made by hand
    # in the dataset's layout, with the real triplet vocabulary of the clips folder.
    vocab = shared("cholec80-clips") / "triplet_labels.txt"
    triplets = dict(line.split(":", 1) for line in vocab.read_text().splitlines() if ":" in line)
    data = {
        "video": 1,
        "fps": 1,
        "num_frames": 3,
        "categories": {
            "instrument": {str(i): n for i, n in enumerate(INSTRUMENT_CLASSES)},
            "verb": {"1": "retract", "2": "dissect"},
            "target": {"0": "gallbladder"},
            "triplet": triplets,
            "phase": {"0": "preparation", "1": "carlot-triangle-dissection"},
        },
        "annotations": {
            "0": [[-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0]],
            "1": [[1, 0, 1, 0.1, 0.2, 0.3, 0.4, 2, 0, 1, -1, -1, -1, -1, 0]],
            "2": [
                [1, 0, 1, 0.5, 0.5, 0.25, 0.25, 2, 0, 1, -1, -1, -1, -1, 1],
                [17, 2, 1, -1, -1, -1, -1, 2, 0, 1, -1, -1, -1, -1, 1],
            ],
        },
    }
    f = tmp_path / "VID01.json"
    f.write_text(json.dumps(data))
    s = load_cholect50(f)
    trip = s.of_kind("triplet")
    assert [(a.frame_index, a.class_name, a.attributes["triplet"]) for a in trip] == [
        (1, "grasper", triplets["1"]),
        (2, "grasper", triplets["1"]),
        (2, "hook", triplets["17"]),
    ]
    assert trip[0].box == pytest.approx((0.1 * 854, 0.2 * 480, 0.4 * 854, 0.6 * 480))
    assert trip[2].box is None
    assert [(a.phase_id, a.t_s, a.end_s) for a in s.of_kind("phase")] == [(0, 0, 2), (1, 2, 3)]
    assert sniff_format(f) == "cholect50"


def test_sniffing_picks_the_right_importer(tmp_path: Path) -> None:
    assert sniff_format(shared("cholec80-annotations") / "video02-phase.txt") == "cholec80-phase"
    assert sniff_format(shared("cholec80-annotations") / "video02-tool.txt") == "cholec80-tool"
    seg = shared("cholecinstanceseg-sample")
    assert sniff_format(seg / "_sample_files/VID03_t80_sparse/ann_dir") == "labelme"
    coco = seg / "_sample_results/generated_coco_files/sample_generated_coco.json"
    assert sniff_format(coco) == "coco"
    assert len(load_annotations(coco)) == len(load_coco(coco))
    mot = tmp_path / "gt.txt"
    mot.write_text("1,1,10,20,30,40,1,1,1.0\n")
    assert sniff_format(mot) == "mot"
    with pytest.raises(AnnotationFormatError, match="does not exist"):
        sniff_format(tmp_path / "nope.json")


# -- malformed files -------------------------------------------------------------------------


def _raises(match: str, fn, *args, **kw) -> str:
    with pytest.raises(AnnotationFormatError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert re.search(match, msg), msg
    assert isinstance(e.value, InputError)
    assert "\n" not in msg and msg.endswith(".")
    return msg


def test_malformed_yolo_label_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "f_000001.txt").write_text("0 0.5 0.5 0.1 0.1\n\n2 0.5 0.5 0.1\n")
    _raises(r"labels/f_000001.txt line 3: expected 5 values", load_yolo, tmp_path, (100, 100))
    (tmp_path / "labels" / "f_000001.txt").write_text("9 0.5 0.5 0.1 0.1\n")
    _raises(r"line 1: class 9 is not one of the 7", load_yolo, tmp_path, (100, 100))
    (tmp_path / "labels" / "f_000001.txt").write_text("0 50 50 10 10\n")
    _raises(r"line 1: coordinates must be normalised", load_yolo, tmp_path, (100, 100))
    (tmp_path / "labels" / "f_000001.txt").write_text("0 0.5 abc 0.1 0.1\n")
    _raises(r"line 1: coordinate 'abc' is not a number", load_yolo, tmp_path, (100, 100))


def test_yolo_prediction_files_carry_scores(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "f_000007.txt").write_text(
        "2 0.5 0.5 0.2 0.4 0.87\n1 0.1 0.1 0.3 0.1 0.3 0.3 0.5\n"
    )
    s = load_yolo(tmp_path, (200, 100))
    assert s.annotations[0].score == 0.87
    assert s.annotations[0].box == pytest.approx((80, 30, 120, 70))
    flat = [c for pt in s.annotations[1].polygon for c in pt]
    assert flat == pytest.approx([20, 10, 60, 10, 60, 30])
    assert s.annotations[1].score == 0.5
    assert s.annotations[0].frame_index == 7


def test_malformed_json_files_name_the_line_or_entry(tmp_path: Path) -> None:
    bad = tmp_path / "coco.json"
    bad.write_text('{\n  "images": [],\n  "annotations": [,]\n}\n')
    _raises(r"coco.json line 3: is not valid JSON", load_coco, bad)
    bad.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 9, "height": 9}],
                "categories": [{"id": 1, "name": "hook"}],
                "annotations": [{"image_id": 1, "category_id": 1}],
            }
        )
    )
    _raises(r"at annotations\[0\]: an annotation needs a bbox", load_coco, bad)
    lm = tmp_path / "frame_000001.json"
    lm.write_text(
        json.dumps({"shapes": [{"label": "hook", "points": [[1, 2]], "shape_type": "polygon"}]})
    )
    _raises(r"at shapes\[0\]: shape_type 'polygon' with 1 points", load_labelme, lm)
    ev = tmp_path / "events.json"
    ev.write_text(json.dumps({"events": [{"kind": "black", "start_s": 5, "end_s": 1}]}))
    _raises(r"at events\[0\]: event ends", load_events, ev)
    t50 = tmp_path / "VID09.json"
    t50.write_text(json.dumps({"annotations": {"0": [[1, 2, 3]]}}))
    _raises(r"at annotations\['0'\]\[0\]: an instance row has 15", load_cholect50, t50)


def test_malformed_text_files_name_the_line(tmp_path: Path) -> None:
    ph = tmp_path / "video99-phase.txt"
    ph.write_text("Frame\tPhase\n0\tPreparation\n1\tPreparation\n2\tLunch\n")
    _raises(r"video99-phase.txt line 4: 'Lunch' is not a Cholec80 phase", load_cholec80_phases, ph)
    ph.write_text("Frame,Phase\n0,0\n25,1\n10,1\n")
    _raises(r"line 4: frame 10 does not come after frame 25", load_cholec80_phases, ph)
    tool = tmp_path / "video99-tool.txt"
    tool.write_text("Frame,Grasper,Hook\n0,1,0\n25,2,0\n")
    _raises(r"line 3: tool value '2' must be 0 or 1", load_cholec80_tools, tool)
    tool.write_text("Frame,Grasper,Spoon\n0,1,0\n")
    _raises(r"line 1: column 'Spoon' is not a Cholec80 tool", load_cholec80_tools, tool)
    mot = tmp_path / "gt.txt"
    mot.write_text("1,1,10,10,5,5,1,1,1\n2,1,10,10\n")
    _raises(r"gt.txt line 2: expected at least 6", load_mot, mot)
    anvil = tmp_path / "case_01.anvil"
    anvil.write_text(
        '<?xml version="1.0"?>\n<annotation>\n<body>\n<track name="t">\n'
        '<el index="0" start="x" end="4"><attribute name="step">a</attribute></el>\n'
        "</track>\n</body>\n</annotation>\n"
    )
    _raises(r"case_01.anvil line 5: an <el> needs numeric start and end", load_anvil, anvil)
    anvil.write_text('<?xml version="1.0"?>\n<annotation>\n<body>\n</annotation>\n')
    _raises(r"line 4: is not valid XML", load_anvil, anvil)
