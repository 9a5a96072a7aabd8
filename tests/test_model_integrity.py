"""A model is only ever used, written or resumed when it is sound (issue 27): weights that are not all finite
are never written as best or last, exported, predicted or evaluated with; a full disk leaves the last good
checkpoint intact; `--resume` continues only with the run's own model size, settings and data. Every refusal
is one line. Real tiny training runs, real NaN-weight files, a real full filesystem (tmpfs)."""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedgin.checkpoints import load_checkpoint, load_model, nonfinite_weights
from fedgin.cli import app
from fedgin.config import RunConfig, dump_toml
from fedgin.errors import DataError
from fedgin.federation.cross_site import Model as CrossSiteModel
from fedgin.prediction import load_prediction_model
from fedgin.runs import RunDiverged, changed_settings
from fedgin.training import run_training
from test_training import tiny_config

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def error_line(result) -> str:
    """The one `error:` line a refused command printed (and exit 2, no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def small(caches: dict[str, Path], output: Path, **train: object) -> RunConfig:
    """tiny_config with 2 steps, a checkpoint after each."""
    return tiny_config(
        caches, output, **{"steps": 2, "val_interval": 2, "checkpoint_interval": 1, "device": "cpu", **train}
    )


def with_train(config: RunConfig, **values: object) -> RunConfig:
    """`config` with train settings set past validation: what the up-front checks would refuse, to show
    that training itself never writes a model it broke (the last line of defence)."""
    return config.model_copy(update={"train": config.train.model_copy(update=values)})


@pytest.fixture(scope="module")
def trained(caches: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a real 2-step training run (its config in run.toml beside it)."""
    folder = tmp_path_factory.mktemp("integrity")
    config = small(caches, folder / "run")
    run_training(config)
    dump_toml(config, folder / "run.toml")
    return folder / "run"


def poisoned(source: Path, out: Path) -> Path:
    """A copy of a real checkpoint or model file with one weight tensor set to NaN and one to Inf."""
    payload = torch.load(source, weights_only=True)
    names = [name for name, value in payload["model"].items() if value.is_floating_point()]
    payload["model"][names[0]] = torch.full_like(payload["model"][names[0]], math.nan)
    payload["model"][names[1]][0] = math.inf
    torch.save(payload, out)
    return out


def test_nonfinite_weights_names_the_layers() -> None:
    state = {"a": torch.tensor([1.0, math.nan, math.nan]), "b": torch.tensor([math.inf]), "c": torch.ones(2)}
    assert nonfinite_weights(state) == "a: 2 NaN; b: 1 Inf"
    assert nonfinite_weights({"c": torch.ones(2), "steps": torch.tensor(3)}) is None


def test_a_nan_model_is_never_exported_predicted_or_evaluated(
    trained: Path, caches: dict[str, Path], tmp_path: Path
) -> None:
    bad = poisoned(trained / "checkpoints" / "best.pt", tmp_path / "nan.pt")
    for load in (load_model, load_prediction_model, partial(CrossSiteModel.from_checkpoint, "nan")):
        with pytest.raises(DataError, match="weights are not all finite"):
            load(bad)
    scan = tmp_path / "scan.nii.gz"
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(size=(48, 48, 6)).astype(np.float32), np.diag([8, 8, 25, 1])), scan)
    commands = {
        "export": ["export", "--checkpoint", bad, "-o", tmp_path / "model.fedgin.pt"],
        "predict": ["predict", "-i", scan, "-o", tmp_path / "pred", "--model", bad],
        "evaluate": ["evaluate", "--checkpoint", bad, "--data", caches["ct"], "-o", tmp_path / "eval"],
    }
    for name, args in commands.items():
        line = error_line(invoke(*args))
        assert line.startswith(f"error: {bad}: the model's weights are not all finite ("), (name, line)
        assert "NaN" in line and "Inf" in line, line
    assert not any((tmp_path / name).exists() for name in ("model.fedgin.pt", "pred", "eval"))

    # An exported model file made NaN afterwards is refused by predict too.
    exported = tmp_path / "good.fedgin.pt"
    assert (
        invoke("export", "--checkpoint", trained / "checkpoints" / "best.pt", "-o", exported).exit_code == 0
    )
    bad_export = poisoned(exported, tmp_path / "nan.fedgin.pt")
    line = error_line(invoke("predict", "-i", scan, "-o", tmp_path / "pred", "--model", bad_export))
    assert "weights are not all finite" in line and not (tmp_path / "pred").exists()


def test_training_that_diverges_keeps_the_last_good_checkpoint(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    """A learning rate of inf makes the first step's weights NaN/Inf while its loss is still finite."""
    config = small(caches, tmp_path / "run", steps=4)
    run_training(config, stop_after=2)
    last = config.output / "checkpoints" / "last.pt"
    before = last.read_bytes()
    with pytest.raises(RunDiverged) as raised:
        run_training(with_train(config, lr=math.inf), resume=True, allow_changed_settings=True)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("step 3: the model's weights are not all finite (")
    assert "train.lr is inf; give a finite value" in message
    assert message.endswith(f"the last good checkpoint (step 2) is kept in {last}")
    assert last.read_bytes() == before and load_checkpoint(last)["step"] == 2
    assert all(
        torch.isfinite(v).all()
        for v in load_checkpoint(config.output / "checkpoints/best.pt")["model"].values()
    )

    fresh = with_train(small(caches, tmp_path / "fresh"), lr=math.inf)
    with pytest.raises(RunDiverged, match=r"^step 1: the model's weights are not all finite .*no checkpoint"):
        run_training(fresh)
    assert not (fresh.output / "checkpoints").exists()


def test_nan_in_the_cache_stops_training_in_one_line_naming_the_case(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    cache = Path(shutil.copytree(caches["ct"], tmp_path / "cache"))
    with open(cache / "index.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    image_file = cache / rows[0]["image_file"]
    image = np.load(image_file)
    image[:] = np.nan  # every slice of the case: the first batch that draws it fails
    np.save(image_file, image)
    config = small(caches, tmp_path / "run", steps=6, checkpoint_interval=6, val_interval=6)
    config.data.train = [config.data.train[0].model_copy(update={"cache": cache})]
    dump_toml(config, tmp_path / "run.toml")
    line = error_line(invoke("train", "--config", tmp_path / "run.toml"))
    assert f"the cached image of case {rows[0]['case_id']} (slice " in line, line
    assert line.startswith("error: step ") and "the training loss is nan" in line, line
    assert not (config.output / "checkpoints").exists()


# -- resume ------------------------------------------------------------------------------------------------


def test_changed_settings_lists_what_changed_and_ignores_where_a_run_writes(caches: dict[str, Path]) -> None:
    before = tiny_config(caches, Path("a"))
    after = tiny_config(caches, Path("b"), lr=0.01)
    after.tracking.tensorboard = Path("tb")
    assert changed_settings(before.model_dump(mode="json"), after) == ["train.lr 0.0005 -> 0.01"]
    assert changed_settings(before.model_dump(mode="json"), tiny_config(caches, Path("c"))) == []


def resume(config_path: Path, *options: object):
    return invoke("train", "--config", config_path, "--resume", *options)


def test_resume_refuses_other_settings_model_size_and_data(
    caches: dict[str, Path], trained: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    last = run / "checkpoints" / "last.pt"
    original = (run / "config.toml").read_text()
    config = RunConfig.model_validate(load_checkpoint(last)["config"]).model_copy(update={"output": run})
    path = tmp_path / "run.toml"

    changed = config.model_copy(deep=True)
    changed.train.lr = 0.01
    dump_toml(changed, path)
    line = error_line(resume(path))
    assert line.startswith(f"error: {last}: --resume with changed settings (train.lr 0.0005 -> 0.01)"), line
    assert "--allow-changed-settings" in line
    assert (run / "config.toml").read_text() == original  # refused before anything was written
    assert "applies to --resume only" in error_line(invoke("train", "-c", path, "--allow-changed-settings"))

    bigger = config.model_copy(deep=True)
    bigger.model.channels = (8, 16)
    dump_toml(bigger, path)
    assert "model.channels [4, 8] -> [8, 16]" in error_line(resume(path))
    line = error_line(resume(path, "--allow-changed-settings"))
    assert line.startswith(f"error: {last}: weights do not fit the configured model (size mismatch for "), (
        line
    )

    assert last.read_bytes() == (trained / "checkpoints" / "last.pt").read_bytes()


def test_resume_after_the_cache_was_swapped_or_prepared_again_is_refused(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    ct, mri = tmp_path / "ct", tmp_path / "mri"
    shutil.copytree(caches["ct"], ct)
    shutil.copytree(caches["t2"], mri)
    config = small(caches, tmp_path / "run", steps=4)
    config.data.train = [config.data.train[0].model_copy(update={"cache": ct}), config.data.train[1]]
    run_training(config, stop_after=1)
    dump_toml(config, tmp_path / "run.toml")
    last = config.output / "checkpoints" / "last.pt"

    shutil.rmtree(ct)
    shutil.copytree(caches["t2"], ct)  # the same folder now holds the MRI site's cases
    line = error_line(resume(tmp_path / "run.toml", "--allow-changed-settings"))
    assert line.startswith(
        f"error: {last}: cannot resume: the training cache ({ct}) holds mri_t2 cases now, "
    ), line
    assert "ct cases when this run used it" in line

    shutil.rmtree(ct)
    shutil.copytree(caches["ct"], ct)
    with open(ct / "index.csv", newline="") as handle:
        lines = handle.read().splitlines(keepends=True)
    (ct / "index.csv").write_text("".join(lines[:-1]))  # a case removed from the cache
    line = error_line(resume(tmp_path / "run.toml"))
    assert f"the training cache ({ct}) changed since this run used it" in line, line
    assert load_checkpoint(last)["step"] == 1


# -- a full disk -------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs); needs root and mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` until only about `leave` bytes are free."""
    free = shutil.disk_usage(disk).free - leave
    with open(disk / "filler", "wb") as handle:
        handle.write(b"\0" * max(free, 0))


def test_a_full_disk_is_one_line_and_keeps_the_last_good_files(
    caches: dict[str, Path], trained: Path, small_disk: Path
) -> None:
    # Training: checkpoints of a (16, 32) model are ~140 kB, its history files ~55 kB, 100 kB free: the
    # history is written, the checkpoint is not.
    config = small(caches, small_disk / "run", steps=4)
    config.model.channels = (16, 32)
    run_training(config, stop_after=2)
    dump_toml(config, small_disk / "run.toml")
    checkpoints = config.output / "checkpoints"
    kept = {path.name: path.read_bytes() for path in checkpoints.iterdir()}
    fill(small_disk, leave=100_000)
    line = error_line(resume(small_disk / "run.toml"))
    assert line.startswith(f"error: {checkpoints}"), line
    assert line.endswith("No space left on device (free some space, then run the same command again)"), line
    assert {path.name: path.read_bytes() for path in checkpoints.iterdir()} == kept  # no .tmp left either

    # Export over an earlier model file: the earlier file stays as it was.
    (small_disk / "filler").unlink()
    model = small_disk / "model.fedgin.pt"
    assert invoke("export", "-c", trained / "checkpoints" / "best.pt", "-o", model).exit_code == 0
    earlier = model.read_bytes()
    fill(small_disk, leave=8_000)
    line = error_line(invoke("export", "-c", trained / "checkpoints" / "best.pt", "-o", model, "--overwrite"))
    assert (
        line == f"error: {model}: No space left on device (free some space, then run the same command again)"
    )
    assert model.read_bytes() == earlier
    assert sorted(path.name for path in small_disk.iterdir()) == [
        "filler",
        "model.fedgin.pt",
        "run",
        "run.toml",
    ]


# -- federation ----------------------------------------------------------------------------------------------


def test_a_round_whose_global_model_is_not_finite_is_not_committed(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    """FedAdam at a server rate float32 cannot hold (1e42) turns round 2's global model to Inf/NaN: the
    round fails in one line and last.pt keeps round 1. `federate --resume` refuses another model size or
    changed settings before Ray starts."""
    from fedgin.federation import run_federation
    from test_federation import fl_config

    config = fl_config(caches, tmp_path / "fl", strategy="fedadam", server_lr=1e-3)
    assert run_federation(config, stop_after=1).rounds == 1
    last = config.output / "checkpoints" / "last.pt"
    before = last.read_bytes()
    federation = config.federation.model_copy(update={"server_lr": 1e42})
    with pytest.raises(RunDiverged) as raised:
        run_federation(
            config.model_copy(update={"federation": federation}), resume=True, allow_changed_settings=True
        )
    message = str(raised.value)
    assert message.startswith("round 2: the averaged model has non-finite weights (") and "\n" not in message
    assert f"the last good checkpoint (round 1) is kept in {last}" in message
    assert "likely cause: federation.server_lr (1e+42) too high" in message
    assert last.read_bytes() == before

    changed = config.model_copy(deep=True)
    changed.federation.local_steps = 3
    dump_toml(changed, tmp_path / "fl.toml")
    line = error_line(invoke("federate", "--config", tmp_path / "fl.toml", "--resume"))
    assert line.startswith(f"error: {last}: --resume with changed settings (federation.local_steps 2 -> 3)")
    changed.model.channels = (8, 16)
    dump_toml(changed, tmp_path / "fl.toml")
    line = error_line(invoke("federate", "-c", tmp_path / "fl.toml", "--resume", "--allow-changed-settings"))
    assert line.startswith(f"error: {last}: weights do not fit the configured model (size mismatch"), line
    assert last.read_bytes() == before


def test_export_never_replaces_a_training_checkpoint(trained: Path, tmp_path: Path) -> None:
    """--overwrite replaces an exported model file only: a run's last.pt (its resume point) stays."""
    last = trained / "checkpoints" / "last.pt"
    before = last.read_bytes()
    line = error_line(
        invoke("export", "--checkpoint", trained / "checkpoints" / "best.pt", "-o", last, "--overwrite")
    )
    assert line.startswith(f"error: {last}: is not a model file fedgin exported"), line
    assert last.read_bytes() == before
    exported = tmp_path / "model.fedgin.pt"
    for _ in range(2):  # the second time it replaces its own earlier export
        args = ("export", "--checkpoint", trained / "checkpoints" / "best.pt", "-o", exported, "--overwrite")
        assert invoke(*args).exit_code == 0
