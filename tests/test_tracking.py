"""TensorBoard tracking (fedgin.tracking): the event files hold the run's CSV rows; off by default."""

from __future__ import annotations

import csv
import gc
import math
import sys
import threading
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from fedgin.cli import app
from fedgin.config import RunConfig, TrackingConfig, dump_toml
from fedgin.errors import ConfigError
from fedgin.tracking import MISSING_EXTRA, Tracker, folder_name, tag_for


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_events(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the event files in `folder` (TensorBoard's own reader, purges applied)."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def assert_rows_logged(rows: list[dict[str, str]], scalars: dict[str, dict[int, float]], step: str) -> None:
    """Every finite number of every row is its column's tag's value at the row's step, and nothing else is
    logged under that tag (the event files hold float32)."""
    for column in rows[0]:
        tag = tag_for(column)
        written = [(int(row[step]), row[column]) for row in rows if row[column] != ""]
        try:
            numbers = {at: float(value) for at, value in written}
        except ValueError:  # texts (left_out) and switches are not logged
            assert tag not in scalars, column
            continue
        finite = {at: number for at, number in numbers.items() if math.isfinite(number)}
        if tag is None or not finite:
            assert tag not in scalars, column
            continue
        assert sorted(scalars[tag]) == sorted(finite), column
        for at, number in finite.items():
            assert scalars[tag][at] == pytest.approx(number, rel=1e-6, abs=1e-9), (column, at)


def writer_threads() -> int:
    """Live background threads of TensorBoard event file writers."""
    return sum(type(thread).__name__ == "_AsyncWriterThread" for thread in threading.enumerate())


def test_tags_and_folder_names() -> None:
    assert tag_for("train_loss") == tag_for("loss") == "loss/train"
    assert tag_for("loss_ct") == "loss/ct"
    assert tag_for("val_dice_mri_t2") == "val_dice/mri_t2"
    assert tag_for("val_dice_mri_t2_liver") == "val_dice_organ/mri_t2/liver"
    assert tag_for("bytes_down") == "bytes/down" and tag_for("bytes_up") == "bytes/up"
    assert tag_for("epsilon") == "privacy/epsilon"
    assert tag_for("update_norm_ct") == "update_norm/ct"
    assert tag_for("seconds") == "seconds/round" and tag_for("train_seconds_ct") == "seconds/train/ct"
    assert tag_for("lr") == "lr" and tag_for("round") is None and tag_for("step") is None
    assert folder_name("a b/../c") == "a_b_.._c" and folder_name("..") == "run"


def test_scalars_skip_non_numbers_flush_and_resume_hides_later_steps(tmp_path: Path) -> None:
    tracking = TrackingConfig(tensorboard=tmp_path / "tb")
    tracker = Tracker.open(tracking, "run one")
    # The folder is made at once (one that cannot be made fails before training), the writer at the first
    # scalars only.
    assert not any((tmp_path / "tb" / "run_one").iterdir())
    for step in (1, 2, 3):
        row = {"step": step, "loss": float(step), "lr": math.nan, "left_out": "", "secagg": True}
        tracker.scalars(step, row, prefix="x")
    # Flushed: readable while the writer is still open (a crashed run keeps what it logged).
    assert read_events(tmp_path / "tb" / "run_one") == {"x/loss/train": {1: 1.0, 2: 2.0, 3: 3.0}}
    tracker.close()
    # Resumed after step 1: steps 2 and 3 of the first attempt are replaced.
    with Tracker.open(tracking, "run one", resume_step=1) as resumed:
        for step in (2, 3):
            resumed.scalars(step, {"loss": 10.0 * step}, prefix="x")
    assert read_events(tmp_path / "tb" / "run_one") == {"x/loss/train": {1: 1.0, 2: 20.0, 3: 30.0}}
    assert writer_threads() == 0
    # A run cut short (an error, Ctrl-C) never calls close(): the writer's thread still ends.
    abandoned = Tracker.open(tracking, "abandoned")
    abandoned.scalars(1, {"loss": 1.0})
    assert writer_threads() == 1
    del abandoned
    gc.collect()
    assert writer_threads() == 0


def test_missing_extra_is_one_config_error_line_and_off_needs_no_tensorboard(
    monkeypatch: pytest.MonkeyPatch, caches: dict[str, Path], tmp_path: Path
) -> None:
    assert RunConfig().tracking.tensorboard is None
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` raises ImportError
    with pytest.raises(ConfigError) as raised:
        Tracker.open(TrackingConfig(tensorboard=tmp_path / "tb"), "x")
    assert str(raised.value) == MISSING_EXTRA and "\n" not in MISSING_EXTRA
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'name = "x"\noutput = "{tmp_path / "run"}"\n[[data.train]]\ncache = "{caches["ct"]}"\n'
        "[model]\nchannels = [4, 8]\nstrides = [2]\nnum_res_units = 1\n"
        "[train]\nsteps = 1\nbatch_size = 4\nval_interval = 1\n"
    )
    result = CliRunner().invoke(app, ["train", "-c", str(toml), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 2 and MISSING_EXTRA in " ".join(result.output.split())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.toml"]  # refused before writing
    # Tracking off (the default): no TensorBoard needed, no folder made.
    result = CliRunner().invoke(app, ["train", "-c", str(toml)])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run", "run.toml"]
    # A folder that cannot be made (the write check passes: root may write in /proc, mkdir fails): one
    # line naming the setting, before the first step.
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard")
    result = CliRunner().invoke(
        app, ["train", "-c", str(toml), "-o", str(tmp_path / "run2"), "--tensorboard", "/proc/fedgin-tb"]
    )
    assert result.exit_code == 2 and "tracking.tensorboard: /proc/fedgin-tb" in result.output, result.output
    assert not (tmp_path / "run2" / "checkpoints").exists()


def test_train_command_logs_its_history(caches: dict[str, Path], tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(
        f"""name = "central"
output = "{tmp_path / "run"}"
[[data.train]]
cache = "{caches["ct"]}"
[[data.train]]
cache = "{caches["t2"]}"
[model]
channels = [4, 8]
strides = [2]
num_res_units = 1
[train]
steps = 4
batch_size = 4
val_interval = 2
checkpoint_interval = 1
"""
    )
    result = CliRunner().invoke(app, ["train", "-c", str(toml), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]
    scalars = read_events(tmp_path / "tb" / "central")
    assert {"loss/train", "lr", "val_dice/ct", "val_dice/mri_t2", "val/score"} <= scalars.keys()
    assert sorted(scalars["val_dice/ct"]) == [2, 4]  # at the validation points only
    assert_rows_logged(rows, scalars, "step")


def test_federate_command_logs_each_round(caches: dict[str, Path], tmp_path: Path) -> None:
    config = RunConfig(
        name="fl-tiny",
        seed=7,
        output=tmp_path / "run",
        model={"channels": (4, 8), "strides": (2,), "num_res_units": 1},
        train={"batch_size": 4, "device": "cpu"},
        federation={
            "rounds": 2,
            "local_steps": 2,
            "min_clients": 2,
            "round_timeout_s": 120,
            "clients": [
                {"name": "ct", "data": [{"cache": caches["ct"]}]},
                {"name": "mri", "data": [{"cache": caches["t2"]}]},
            ],
            "server_eval": [{"cache": caches["ct"]}, {"cache": caches["t2"]}],
        },
    )
    dump_toml(config, tmp_path / "fl.toml")
    tb = tmp_path / "tb"
    result = CliRunner().invoke(app, ["federate", "-c", str(tmp_path / "fl.toml"), "--tensorboard", str(tb)])
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "run" / "rounds.csv")
    assert [int(row["round"]) for row in rows] == [1, 2]
    scalars = read_events(tb / "fl-tiny")
    expected = {"loss/train", "loss/ct", "loss/mri", "lr", "val_dice/ct", "val_dice/mri_t2", "val/score"}
    expected |= {"bytes/down", "bytes/up", "update_norm/ct", "update_norm/mri", "seconds/round"}
    assert expected <= scalars.keys()
    assert_rows_logged(rows, scalars, "round")
