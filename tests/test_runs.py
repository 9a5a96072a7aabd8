"""The run directory: refuse / resume / overwrite, one checkpoint schema for both kinds of run, summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedgin.checkpoints import CHECKPOINT_FORMAT
from fedgin.cli import app
from fedgin.config import DataSpec, ModelConfig, RunConfig, dump_toml
from fedgin.errors import ConfigError
from fedgin.folders import marked_kind
from fedgin.model import resolve_amp, resolve_device_and_amp
from fedgin.runs import Best, RunDirectory


def small_config(output: Path) -> RunConfig:
    return RunConfig(name="r", output=output, model=ModelConfig(channels=(4, 8), strides=(2,)))


def test_check_refuses_resumes_and_overwrites(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run", "single-site")
    assert run.check(resume=False, overwrite=False) is None  # not there yet: a fresh run
    with pytest.raises(ConfigError, match="nothing to resume"):
        run.check(resume=True, overwrite=False)
    run.start(small_config(run.path), None, overwrite=False)
    assert (run.path / "config.toml").is_file() and marked_kind(run.path) == "run"
    with pytest.raises(ConfigError, match="not empty; pass --resume"):
        run.check(resume=False, overwrite=False)
    (run.path / "stale.txt").write_text("from another run")
    assert run.check(resume=False, overwrite=True) is None
    assert (run.path / "stale.txt").is_file(), "check writes nothing"
    run.start(small_config(run.path), None, overwrite=True)
    assert not (run.path / "stale.txt").exists() and (run.path / "config.toml").is_file()
    run.save_checkpoint(
        "last.pt", model={}, config=small_config(run.path), progress=3, history=[], best=Best()
    )
    assert run.check(resume=True, overwrite=False) == run.last_checkpoint


def test_overwrite_deletes_only_a_run_folder(tmp_path: Path) -> None:
    """A folder fedgin did not make is refused by check and again by start (nothing deleted); a run of
    fedgin 0.8 (config.toml and checkpoints/last.pt, no marker) is still replaced."""
    plain = RunDirectory(tmp_path / "plain", "single-site")
    plain.path.mkdir()
    (plain.path / "mine.txt").write_text("not a run")
    for step in (lambda: plain.check(resume=False, overwrite=True),
                 lambda: plain.start(small_config(plain.path), None, overwrite=True)):  # fmt: skip
        with pytest.raises(ConfigError, match="holds files fedgin did not make, not a run folder"):
            step()
    assert (plain.path / "mine.txt").read_text() == "not a run"
    old = RunDirectory(tmp_path / "old", "single-site")
    old.checkpoints.mkdir(parents=True)
    torch.save({"model": {}, "config": {}, "step": 1}, old.last_checkpoint)
    dump_toml(small_config(old.path), old.path / "config.toml")
    assert old.check(resume=False, overwrite=True) is None
    old.start(small_config(old.path), None, overwrite=True)
    assert not old.last_checkpoint.exists() and marked_kind(old.path) == "run"


@pytest.mark.parametrize(("kind", "unit", "csv_name"), [("single-site", "step", "metrics.csv"),
                                                        ("federated", "round", "rounds.csv")])  # fmt: skip
def test_one_checkpoint_schema_for_both_kinds(tmp_path: Path, kind: str, unit: str, csv_name: str) -> None:
    run = RunDirectory(tmp_path / kind, kind, title="t")  # type: ignore[arg-type]
    config = small_config(run.path)
    history = [{unit: 1, "loss": 0.5, "val_score": 0.2}, {unit: 2, "loss": 0.4, "val_score": 0.3}]
    weights = {"w": torch.arange(3.0)}
    run.save_checkpoint("last.pt", model=weights, config=config, progress=2, history=history,
                        best=Best(0.3, 2), extra_state=torch.ones(1))  # fmt: skip
    payload = torch.load(run.last_checkpoint, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT and payload["kind"] == kind
    assert payload["progress"] == 2 and payload["history"] == history
    assert payload["best"] == {"score": 0.3, "progress": 2}
    # The keys of earlier releases stay beside the schema's own.
    assert payload["step"] == 2 and payload["best_score"] == 0.3 and payload[f"best_{unit}"] == 2
    assert ("round" in payload) == (kind == "federated")
    assert torch.equal(payload["extra_state"], torch.ones(1))

    state = run.read_checkpoint(run.last_checkpoint)
    assert (state.progress, state.history, state.best) == (2, history, Best(0.3, 2))
    torch.testing.assert_close(state.payload["model"]["w"], weights["w"])

    run.write_history(history)
    assert (run.path / csv_name).read_text().splitlines()[0] == f"{unit},loss,val_score"
    assert (run.path / "learning_curve.png").stat().st_size > 0
    run.write_summary(2, Best(0.3, 2), engine="x")
    assert json.loads((run.path / "summary.json").read_text()) == {
        f"{unit}s": 2,
        "best_score": 0.3,
        f"best_{unit}": 2,
        "engine": "x",
    }


def test_reads_checkpoints_of_earlier_releases(tmp_path: Path) -> None:
    """0.4.0 wrote step / round, best_score and best_step / best_round only."""
    run = RunDirectory(tmp_path, "federated")
    old = {"format": CHECKPOINT_FORMAT, "kind": "federated", "model": {}, "config": {}, "round": 4, "step": 4,
           "history": [{"round": 1}], "best_score": 0.5, "best_round": 3}  # fmt: skip
    run.checkpoints.mkdir()
    torch.save(old, run.last_checkpoint)
    state = run.read_checkpoint(run.last_checkpoint)
    assert (state.progress, state.history, state.best) == (4, [{"round": 1}], Best(0.5, 3))
    single = RunDirectory(tmp_path / "single", "single-site")
    single.checkpoints.mkdir(parents=True)
    torch.save({"model": {}, "config": {}, "step": 6}, single.last_checkpoint)
    assert single.read_checkpoint(single.last_checkpoint).best == Best(-math.inf, -1)


def test_device_and_amp_resolved_in_one_place() -> None:
    cpu = torch.device("cpu")
    assert resolve_amp(None, cpu) is False and resolve_amp(True, cpu) is True
    cuda = torch.device("cuda")
    assert resolve_amp(None, cuda) is True and resolve_amp(False, cuda) is False
    device, amp = resolve_device_and_amp(RunConfig(train={"device": "cpu"}).train)
    assert device == cpu and amp is False


def test_train_refused_by_its_configuration_writes_nothing(caches: dict[str, Path], tmp_path: Path) -> None:
    """A configuration that fails (here: strides that do not fit the channels) leaves no run folder behind,
    so the corrected configuration runs without --overwrite."""
    output = tmp_path / "run"
    bad = RunConfig(
        name="bad", output=output, data={"train": [DataSpec(cache=caches["ct"])]},
        model=ModelConfig(channels=(4, 8), strides=(2, 2)), train={"steps": 1, "batch_size": 2},
    )  # fmt: skip
    config_file = tmp_path / "bad.toml"
    dump_toml(bad, config_file)
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "--config", str(config_file)])
    assert refused.exit_code != 0 and "strides needs one entry fewer than channels" in refused.output
    assert not output.exists()
    dump_toml(bad.model_copy(update={"model": ModelConfig(channels=(4, 8), strides=(2,))}), config_file)
    done = runner.invoke(app, ["train", "--config", str(config_file)])
    assert done.exit_code == 0, done.output
    assert (output / "config.toml").is_file() and (output / "checkpoints" / "last.pt").is_file()
