"""Model files from the store: a damaged one gets one clear error, a hostile one runs nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ml_models.detector import load_model, trained_imgsz
from ml_models.errors import InputError
from ml_models.events import OutOfBodyClassifier
from ml_models.phases import PhaseModel
from surg_assets.models import default_weights_file


class _RunsCode:
    """Unpickling this calls ``os.system``: what a tampered weights file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


LOADERS = {
    "phase_model": (PhaseModel.load, "phase model"),
    "out_of_body_model": (OutOfBodyClassifier.load, "out-of-body model"),
    "instrument_detector": (load_model, "instrument detector weights"),
}


@pytest.mark.parametrize("name", list(LOADERS))
def test_a_truncated_weights_file_is_named_with_what_to_do(name: str, tmp_path: Path) -> None:
    load, what = LOADERS[name]
    shipped = default_weights_file(name).read_bytes()
    damaged = tmp_path / "weights.pt"
    damaged.write_bytes(shipped[: len(shipped) // 2])
    with pytest.raises(InputError) as raised:
        load(damaged)
    message = str(raised.value)
    assert message.startswith(f"the {what} file cannot be read")
    assert "register it again or retrain" in message
    if name == "instrument_detector":
        with pytest.raises(InputError, match="cannot be read"):
            trained_imgsz(damaged)
        # Through the ONNX export too, and nothing half-exported is left.
        with pytest.raises(InputError, match="cannot be read"):
            load(damaged, "onnx", 64, cache_dir=tmp_path / "onnx")
        assert not list(tmp_path.rglob("*.onnx"))


@pytest.mark.parametrize("name", ["phase_model", "out_of_body_model"])
def test_a_bundle_carrying_code_is_refused_without_running_it(name: str, tmp_path: Path) -> None:
    load, what = LOADERS[name]
    marker = tmp_path / "ran"
    hostile = tmp_path / "weights.pt"
    kind = "surg-phase-model" if name == "phase_model" else "surg-out-of-body"
    torch.save({"kind": kind, "payload": _RunsCode(marker)}, hostile)
    with pytest.raises(InputError, match=f"the {what} file cannot be read"):
        load(hostile)
    assert not marker.exists()
    # The project's own bundles are plain tensors and values: they still load.
    assert load(default_weights_file(name)) is not None
