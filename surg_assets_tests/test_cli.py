"""The `surg` command as a user meets it: real processes, real files, a fresh SURG_HOME."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from surg_assets_tests.conftest import lake_files

SURG = str(Path(sys.executable).with_name("surg"))


def surg(
    home: Path, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    environ = {**os.environ, "SURG_HOME": str(home), "SURG_ENV": "local", **env}
    environ.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [SURG, *args], capture_output=True, text=True, env=environ, cwd=cwd, timeout=600
    )


def assert_user_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("zero", "empty (0 bytes)"),
        ("text", "not a readable video container"),
        ("truncated", "truncated"),
        ("audio_only", "no video stream"),
        ("ffv1_mkv", "codec 'ffv1' is not supported"),
        ("broken", "cannot be decoded"),
    ],
)
def test_ingest_refuses_bad_files(tmp_path: Path, videos: dict, name: str, fragment: str) -> None:
    home = tmp_path / "home"
    proc = surg(home, "ingest", str(videos[name]))
    assert_user_error(proc, fragment)
    assert videos[name].name not in proc.stderr
    assert lake_files(home, "") == []


def test_ingest_refuses_videos_beyond_the_limits(tmp_path: Path, videos: dict) -> None:
    home = tmp_path / "home"
    assert_user_error(
        surg(home, "ingest", str(videos["good"]), SURG_MAX_WIDTH="100"), "exceeds the limit"
    )
    assert_user_error(
        surg(home, "ingest", str(videos["good"]), SURG_MAX_DURATION_S="2"), "SURG_MAX_DURATION_S"
    )
    assert_user_error(
        surg(home, "ingest", str(videos["good"]), SURG_MAX_DURATION_S="lots"),
        "SURG_MAX_DURATION_S='lots' is not a number",
    )
    assert lake_files(home, "") == []


def test_ingest_refuses_a_missing_path(tmp_path: Path) -> None:
    proc = surg(tmp_path / "home", "ingest", str(tmp_path / "Jane Doe.mp4"))
    assert_user_error(proc, "does not exist")
    assert "Jane" not in proc.stderr


def test_usage_errors_are_one_line_too(tmp_path: Path) -> None:
    assert_user_error(surg(tmp_path / "home", "ingest"), "Missing argument")
    assert_user_error(surg(tmp_path / "home", "ingest", "x", SURG_ENV="cloud"), "SURG_ENV")


@pytest.mark.parametrize(
    "relative",
    [
        "a/b/../../Doe-Jane.mp4",
        "Müller Jörg 1970-01-01 Cholezystektomie.mp4",
        ("Patient " * 30).strip() + ".mp4",
        "-x; rm -rf $HOME .mp4",
    ],
    ids=["dot-dot", "unicode", "very-long", "shell"],
)
def test_hostile_names_never_reach_keys_logs_or_outputs(
    tmp_path: Path, videos: dict, relative: str
) -> None:
    work = tmp_path / "work"
    (work / "a" / "b").mkdir(parents=True)
    target = work / relative
    shutil.copyfile(videos["good"], target.resolve())
    home = tmp_path / "home"
    proc = surg(home, "ingest", "--", relative, cwd=work)
    assert proc.returncode == 0, proc.stderr
    case_id = proc.stdout.strip().splitlines()[-1]
    assert lake_files(home, "raw-videos/") == [f"raw-videos/{case_id}/source.mp4"]
    stem = Path(relative).stem
    for text in (proc.stdout, proc.stderr):
        assert stem not in text
    for path in home.rglob("*"):
        assert stem not in path.name
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert stem.encode() not in path.read_bytes()


def test_same_bytes_twice_are_the_same_case(tmp_path: Path, videos: dict) -> None:
    home = tmp_path / "home"
    copy = tmp_path / "copy.mp4"
    shutil.copyfile(videos["good"], copy)
    first = surg(home, "ingest", str(videos["good"]))
    second = surg(home, "ingest", str(copy))
    assert first.returncode == second.returncode == 0
    case_id = first.stdout.split()[-1]
    assert second.stdout.split()[-1] == case_id
    assert "already ingested as case " + case_id in second.stderr
    listing = surg(home, "cases", "list")
    assert listing.stdout.count(case_id) == 1 and "queued" in listing.stdout


def test_ingest_several_files_prints_each_case(tmp_path: Path, videos: dict) -> None:
    home = tmp_path / "home"
    proc = surg(home, "ingest", str(videos["good"]), str(videos["mpeg4_avi"]))
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.split()
    assert len(set(ids)) == 2
    assert sorted(lake_files(home, "raw-videos/")) == sorted(
        [f"raw-videos/{ids[0]}/source.mp4", f"raw-videos/{ids[1]}/source.avi"]
    )


def _analyze_under_a_patient_name(
    tmp_path: Path, source: Path, name: str
) -> tuple[Path, Path, subprocess.CompletedProcess, dict]:
    """`surg analyze` on a copy of ``source`` named ``name``: (home, out, process, case.json)."""
    home = tmp_path / "home"
    named = tmp_path / name
    shutil.copyfile(source, named)
    out = tmp_path / "out"
    proc = surg(home, "analyze", str(named), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home, out, proc, json.loads((out / "case.json").read_text())


def test_analyze_a_real_clip_end_to_end(tmp_path: Path, real_clip: Path) -> None:
    home, out, proc, summary = _analyze_under_a_patient_name(
        tmp_path, real_clip, "Patient Jane Doe 1970.mp4"
    )
    case_id = proc.stdout.strip().splitlines()[-1]
    assert summary["case_id"] == case_id and summary["status"] == "ready"
    assert summary["video"] == {"duration_s": 32.0, "width": 854, "height": 480, "fps": 25.0}
    assert summary["processed_video"] == {"width": 854, "height": 480, "fps": 25.0}
    assert lake_files(home, "processed-videos/") == [
        f"processed-videos/{case_id}/deidentified.mp4",
        f"processed-videos/{case_id}/video.mp4",
    ]
    for table in ("detections", "tracks", "phases", "events"):
        assert f"{table}.parquet" in summary["outputs"]
        assert (out / f"{table}.parquet").stat().st_size > 0
    assert "Jane" not in proc.stdout + proc.stderr
    assert not [p for p in home.rglob("*") if "Jane" in p.name]
    listing = surg(home, "cases", "list")
    assert case_id in listing.stdout and "ready" in listing.stdout


def test_analyze_a_1080p_robotic_clip_from_a_second_source(tmp_path: Path) -> None:
    """EndoVis 2017 (da Vinci, porcine): MPEG-4 Part 2, 1920x1080 letterboxed, 10 fps.

    Another hospital's recorder, not Cholec80's: the case is normalised to 480p, the boxes
    lie in the normalised pixels that case.json names, and in-body frames stay in-body.
    """
    import pyarrow.parquet as pq

    from surg_assets_tests.conftest import SHARED_DATA, skip_or_fail

    source = SHARED_DATA / "endovis2017-sample" / "short_source.mp4"
    if not source.is_file():
        skip_or_fail(f"the EndoVis 2017 sample clip is not under {source.parent}")
    home, out, proc, summary = _analyze_under_a_patient_name(
        tmp_path, source, "Robotic case Doe 1970.mp4"
    )
    assert summary["status"] == "ready"
    assert summary["video"] == {"duration_s": 2.0, "width": 1920, "height": 1080, "fps": 10.0}
    assert summary["processed_video"] == {"width": 854, "height": 480, "fps": 10.0}
    detections = pq.read_table(out / "detections.parquet").to_pandas()
    # 5 fps sampling of a 10 fps source: every other frame, ten samples in two seconds.
    assert len(detections) > 0
    assert set(detections["frame_index"]) <= set(range(0, 20, 2))
    assert detections["x2"].max() <= 854 and detections["y2"].max() <= 480
    events = pq.read_table(out / "events.parquet").to_pandas()
    assert "out_of_body" not in set(events["kind"])
    phases = pq.read_table(out / "phases.parquet").to_pandas()
    assert phases["start_s"].min() == 0 and phases["end_s"].max() == pytest.approx(2.0, abs=0.5)
    assert "Doe" not in proc.stdout + proc.stderr
    assert not [p for p in home.rglob("*") if "Doe" in p.name]


def test_analyze_refuses_a_bad_file_without_creating_anything(tmp_path: Path, videos: dict) -> None:
    home = tmp_path / "home"
    proc = surg(home, "analyze", str(videos["text"]), "--out", str(tmp_path / "out"))
    assert_user_error(proc, "not a readable video container")
    assert lake_files(home, "") == []
    assert not (tmp_path / "out").exists()


def test_models_path_bootstraps_the_shipped_defaults(tmp_path: Path) -> None:
    from surg_assets.models import default_weights_file

    if not default_weights_file("instrument_detector").exists():
        pytest.skip("no default weights in ml_models/default_weights (run `make models`)")
    home = tmp_path / "home"
    # A wrong name is named, with the right ones, and registers nothing.
    assert_user_error(
        surg(home, "models", "path", "detector"),
        "no model is called 'detector'; the models are instrument_detector, phase_model",
    )
    assert "bootstrap" not in surg(home, "models", "list").stdout
    proc = surg(home, "models", "path", "instrument_detector")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.is_relative_to(home)
    assert path.read_bytes() == default_weights_file("instrument_detector").read_bytes()
    listing = surg(home, "models", "list")
    assert "instrument_detector" in listing.stdout and "bootstrap" in listing.stdout
    assert_user_error(
        surg(home, "models", "approve", "instrument_detector", "v7", "--by", "ann"),
        "has no version v7",
    )


def _real_boxes(tmp_path: Path, images: int = 30) -> Path:
    """A small copy of the real Cholec80 box dataset: training commands run in seconds on it."""
    from surg_assets_tests.conftest import SHARED_DATA, skip_or_fail

    source = SHARED_DATA / "cholec80-tools-yolo"
    if not source.is_dir():
        skip_or_fail(f"real Cholec80 boxes not found under {source}")
    data = tmp_path / "boxes"
    for image in sorted((source / "images" / "train").glob("*.jpg"))[:images]:
        label = next(source.glob(f"labels/*/{image.stem}.txt"), None)
        if label is None:
            continue
        for sub, f in (("images", image), ("labels", label)):
            (data / sub / "train").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, data / sub / "train" / f.name)
    return data


def test_train_detector_refuses_a_dataset_of_other_instruments(tmp_path: Path) -> None:
    """Class ids are Cholec80's everywhere downstream: another dataset's classes are named in
    one error, before any training, and nothing is registered."""
    data = tmp_path / "endovis"
    (data / "images" / "train").mkdir(parents=True)
    (data / "data.yaml").write_text(
        "train: images/train\nval: images/train\nnames:\n  0: Prograsp Forceps\n  1: hook\n"
    )
    home = tmp_path / "home"
    for path in (data, data / "data.yaml"):  # a detect folder, or a data.yaml as it is
        proc = surg(home, "train", "detector", "--data", str(path), "--epochs", "1")
        assert_user_error(proc, "names classes that are not Cholec80 instruments")
        assert "Prograsp Forceps" in proc.stderr
    assert "v1" not in surg(home, "models", "list", "instrument_detector").stdout


def test_train_detector_on_real_boxes_is_judged_against_the_approved_one_on_the_same_split(
    tmp_path: Path,
) -> None:
    from surg_assets.models import default_weights_file

    if not default_weights_file("instrument_detector").exists():
        pytest.skip("no default weights in ml_models/default_weights (run `make models`)")
    data = _real_boxes(tmp_path)
    home = tmp_path / "home"
    proc = surg(
        home, "train", "detector", "--data", str(data), "--epochs", "1", "--imgsz", "160",
        "--model", str(default_weights_file("instrument_detector")),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "training and" in proc.stderr and "validation images" in proc.stderr
    # The shipped default (v1, whose stored mAP50 is on synthetic frames) is scored again on
    # this split, and the decision follows from the two figures on the same data.
    said = re.search(r"v1 on the same validation split: box mAP50 ([\d.]+); the new weights: "
                     r"([\d.]+)", proc.stderr)  # fmt: skip
    assert said, proc.stderr
    before, after = float(said[1]), float(said[2])
    decision = next(ln for ln in proc.stderr.splitlines() if "v2 registered:" in ln)
    if after >= before:
        assert "registered: Pending" in decision
    else:
        assert "registered: Rejected" in decision and "on the same data" in decision
    assert proc.stdout.strip().splitlines()[-1] == "v2"


def test_train_detector_without_any_approved_detector_registers_without_a_comparison(
    tmp_path: Path, surg_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import surg_assets.models as models
    from surg_assets.cli import app

    data = _real_boxes(tmp_path, images=12)
    monkeypatch.setattr(models, "DEFAULT_WEIGHTS", tmp_path / "no-weights")
    args = ["train", "detector", "--data", str(data), "--epochs", "1", "--imgsz", "96"]
    result = CliRunner().invoke(app, [*args, "--seed", "7", "--repeat-rare", "0.5"])
    assert result.exit_code == 0, result.output
    assert "on the same validation split" not in result.output
    assert "instrument_detector v1 registered: Pending" in result.output
    # The model card says how the weights were made, the seed included, so a run can be
    # repeated or its seed varied.
    from resources.settings import load_settings
    from surg_assets.settings import build_resources

    store = build_resources(load_settings(), deferred=False)["blob_store"]
    card = json.loads(store.get_bytes("models/instrument_detector/v1/model_card.json"))
    assert (card["seed"], card["epochs"], card["imgsz"]) == (7, 1, 96)
    # Images of rare instruments were repeated (grasper, in most images, was not).
    said = re.search(r"repeating rare instruments: (\d+) training entries from (\d+) images \(",
                     result.output)  # fmt: skip
    assert said and int(said[1]) > int(said[2]), result.output
    repeated = card["repeat_rare"]
    assert (repeated["threshold"], repeated["entries"]) == (0.5, int(said[1]))
    assert repeated["class_repeats"]["grasper"] == 1.0
    # What it predicts on every validation image, for the drift sensor once it is Approved.
    reference = card["reference_statistics"]
    split = re.search(r"(\d+) training and (\d+) validation images", result.output)
    said = re.search(r"drift reference: (\d+) detections on (\d+) validation images", result.output)
    assert split and said, result.output
    assert said[2] == split[2] != "0" and int(said[1]) == reference["detections"]
    assert sum(reference["class_counts"]) == reference["detections"]
    assert sum(reference["confidence_histogram"]) == reference["detections"]
    # A repeat threshold that is not a fraction: one error before anything is read or trained.
    assert_user_error(
        surg(surg_home, *args, "--repeat-rare", "0"), "the repeat threshold 0 is not a fraction"
    )
    assert "v2" not in surg(surg_home, "models", "list").stdout


def test_train_detector_also_trains_on_a_second_dataset_and_scores_the_weights_on_both(
    tmp_path: Path, surg_home: Path, synthetic_case: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import surg_assets.models as models
    from ml_models.training import detector_dataset
    from surg_assets.cli import app

    data = _real_boxes(tmp_path, images=12)
    synth = detector_dataset([synthetic_case, synthetic_case], tmp_path / "synth", val_cases=1)
    frames = len(list((synth.parent / "images" / "train").iterdir()))
    monkeypatch.setattr(models, "DEFAULT_WEIGHTS", tmp_path / "no-weights")
    base = ["train", "detector", "--data", str(data), "--epochs", "1", "--imgsz", "96"]
    result = CliRunner().invoke(app, [*base, "--also-train", str(synth)])
    assert result.exit_code == 0, result.output
    said = re.search(r"training on (\d+) images of --data and (\d+) of --also-train", result.output)
    assert said and int(said[2]) == frames > 0, result.output
    assert 0 < int(said[1]) <= 12
    assert re.search(
        r"on the --also-train data's validation split: box mAP50 [\d.]+", result.output
    )
    assert "instrument_detector v1 registered: Pending" in result.output

    # Asked for the defaults' synthetic corpus where none was made, or a file that is not
    # there: one clear error each, and nothing registered.
    for value, message in (
        ("synthetic", "--also-train synthetic needs the synthetic corpus"),
        (str(tmp_path / "nope.yaml"), "--also-train: nope.yaml does not exist"),
    ):
        assert_user_error(surg(surg_home, *base, "--also-train", value), message)
    listing = surg(surg_home, "models", "list")
    assert "v1" in listing.stdout and "v2" not in listing.stdout


def test_train_phase_takes_its_phases_from_the_labels_of_another_procedure(
    tmp_path: Path, surg_home: Path, synthetic_case: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import surg_assets.models as models
    from ml_models.phases import PhaseModel
    from ml_models.training import sample_cases
    from surg_assets.cli import app
    from surg_assets.cli_models import _registry

    # The lab's video labelled with three POEM steps (POEMNet's names), in a Cholec80-style
    # phase file and without the lab's summary.json: the frame numbers count the video's own
    # frames (25 fps).
    steps = ["submuc_inject", "tunnel", "myotomy"]
    case = tmp_path / "poem" / "case-1"
    case.mkdir(parents=True)
    shutil.copy(synthetic_case / "video.mp4", case / "video.mp4")
    rows = [f"{f}\t{steps[min(2, f // 200)]}" for f in range(600)]
    (case / "phase.txt").write_text("Frame\tPhase\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(models, "DEFAULT_WEIGHTS", tmp_path / "no-weights")
    args = ["train", "phase", "--data", str(case.parent), "--temporal-epochs", "3"]
    result = CliRunner().invoke(app, [*args, "--approve-as", "tester"])
    assert result.exit_code == 0, result.output
    assert "1 labelled cases; phases: submuc_inject, tunnel, myotomy" in result.output
    _, weights = models.approved_model(_registry(), "phase_model")
    model = PhaseModel.load(weights)
    assert model.phases == steps  # its vocabulary is the labels', in the order they came
    (frames,) = sample_cases([case])
    assert model.predict_images(frames.images).shape == (len(frames.times), 3)

    # A case folder without its video, and a phase file with a row that names no phase:
    # one clear error each, and nothing registered.
    (case.parent / "case-2").mkdir()
    (case.parent / "case-2" / "phase.txt").write_text("Frame\tPhase\n0\ttunnel\n")
    assert_user_error(surg(surg_home, *args), "case-2 in --data has a phase.txt but no video.mp4")
    shutil.rmtree(case.parent / "case-2")
    (case / "phase.txt").write_text("Frame\tPhase\n0\ttunnel\n1\t\n")
    proc = surg(surg_home, *args)
    assert_user_error(proc, "a row has no phase")
    assert "phase.txt" in proc.stderr and "line 3" in proc.stderr
    listing = surg(surg_home, "models", "list", "phase_model")
    assert "v1" in listing.stdout and "v2" not in listing.stdout


def test_train_phase_scores_held_out_cases_and_the_approved_model_on_them(
    tmp_path: Path, surg_home: Path, synthetic_case: Path
) -> None:
    from typer.testing import CliRunner

    from resources.catalog import ModelVersion
    from resources.settings import load_settings
    from surg_assets.cli import app
    from surg_assets.cli_models import _registry
    from surg_assets.settings import build_resources

    # Four copies of the lab's video: three labelled with POEM's steps in their order, one in
    # reverse. A model trained on the three reads the reversed one in the usual order, so held
    # out, it scores far below its training accuracy: the score is not a training figure.
    steps = ["submuc_inject", "tunnel", "myotomy"]
    data = tmp_path / "poem"
    for name, order in (("a", steps), ("b", steps), ("c", steps), ("r", steps[::-1])):
        case = data / f"case-{name}"
        case.mkdir(parents=True)
        shutil.copy(synthetic_case / "video.mp4", case / "video.mp4")
        rows = [f"{f}\t{order[min(2, f // 200)]}" for f in range(600)]
        (case / "phase.txt").write_text("Frame\tPhase\n" + "\n".join(rows) + "\n")
    args = ["train", "phase", "--data", str(data), "--temporal-epochs", "30"]
    args += ["--min-segment-s", "2"]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--val-case", "case-r", "--approve-as", "tester"])
    assert first.exit_code == 0, first.output
    assert "training on 3 cases, scoring on 1 held out" in first.output
    # The Approved default knows Cholec80's phases: nothing to compare a POEM model with.
    assert "knows other phases (Preparation, " in first.output and "not compared" in first.output

    store = build_resources(load_settings(), deferred=False)["blob_store"]

    def newest() -> tuple[ModelVersion, dict]:
        row = _registry().versions("phase_model")[0]  # newest first
        return row, json.loads(store.get_bytes(f"{row.uri}/model_card.json"))

    row, card = newest()
    metrics = row.metrics
    assert metrics["val_videos"] == 1 and metrics["val_seconds"] == 24
    assert metrics["train_frame_accuracy"] > 0.9, metrics
    assert metrics["val_frame_accuracy"] < 0.5, metrics
    assert card["held_out_cases"] == ["case-r"] and card["seed"] == 0
    assert row.status == "Approved"

    # The next candidate is judged against that model scored on the new held-out case.
    second = runner.invoke(app, [*args, "--val-case", "case-a", "--seed", "3"])
    assert second.exit_code == 0, second.output
    said = re.search(rf"{row.version} on the same held-out cases: frame accuracy ([\d.]+)",
                     second.output)  # fmt: skip
    assert said, second.output
    candidate, card = newest()
    assert card["seed"] == 3 and card["held_out_cases"] == ["case-a"]
    before, after = float(said[1]), candidate.metrics["val_frame_accuracy"]
    if round(after, 3) < float(said[1]):
        assert candidate.status == "Rejected" and "regresses" in candidate.reason
    else:
        assert candidate.status == "Pending", (before, after, candidate.reason)

    # Holding out a case that is not there, or every case: one clear error each, and nothing
    # registered.
    count = len(_registry().versions("phase_model"))
    assert_user_error(
        surg(surg_home, *args, "--val-case", "case-z"), "--val-case case-z is not a labelled"
    )
    assert_user_error(surg(surg_home, *args, "--val-cases", "4"), "leaves none of the 4")
    assert_user_error(surg(surg_home, *args, "--val-cases", "-1"), "'--val-cases'")
    assert len(_registry().versions("phase_model")) == count


def test_train_out_of_body_scores_held_out_cases_and_real_frames_it_never_saw(
    tmp_path: Path, surg_home: Path, synthetic_case: Path
) -> None:
    from typer.testing import CliRunner

    from ml_models.training import split_real_frames
    from surg_assets.cli import app
    from surg_assets.cli_models import _registry
    from surg_assets_tests.conftest import SHARED_DATA, skip_or_fail

    real = SHARED_DATA / "cholec80-tools-yolo"
    if not real.is_dir():
        skip_or_fail(f"real in-body frames not found under {real}")
    frames = sorted(p for p in real.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    data = tmp_path / "cases"
    for i in range(3):
        shutil.copytree(synthetic_case, data / f"case-{i}")
    args = ["train", "out-of-body", "--data", str(data), "--real-in-body", str(real)]
    result = CliRunner().invoke(app, [*args, "--val-cases", "1", "--seed", "2"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # the console wraps long lines
    trained, held = split_real_frames(frames, seed=2)
    assert len(trained) == 300 and len(held) == min(300, len(frames) - 300) > 0
    assert not set(trained) & set(held)
    said = re.search(
        r"held out: accuracy ([\d.]+) on (\d+) frames of held-out cases; ([\d.]+) of (\d+) "
        r"real in-body frames flagged",
        output,
    )
    assert said and int(said[4]) == len(held), output
    row = _registry().versions("out_of_body_model")[0]
    assert row.metrics["val_frames"] == int(said[2]) > 0
    assert row.metrics["val_real_frames"] == len(held)
    # The Approved default, scored on the same frames, is what the new model may not fall below.
    before = re.search(r"v1 on the same frames: accuracy ([\d.]+)", output)
    assert before, output
    after = row.metrics["val_accuracy"]
    if after < float(before[1]) - 5e-4:  # the printed figure is rounded to 3 places
        assert row.status == "Rejected" and "val_accuracy regresses" in row.reason
    elif after > float(before[1]) + 5e-4:
        assert row.status == "Pending", row.reason


def test_train_out_of_body_adds_real_in_body_frames_and_refuses_a_folder_without_any(
    tmp_path: Path, synthetic_case: Path
) -> None:
    frames = tmp_path / "real"
    frames.mkdir()
    from surg_assets_tests.conftest import SHARED_DATA

    source = sorted(SHARED_DATA.glob("cholecinstanceseg-sample/**/img_dir/*.jpg"))
    if not source:  # the wiring is what is tested here: without real frames, draw five
        import cv2
        import numpy as np

        for i in range(5):
            cv2.imwrite(str(frames / f"f{i}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    for f in source[:5]:
        shutil.copy(f, frames / f.name)
    home = tmp_path / "home"
    plain = surg(home, "train", "out-of-body", "--data", str(synthetic_case))
    assert plain.returncode == 0, plain.stderr
    real = surg(
        home, "train", "out-of-body", "--data", str(synthetic_case), "--real-in-body", str(frames)
    )
    assert real.returncode == 0, real.stderr
    assert "5 of 5 real in-body frames trained on" in real.stderr

    def frames_used(proc: subprocess.CompletedProcess) -> float:
        return float(re.search(r'"frames": ([\d.]+)', proc.stderr.replace("\n", ""))[1])

    assert frames_used(real) == frames_used(plain) + 5  # the real frames were trained on
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames here")
    assert_user_error(
        surg(home, "train", "out-of-body", "--data", str(synthetic_case), "--real-in-body",
             str(empty)),
        "holds no JPEG or PNG frame",
    )  # fmt: skip
    (frames / "broken.jpg").write_bytes(b"not an image")
    assert_user_error(
        surg(home, "train", "out-of-body", "--data", str(synthetic_case), "--real-in-body",
             str(frames)),
        "broken.jpg among the real in-body frames cannot be read as an image",
    )  # fmt: skip
    assert_user_error(
        surg(tmp_path / "fresh", "train", "out-of-body"), "run `surg models train-defaults`"
    )


def test_a_failed_registration_keeps_the_trained_weights_and_registers_them_later(
    tmp_path: Path, synthetic_case: Path
) -> None:
    """Training can take hours; a catalog that fails after it (here: it refuses writes) must
    not delete the weights with the run's temporary folder."""
    home = tmp_path / "home"
    # The catalog and the shipped defaults in place, then the database opened read-only: the
    # command's check before training reads, and the registration after it writes.
    assert surg(home, "models", "path", "out_of_body_model").returncode == 0
    read_only = {"SURG_CATALOG_URL": f"sqlite:///file:{home / 'catalog.db'}?mode=ro&uri=true"}
    failed = surg(home, "train", "out-of-body", "--data", str(synthetic_case), **read_only)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    error = [ln for ln in failed.stderr.splitlines() if ln.startswith("error: ")]
    assert len(error) == 1 and "the database failed: " in error[0], failed.stderr
    assert "readonly database" in error[0]
    said = re.search(r"the trained weights are kept in (\S+)\.", failed.stderr)
    assert said, failed.stderr
    kept = Path(said[1])
    assert kept.is_file() and kept.parent.parent == home / "training-kept"
    assert oct(kept.parent.stat().st_mode & 0o777) == "0o700"  # weights learned from case data
    assert f"surg models register-kept {kept.parent}" in failed.stderr
    saved = json.loads((kept.parent / "registration.json").read_text())
    assert saved["name"] == "out_of_body_model" and saved["primary"] == "train_accuracy"
    assert 0.0 <= saved["metrics"]["train_accuracy"] <= 1.0
    weights = kept.read_bytes()
    pristine = tmp_path / "pristine"
    shutil.copytree(kept.parent, pristine)
    _kept_folders_are_checked(home, pristine)

    # With the database writable again, the kept run registers without training again, once.
    registered = surg(home, "models", "register-kept", str(kept.parent), "--approve-as", "ana")
    assert registered.returncode == 0, registered.stderr
    version = registered.stdout.strip().splitlines()[-1]
    assert f"out_of_body_model {version} registered: Pending" in registered.stderr
    assert f"out_of_body_model {version} approved by ana" in registered.stderr
    assert not kept.parent.exists()
    path = surg(home, "models", "path", "out_of_body_model")
    assert Path(path.stdout.strip()).read_bytes() == weights
    assert_user_error(
        surg(home, "models", "register-kept", str(kept.parent)), "is not a folder a training"
    )
    audit = surg(home, "audit", "export", "--since", "2000-01-01T00:00:00")
    assert any(
        '"model.approve"' in ln and f'"{version}"' in ln and '"ana"' in ln
        for ln in audit.stdout.splitlines()
    ), audit.stdout  # --approve-as is audited like `surg models approve`


def _kept_folders_are_checked(home: Path, pristine: Path) -> None:
    """register-kept registers only an untouched folder a run kept, and deletes nothing else."""
    root = home / "training-kept"

    def variant(name: str, change: Any = None) -> Path:
        folder = root / name
        shutil.copytree(pristine, folder)
        if change is not None:
            change(folder)
        return folder

    outside = pristine.parent / "elsewhere"
    shutil.copytree(pristine, outside)
    (outside / "notes.txt").write_text("mine")
    assert_user_error(surg(home, "models", "register-kept", str(outside)), "not a folder a")
    assert (outside / "notes.txt").is_file() and (outside / "weights.pt").is_file()
    link = root / "link"
    link.symlink_to(outside)
    assert_user_error(surg(home, "models", "register-kept", str(link)), "not a folder a")

    def edit(**changes: Any) -> Any:
        def apply(folder: Path) -> None:
            saved = json.loads((folder / "registration.json").read_text())
            (folder / "registration.json").write_text(json.dumps({**saved, **changes}))

        return apply

    for name, change, fragment in (
        ("swapped", lambda f: (f / "weights.pt").write_bytes(b"other"), "not the weights"),
        ("types", edit(metrics="abc"), "is not one a training run wrote"),
        ("gate", edit(primary="made_up"), "is not one a training run wrote"),
        ("baseline", edit(baseline=[1]), "is not one a training run wrote"),
        # Compared with v7 when it trained; v1 is Approved now: the comparison is stale.
        ("stale", edit(baseline={"train_accuracy": 0.5}, baseline_version="v7"),
         "out_of_body_model v1 was Approved while this model trained, and it was compared with v7"),
    ):  # fmt: skip
        folder = variant(name, change)
        assert_user_error(surg(home, "models", "register-kept", str(folder)), fragment)
        assert (folder / "weights.pt").is_file()  # a refusal deletes nothing
        shutil.rmtree(folder)
    link.unlink()


def test_training_fails_before_it_starts_when_the_catalog_is_down(
    tmp_path: Path, synthetic_case: Path
) -> None:
    """The catalog is needed after training; a database that is down is found before it."""
    from surg_assets_tests.conftest import UNREACHABLE_CATALOG_URL

    home = tmp_path / "home"
    down = {"SURG_CATALOG_URL": UNREACHABLE_CATALOG_URL}
    failed = surg(home, "train", "out-of-body", "--data", str(synthetic_case), **down)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("error: the database failed: ") and "refused" in failed.stderr
    assert "kept" not in failed.stderr and not (home / "training-kept").exists()
    # The password of the URL never reaches the message, even one the driver misreads.
    odd = {"SURG_CATALOG_URL": "postgresql+psycopg://surg:s3cr@tpw@127.0.0.1:9/x"}
    listed = surg(home, "models", "list", **odd)
    assert listed.returncode == 1 and "tpw" not in listed.stderr and "s3cr" not in listed.stderr


def test_weights_kept_before_scoring_or_on_sigterm_are_not_registrable(
    surg_home: Path, capsys: pytest.CaptureFixture
) -> None:
    """A failure (or a scheduler's SIGTERM) after training and before scoring keeps the
    weights too, says they cannot be registered as they are, and leaves nothing half-kept."""
    import signal

    from surg_assets.cli_models import _keep_on_failure
    from surg_assets.models import default_weights_file

    trained = surg_home / "trained.pt"
    surg_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(default_weights_file("instrument_detector"), trained)
    with pytest.raises(RuntimeError), _keep_on_failure("instrument_detector") as run:
        run.weights = trained
        raise RuntimeError("scoring failed")
    said = capsys.readouterr().err
    assert "not scored" in said and "surg train detector --model" in said, said
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped, _keep_on_failure("phase_model") as run:
        run.weights = trained
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 143
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    folders = sorted((surg_home / "training-kept").iterdir())
    assert [f.name.split("-")[0] for f in folders] == ["instrument_detector", "phase_model"]
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["weights.pt"]  # no .part left
        assert (folder / "weights.pt").read_bytes() == trained.read_bytes()
        refused = surg(surg_home, "models", "register-kept", str(folder))
        assert_user_error(refused, "were kept before they were scored")
        assert (folder / "weights.pt").is_file()


def test_annotations_import_into_the_catalog(tmp_path: Path) -> None:
    from resources.catalog import Catalog
    from surg_assets_tests.conftest import SHARED_DATA

    phase_file = SHARED_DATA / "cholec80-annotations" / "video01-phase.txt"
    if not phase_file.exists():
        pytest.skip("Cholec80 annotations absent from ../shared/data")
    home = tmp_path / "home"
    proc = surg(home, "annotations", "import", str(phase_file), "--dataset", "cholec80")
    assert proc.returncode == 0, proc.stderr
    rows = Catalog(url=f"sqlite:///{home / 'catalog.db'}").annotations("cholec80")
    assert [r.payload["class_name"] for r in rows][:2] == [
        "Preparation",
        "Calot triangle dissection",
    ]
    assert all(r.kind == "phase" and r.source == "import" for r in rows)
    bad = tmp_path / "bad-phase.txt"
    bad.write_text("Frame\tPhase\n0\tNotAPhase\n")
    failed = surg(home, "annotations", "import", str(bad), "--dataset", "x", "--format",
                  "cholec80-phase")  # fmt: skip
    assert_user_error(failed, "line 2")


def test_a_model_compared_with_a_version_since_replaced_is_not_registered(
    surg_home: Path,
) -> None:
    """Training takes hours; the version it was compared with may be replaced meanwhile. The
    comparison is then stale: nothing is registered, and the weights stay kept (not lost)."""
    from ml_models.errors import InputError
    from surg_assets.cli_models import TrainingRun, _register, _registry
    from surg_assets.models import approved_model, default_weights_file

    registry = _registry()
    version, weights = approved_model(registry, "out_of_body_model")  # the shipped v1
    run = TrainingRun("out_of_body_model")
    run.approved_version = "v0"  # compared with an earlier one than is Approved now
    run.weights = weights
    before = [v.version for v in registry.versions("out_of_body_model")]
    with pytest.raises(InputError, match=f"{version.version} was Approved while this model"):
        _register(
            "out_of_body_model", weights, {}, {"val_accuracy": 1.0}, None,
            {"val_accuracy": 0.5}, "val_accuracy", run,
        )  # fmt: skip
    assert [v.version for v in registry.versions("out_of_body_model")] == before
    assert run.weights == weights and run.registration["baseline_version"] == "v0"
    # The same comparison against the version Approved now registers.
    run.approved_version = version.version
    _register(
        "out_of_body_model", Path(default_weights_file("out_of_body_model")), {},
        {"val_accuracy": 1.0}, None, {"val_accuracy": 0.5}, "val_accuracy", run,
    )  # fmt: skip
    assert len(registry.versions("out_of_body_model")) == len(before) + 1
