"""Model files and checkpoints are data: a crafted pickle is refused by every command, and never runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedgin.checkpoints import load_checkpoint
from fedgin.cli import app
from fedgin.config import dump_toml
from fedgin.errors import DataError
from fedgin.prediction import load_prediction_model
from fedgin.training import run_training
from test_federation import fl_config
from test_training import tiny_config

runner = CliRunner()
SRC = Path(__file__).resolve().parent.parent / "src"


class WritesAFile:
    """Unpickling this calls os.system: the proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted(path: Path, marker: Path) -> Path:
    """A file shaped like a fedgin checkpoint whose payload runs a command when fully unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "fedgin-checkpoint/2", "model": {}, "config": {}, "rng": WritesAFile(marker)}, path)
    return path


def test_the_crafted_file_is_real(tmp_path: Path) -> None:
    """Loaded the unsafe way, the file does run its command: the refusals below are refusals of real code."""
    marker = tmp_path / "pwned"
    torch.load(crafted(tmp_path / "evil.pt", marker), weights_only=False)  # the one unsafe load, on purpose
    assert marker.exists()


def test_api_loaders_refuse_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = crafted(tmp_path / "evil.pt", marker)
    for load in (load_checkpoint, load_prediction_model):
        with pytest.raises(DataError, match=r"refused: it holds objects beyond tensors .*posix\.system"):
            load(evil)
    assert not marker.exists()


def _one_line_refusal(result, evil: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {evil}: refused"), result.stderr


def test_commands_refuse_code(caches: dict[str, Path], tmp_path: Path) -> None:
    """predict --model, evaluate --checkpoint, export, train --resume and federate --resume."""
    marker = tmp_path / "pwned"
    evil = crafted(tmp_path / "evil.pt", marker)
    scan = tmp_path / "scan.nii.gz"
    import nibabel as nib

    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).normal(size=(8, 8, 4)).astype(np.float32), np.eye(4)), scan
    )
    for args in (
        ["predict", "-i", scan, "-o", tmp_path / "pred", "--model", evil],
        ["evaluate", "--checkpoint", evil, "--data", caches["ct"], "-o", tmp_path / "eval"],
        ["export", "--checkpoint", evil, "-o", tmp_path / "model.fedgin.pt"],
    ):
        _one_line_refusal(runner.invoke(app, [str(arg) for arg in args]), evil)

    train = tiny_config(caches, tmp_path / "train-run")
    dump_toml(train, tmp_path / "train.toml")
    train_evil = crafted(tmp_path / "train-run" / "checkpoints" / "last.pt", marker)
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "train.toml"), "--resume"])
    _one_line_refusal(result, train_evil)

    federation = fl_config(caches, tmp_path / "fl-run")
    dump_toml(federation, tmp_path / "fl.toml")
    fl_evil = crafted(tmp_path / "fl-run" / "checkpoints" / "last.pt", marker)
    result = runner.invoke(app, ["federate", "--config", str(tmp_path / "fl.toml"), "--resume"])
    _one_line_refusal(result, fl_evil)
    assert not marker.exists()


def test_checkpoints_fedgin_writes_load_safely(caches: dict[str, Path], tmp_path: Path) -> None:
    """Optimizer, scaler and RNG state included: the whole checkpoint is tensors and plain values."""
    result = run_training(tiny_config(caches, tmp_path / "run", steps=2, val_interval=2))
    checkpoint = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["format"] == "fedgin-checkpoint/2"
    assert {"model", "optimizer", "scaler", "rng", "config", "history"} <= checkpoint.keys()
    assert (
        torch.serialization.get_unsafe_globals_in_checkpoint(result.run_dir / "checkpoints" / "last.pt") == []
    )


def test_old_checkpoint_with_numpy_state_is_refused_with_a_reason(tmp_path: Path) -> None:
    """fedgin 0.1 stored numpy's RNG state as an ndarray, which the safe loader cannot rebuild."""
    old = tmp_path / "old.pt"
    torch.save(
        {"format": "fedgin-checkpoint/1", "model": {}, "config": {}, "rng": np.random.get_state()}, old
    )
    with pytest.raises(DataError, match=re.escape("fedgin 0.1 checkpoints stored numpy RNG state")):
        load_checkpoint(old)


def test_no_unsafe_load_in_the_source() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in SRC.rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"weights_only\s*=\s*False", line)
    ]
    assert offenders == []
