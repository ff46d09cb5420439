"""``surg synth`` and ``surg eval``, through the real ``surg`` application."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ml_models.errors import InputError
from surg_assets.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-synth")
    result = runner.invoke(
        app, ["synth", "--out", str(out), "--minutes", "0.2", "--seed", "3", "--size", "320x240"]
    )
    assert result.exit_code == 0, result.output
    assert "frames" in result.output and "real time" in result.output
    return out


def test_synth_writes_a_video_and_labels(synth_dir: Path) -> None:
    summary = json.loads((synth_dir / "summary.json").read_text())
    assert (summary["width"], summary["height"], summary["n_frames"]) == (320, 240, 300)
    for name in ("video.mp4", "phase.txt", "tool.txt", "events.json", "mot/gt/gt.txt"):
        assert (synth_dir / name).stat().st_size > 0, name
    assert len(list((synth_dir / "yolo" / "labels").glob("*.txt"))) == 12


def test_ground_truth_scored_against_itself_is_perfect(synth_dir: Path, tmp_path: Path) -> None:
    gt = synth_dir / "mot" / "gt" / "gt.txt"
    result = runner.invoke(
        app,
        [
            "eval",
            "tracking",
            "--gt",
            str(gt),
            "--pred",
            str(gt),
            "--json",
            str(tmp_path / "t.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "t.json").read_text())
    assert scores["hota"] == pytest.approx(1.0) and scores["mota"] == 1.0 and scores["idf1"] == 1.0
    ev = synth_dir / "events.json"
    result = runner.invoke(
        app,
        ["eval", "events", "--gt", str(ev), "--pred", str(ev), "--json", str(tmp_path / "e.json")],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["recall"] == 1.0
    assert "out_of_body" in result.output


def test_eval_phases_prints_and_writes_strict_and_relaxed(tmp_path: Path) -> None:
    # 1 fps Cholec80 CSVs (rows every 25 frames): the prediction enters phase 1 one second early.
    gt = tmp_path / "gt-phase.txt"
    pred = tmp_path / "pred-phase.txt"
    gt.write_text("Frame,Phase\n" + "".join(f"{25 * i},{0 if i < 4 else 1}\n" for i in range(8)))
    pred.write_text("Frame,Phase\n" + "".join(f"{25 * i},{0 if i < 3 else 1}\n" for i in range(8)))
    out = tmp_path / "scores" / "phases.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "phases",
            "--gt",
            str(gt),
            "--pred",
            str(pred),
            "--window",
            "2",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Preparation" in result.output and "relaxed boundary (2 s window)" in result.output
    scores = json.loads(out.read_text())
    assert scores["accuracy"] == pytest.approx(7 / 8)  # hand count: 7 of 8 seconds right
    assert scores["relaxed"]["accuracy"] == pytest.approx(1.0)  # the early second is forgiven
    assert scores["recall"][0] == pytest.approx(0.75) and scores["recall"][2] is None


def test_eval_detection_on_yolo_predictions(tmp_path: Path) -> None:
    # Ground truth: one box; prediction: the same box with a confidence (IoU 1 -> AP 1), and a
    # lower-scored false box in another image of the set.
    for name, lines in (("gt", ["2 0.5 0.5 0.2 0.2"]), ("pred", ["2 0.5 0.5 0.2 0.2 0.9"])):
        (tmp_path / name / "labels").mkdir(parents=True)
        (tmp_path / name / "labels" / "f_000001.txt").write_text("\n".join(lines) + "\n")
        (tmp_path / name / "labels" / "f_000002.txt").write_text("")
    (tmp_path / "pred" / "labels" / "f_000002.txt").write_text("2 0.2 0.2 0.1 0.1 0.3\n")
    for name in ("gt", "pred"):
        (tmp_path / name / "images").mkdir()
        for stem in ("f_000001", "f_000002"):
            import cv2
            import numpy as np

            cv2.imwrite(
                str(tmp_path / name / "images" / f"{stem}.png"), np.zeros((100, 200, 3), np.uint8)
            )
    out = tmp_path / "det.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "detection",
            "--gt",
            str(tmp_path / "gt"),
            "--pred",
            str(tmp_path / "pred"),
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())
    assert scores["map50"] == pytest.approx(1.0)  # the false box ranks below the true one
    assert scores["per_class"]["hook"]["gt"] == 1


def test_user_errors_are_input_errors(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "eval",
            "events",
            "--gt",
            str(tmp_path / "none.json"),
            "--pred",
            str(tmp_path / "none.json"),
        ],
    )
    assert isinstance(result.exception, InputError)
    assert "does not exist" in str(result.exception)
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--size", "wide"])
    assert isinstance(result.exception, InputError)
    assert not (tmp_path / "x" / "video.mp4").exists()


def test_the_console_script_prints_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "video01-phase.txt"
    bad.write_text("Frame,Phase\n0,0\n25,9\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "surg_assets.cli",
            "eval",
            "phases",
            "--gt",
            str(bad),
            "--pred",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: annotation file {tmp_path.name}/video01-phase.txt line 3:"
        " '9' is not a Cholec80 phase; use a phase name or an id 0-6."
    ]
