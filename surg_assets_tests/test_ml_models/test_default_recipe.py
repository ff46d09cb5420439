"""The default models' recipe: every model trained from nothing, progress told step by step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ml_models.frames import FRAME_SIZE
from ml_models.training import (
    DEFAULT_MODEL_NAMES,
    FULL_RECIPE,
    QUICK_RECIPE,
    DefaultRecipe,
    train_default_models,
)
from surg_assets_tests.test_cli import assert_user_error, surg

# The quick recipe's shape at a size a test can afford: the same stages, a few seconds each.
TINY = dataclasses.replace(
    QUICK_RECIPE,
    name="tiny",
    case_seeds=(1001, 1004),
    case_minutes=0.25,
    detector_epochs=1,
    detector_imgsz=160,
    phase_seeds=(3001, 3002),
    phase_minutes=(0.5, 1.0),
    encoder_seeds=(4001, 4002),
    encoder_minutes=0.5,
    encoder_epochs=1,
    temporal_layers=4,
    temporal_epochs=2,
    out_of_body_epochs=1,
)


def test_the_recipe_trains_every_default_model_and_counts_its_steps(tmp_path: Path) -> None:
    from ultralytics import YOLO

    from ml_models.events import OutOfBodyClassifier
    from ml_models.phases import PhaseModel

    steps: list[str] = []
    result = train_default_models(
        tmp_path / "work", tmp_path / "out", recipe=TINY, step=steps.append
    )
    # The progress bar's total is exactly what the training reports.
    assert len(steps) == TINY.steps(set(DEFAULT_MODEL_NAMES)), steps
    assert sum("temporal model epoch" in s for s in steps) == 2 * TINY.temporal_epochs
    assert sum(s.startswith("detector epoch") for s in steps) == TINY.detector_epochs
    assert set(result.files) == set(DEFAULT_MODEL_NAMES)

    phases = PhaseModel.load(result.files["phase_model"])
    assert phases.offline is not None and len(phases.phases) == 7
    frames = np.zeros((5, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    probs = phases.predict_images(frames)
    assert probs.shape == (5, 7) and np.allclose(probs.sum(1), 1, atol=1e-4)
    oob = OutOfBodyClassifier.load(result.files["out_of_body_model"])
    scores = oob.scores(frames)
    assert scores.shape == (5,) and ((scores >= 0) & (scores <= 1)).all()
    assert YOLO(str(result.files["instrument_detector"])).task == "segment"
    assert "box_map50" in result.metrics["instrument_detector"]

    # A second run reuses the rendered cases; a recipe asking for another length renders again.
    summary = tmp_path / "work" / "synthetic" / "seed-1001" / "summary.json"
    first = summary.stat().st_mtime_ns
    train_default_models(
        tmp_path / "work", tmp_path / "out", recipe=TINY, only=("out_of_body_model",)
    )
    assert summary.stat().st_mtime_ns == first
    longer = dataclasses.replace(TINY, case_minutes=0.3)
    train_default_models(
        tmp_path / "work", tmp_path / "out", recipe=longer, only=("out_of_body_model",)
    )
    assert summary.stat().st_mtime_ns != first


def test_the_detector_stages_each_add_their_cases_and_hand_on_their_weights(
    tmp_path: Path,
) -> None:
    import filecmp

    staged = dataclasses.replace(
        TINY,
        finetune_seeds=(1005,),
        finetune_minutes=0.25,
        finetune_epochs=1,
        refine_seeds=(1017,),
        refine_minutes=0.25,
        refine_epochs=1,
    )
    steps: list[str] = []
    work = tmp_path / "work"
    result = train_default_models(
        work, tmp_path / "out", recipe=staged, only=("instrument_detector",), step=steps.append
    )
    assert len(steps) == staged.steps({"instrument_detector"}), steps
    assert [s for s in steps if "epoch" in s] == [
        "detector epoch 1/1",
        "detector fine-tuning epoch 1/1",
        "detector refining epoch 1/1",
    ]

    def cases_in(stage: str, split: str) -> set[str]:
        images = work / f"detector-dataset-{stage}" / "images" / split
        return {f.name.split("_")[0] for f in images.iterdir()}

    # Each stage keeps the cases before it and adds its own; validation is always seed 1004.
    assert cases_in("finetune", "train") == {"seed-1001", "seed-1005"}
    assert cases_in("refine", "train") == {"seed-1001", "seed-1005", "seed-1017"}
    assert cases_in("refine", "val") == cases_in("finetune", "val") == {"seed-1004"}
    # What is shipped is the last stage's weights.
    weights = work / "detector-runs-refine" / "train" / "weights"
    shipped = result.files["instrument_detector"]
    assert any(filecmp.cmp(shipped, w, shallow=False) for w in weights.glob("*.pt"))


def test_the_quick_recipe_trains_only_on_seeds_the_full_recipe_trains_on() -> None:
    # Held-out evaluation seeds (2001+) must stay unseen whichever recipe made the weights.
    full = FULL_RECIPE
    assert set(QUICK_RECIPE.case_seeds) <= set(full.case_seeds) | set(full.finetune_seeds)
    # Both validate the detector on the same held-out case.
    assert QUICK_RECIPE.case_seeds[-1] == full.case_seeds[-1]
    for field in ("phase_seeds", "encoder_seeds"):
        assert set(getattr(QUICK_RECIPE, field)) <= set(getattr(full, field))
    everything = [*QUICK_RECIPE.case_seeds, *QUICK_RECIPE.phase_seeds, *QUICK_RECIPE.encoder_seeds]
    assert not any(2000 <= s < 3000 for s in everything)
    lengths = QUICK_RECIPE.phase_case_minutes()
    # A case's length is its seed's: the same in any recipe with the same range.
    same = DefaultRecipe(
        "x", phase_seeds=QUICK_RECIPE.phase_seeds[::-1], phase_minutes=QUICK_RECIPE.phase_minutes
    )
    assert same.phase_case_minutes() == lengths[::-1]
    lo, hi = QUICK_RECIPE.phase_minutes
    assert all(lo <= m <= hi for m in lengths) and len(set(lengths)) == len(lengths)


def test_train_defaults_refuses_an_unknown_recipe_or_model(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = tmp_path / "weights"
    assert_user_error(
        surg(home, "models", "train-defaults", "--recipe", "fast", "--out", str(out)),
        "--recipe fast is unknown; choose from full, quick",
    )
    assert_user_error(
        surg(home, "models", "train-defaults", "--only", "yolo", "--out", str(out)),
        "--only yolo is not a default model",
    )
    assert_user_error(
        surg(home, "models", "train-defaults", "--epochs", "0", "--out", str(out)),
        "--epochs must be a whole number of epochs",
    )
    assert_user_error(
        surg(home, "models", "train-defaults", "--refine-epochs", "-1", "--out", str(out)),
        "--refine-epochs must be a whole number of epochs",
    )
    assert not out.exists()


def test_a_missing_model_without_default_weights_says_how_to_train_them(
    surg_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import surg_assets.models as models
    from ml_models.errors import InputError
    from resources.settings import load_settings
    from surg_assets.settings import build_resources

    monkeypatch.setattr(models, "DEFAULT_WEIGHTS", tmp_path / "no-weights")
    registry = build_resources(load_settings(), deferred=False)["registry"]
    with pytest.raises(InputError, match=r"no Approved phase_model and no default weights") as e:
        models.approved_model(registry, "phase_model")
    assert "surg models train-defaults --recipe quick" in str(e.value)
    assert registry.newest_approved("phase_model") is None


def test_train_defaults_quick_writes_the_weights_and_cards_with_a_progress_bar(
    tmp_path: Path,
) -> None:
    import json

    from ml_models.events import OutOfBodyClassifier

    out = tmp_path / "weights"
    out.mkdir()
    kept = {"phase_model": {"name": "phase_model", "recipe": "full"}}
    (out / "cards.json").write_text(json.dumps(kept))
    proc = surg(
        tmp_path / "home",
        "models",
        "train-defaults",
        "--recipe",
        "quick",
        "--only",
        "out_of_body_model",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    steps = QUICK_RECIPE.steps({"out_of_body_model"})
    assert f"{steps}/{steps}" in proc.stderr and "default models" in proc.stderr
    cards = json.loads((out / "cards.json").read_text())
    assert cards["phase_model"] == kept["phase_model"]  # --only keeps the other cards
    card = cards["out_of_body_model"]
    assert card["recipe"] == "quick" and card["train_seconds"] > 0
    assert "1001, 1002, 1003" in card["data"] and "--recipe quick" in card["command"]
    assert card["metrics"]["frames"] > 0
    assert OutOfBodyClassifier.load(out / "out_of_body_model.pt").threshold > 0
    assert sorted(p.name for p in out.iterdir()) == ["cards.json", "out_of_body_model.pt"]


def test_the_detector_card_names_every_stage_of_its_recipe() -> None:
    from surg_assets.cli_models import _default_data

    full = _default_data("instrument_detector", FULL_RECIPE)
    assert "seeds 1001, 1002, 1003, 1004" in full
    assert "fine-tuned 10 epochs with seeds 1005-1016" in full
    assert "5 more epochs with seeds 1017-1028" in full
    quick = _default_data("instrument_detector", QUICK_RECIPE)
    assert "fine-tuned" not in quick and "more epochs" not in quick
