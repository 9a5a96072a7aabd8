"""The single-site trainer: run directory contents, determinism, exact resume, GIN on and off."""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedgin.checkpoints import load_checkpoint, load_model
from fedgin.cli import app
from fedgin.config import (
    AffineConfig,
    DataSpec,
    GINConfig,
    ModelConfig,
    RunConfig,
)
from fedgin.errors import ConfigError
from fedgin.training import run_training
from fedgin.training.data import select_cases
from fedgin.training.schedule import learning_rate


def tiny_config(caches: dict[str, Path], output: Path, **train: object) -> RunConfig:
    return RunConfig(
        name="tiny",
        seed=7,
        output=output,
        data={
            "train": [DataSpec(cache=caches["ct"], splits=["train", "test"]), DataSpec(cache=caches["t2"])]
        },
        model=ModelConfig(channels=(4, 8), strides=(2,), num_res_units=1),
        gin=GINConfig(enabled=True),
        train={"steps": 6, "batch_size": 4, "val_interval": 3, "checkpoint_interval": 2, **train},
    )


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_run_directory_and_checkpoint_contents(caches: dict[str, Path], tmp_path: Path) -> None:
    config = tiny_config(caches, tmp_path / "run")
    result = run_training(config)
    run = tmp_path / "run"
    assert result.steps == 6
    resolved = RunConfig.model_validate(tomllib.loads((run / "config.toml").read_text()))
    assert resolved == config
    rows = read_rows(run)
    assert [int(row["step"]) for row in rows] == [2, 3, 4, 6]
    validated = [row for row in rows if row["val_score"]]
    assert [int(row["step"]) for row in validated] == [3, 6]
    assert {"val_dice_ct", "val_dice_mri_t2", "val_dice_ct_liver", "val_dice_mri_t2_gallbladder"} <= set(
        rows[0]
    )
    assert (run / "learning_curve.png").stat().st_size > 10_000
    assert all(0.0 <= float(row["val_dice_ct"]) <= 1.0 for row in validated)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scaler", "step", "config", "rng", "history"} <= set(last)
    assert last["step"] == 6 and last["optimizer"]["state"]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["step"] == result.best_step in (3, 6)
    model, loaded_config = load_model(run / "checkpoints" / "best.pt")
    assert loaded_config.model == config.model and not model.training


def test_same_seed_same_weights_other_seed_differs(caches: dict[str, Path], tmp_path: Path) -> None:
    first = run_training(tiny_config(caches, tmp_path / "a"))
    second = run_training(tiny_config(caches, tmp_path / "b"))
    assert_same_weights(
        weights(first.run_dir / "checkpoints/last.pt"), weights(second.run_dir / "checkpoints/last.pt")
    )
    other = tiny_config(caches, tmp_path / "c")
    other.seed = 8
    third = run_training(other)
    assert not torch.equal(
        weights(first.run_dir / "checkpoints/last.pt")["model.0.conv.unit0.conv.weight"],
        weights(third.run_dir / "checkpoints/last.pt")["model.0.conv.unit0.conv.weight"],
    )


def test_interrupted_run_resumes_to_identical_weights(caches: dict[str, Path], tmp_path: Path) -> None:
    straight = run_training(tiny_config(caches, tmp_path / "straight"))
    interrupted = tiny_config(caches, tmp_path / "interrupted")
    stopped = run_training(interrupted, stop_after=4)
    assert stopped.steps == 4
    resumed = run_training(interrupted, resume=True)
    assert resumed.steps == 6
    assert_same_weights(
        weights(straight.run_dir / "checkpoints/last.pt"), weights(resumed.run_dir / "checkpoints/last.pt")
    )
    assert (straight.run_dir / "metrics.csv").read_text().splitlines()[0] == (
        resumed.run_dir / "metrics.csv"
    ).read_text().splitlines()[0]
    for a, b in zip(read_rows(straight.run_dir), read_rows(resumed.run_dir), strict=True):
        assert (a["step"], a["loss"], a["val_score"], a["lr"]) == (
            b["step"],
            b["loss"],
            b["val_score"],
            b["lr"],
        )
    # metrics.csv records the poly schedule's rate of each stretch's last step.
    train = interrupted.train
    for row in read_rows(resumed.run_dir):
        assert float(row["lr"]) == pytest.approx(learning_rate(train, int(row["step"]) - 1, 6), rel=1e-5)


def test_affine_augmentation_changes_training_and_resumes_exactly(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    plain = run_training(tiny_config(caches, tmp_path / "plain"))
    config = tiny_config(caches, tmp_path / "affine").model_copy(
        update={"affine": AffineConfig(enabled=True)}
    )
    straight = run_training(config)
    assert not torch.equal(
        weights(plain.run_dir / "checkpoints/last.pt")["model.0.conv.unit0.conv.weight"],
        weights(straight.run_dir / "checkpoints/last.pt")["model.0.conv.unit0.conv.weight"],
    )
    interrupted = config.model_copy(update={"output": tmp_path / "affine-resumed"})
    run_training(interrupted, stop_after=3)
    resumed = run_training(interrupted, resume=True)
    assert_same_weights(
        weights(straight.run_dir / "checkpoints/last.pt"), weights(resumed.run_dir / "checkpoints/last.pt")
    )


def test_gin_changes_training(caches: dict[str, Path], tmp_path: Path) -> None:
    with_gin = run_training(tiny_config(caches, tmp_path / "gin"))
    config = tiny_config(caches, tmp_path / "nogin")
    config.gin.enabled = False
    without = run_training(config)
    key = "model.0.conv.unit0.conv.weight"
    assert not torch.equal(
        weights(with_gin.run_dir / "checkpoints/last.pt")[key],
        weights(without.run_dir / "checkpoints/last.pt")[key],
    )


def test_run_directory_is_never_mixed(caches: dict[str, Path], tmp_path: Path) -> None:
    config = tiny_config(caches, tmp_path / "run", steps=2)
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_training(config, resume=True)
    run_training(config)
    with pytest.raises(ConfigError, match="not empty"):
        run_training(config)
    assert run_training(config, overwrite=True).steps == 2


def test_skip_and_max_cases_carve_disjoint_shares(caches: dict[str, Path]) -> None:
    whole = [
        entry.case_id for _, entry in select_cases(DataSpec(cache=caches["ct"], splits=["train", "test"]), [])
    ]
    first = select_cases(DataSpec(cache=caches["ct"], splits=["train", "test"], max_cases=2), [])
    rest = select_cases(DataSpec(cache=caches["ct"], splits=["train", "test"], skip_cases=2), [])
    assert [entry.case_id for _, entry in first + rest] == whole and len(whole) > 2


def test_epochs_count_passes_over_the_training_slices(caches: dict[str, Path], tmp_path: Path) -> None:
    config = tiny_config(caches, tmp_path / "epochs", epochs=1, batch_size=8, val_interval=100)
    slices = sum(entry.n_slices for _, entry in select_cases(config.data.train[0], ["train"])) + sum(
        entry.n_slices for _, entry in select_cases(config.data.train[1], ["train"])
    )
    assert run_training(config).steps == slices // 8


def test_train_command(caches: dict[str, Path], tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(
        f"""name = "cli"
output = "{tmp_path / "cli_run"}"
[[data.train]]
cache = "{caches["ct"]}"
[model]
channels = [4, 8]
strides = [2]
[train]
steps = 2
batch_size = 4
val_interval = 2
"""
    )
    result = CliRunner().invoke(app, ["train", "--config", str(toml)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli_run" / "checkpoints" / "best.pt").is_file()
    toml.write_text("[train]\nstepz = 3\n")
    result = CliRunner().invoke(app, ["train", "--config", str(toml)])
    assert result.exit_code == 2 and "stepz" in result.output


def test_3d_model_trains_on_patches_and_validates_whole_volumes(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    config = tiny_config(caches, tmp_path / "3d", steps=3, val_interval=3)
    config.model = ModelConfig(dimensions=3, channels=(4, 8), strides=(2,), patch_size=(8, 32, 32))
    first = run_training(config)
    assert first.steps == 3 and 0.0 <= first.best_score <= 1.0
    _, loaded = load_model(first.run_dir / "checkpoints" / "last.pt")
    assert loaded.model.dimensions == 3
    again = tiny_config(caches, tmp_path / "3d_again", steps=3, val_interval=3)
    again.model = config.model
    assert_same_weights(
        weights(first.run_dir / "checkpoints/last.pt"),
        weights(run_training(again).run_dir / "checkpoints/last.pt"),
    )
