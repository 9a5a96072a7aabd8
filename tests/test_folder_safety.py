"""fedgin deletes only what it made: --overwrite and staged outputs replace a folder only when it carries
fedgin's marker of the same kind (or a known earlier shape of it); the root, home and working folder and
the folders above it are never replaced. Every refusal is one line, exit 2, before anything runs, and
every file is still there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedgin.cli import app
from fedgin.config import PreprocessConfig, RunConfig, SynthConfig, dump_toml
from fedgin.errors import ConfigError
from fedgin.folders import MARKER, check_replaceable, kind_of, mark, marked_kind, refuse_protected
from fedgin.io_utils import staged_folder
from fedgin.runs import Best, RunDirectory

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def refused(result, folder: Path | str) -> str:
    """The command exited 2 with exactly one `error:` line that names `folder`."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, lines
    assert str(folder) in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_config(caches: dict[str, Path], output: Path | str) -> RunConfig:
    """A tiny federation of two sites (both with held-out test cases); never trained by these tests."""
    return RunConfig(
        name="safety",
        output=output,
        data={"train": [{"cache": caches["ct"]}]},
        model={"channels": (4, 8), "strides": (2,), "num_res_units": 1},
        train={"batch_size": 2, "steps": 1, "device": "cpu"},
        federation={
            "rounds": 1,
            "local_steps": 1,
            "min_clients": 2,
            "clients": [
                {"name": "ct", "data": [{"cache": caches["ct"], "splits": ["train", "test"]}]},
                {"name": "mri", "data": [{"cache": caches["t2"], "splits": ["train", "test"]}]},
            ],
        },
    )


@pytest.fixture
def config_file(caches: dict[str, Path], tmp_path: Path) -> Path:
    path = tmp_path / "config" / "run.toml"
    path.parent.mkdir()
    dump_toml(run_config(caches, tmp_path / "unused-run"), path)
    return path


def fedgin_run(folder: Path) -> Path:
    """A run folder as fedgin makes it (marker, config.toml, a checkpoint)."""
    run = RunDirectory(folder, "single-site")
    config = RunConfig(name="r", output=folder, model={"channels": (4, 8), "strides": (2,)})
    run.start(config, None, overwrite=False)
    run.save_checkpoint("last.pt", model={}, config=config, progress=1, history=[], best=Best())
    return folder


def user_folder(folder: Path) -> Path:
    """A folder fedgin never made: a user's files."""
    (folder / "notes").mkdir(parents=True)
    (folder / "thesis.tex").write_text("three years of work\n")
    (folder / "notes" / "ideas.md").write_text("keep me\n")
    return folder


# -- stats, cross-site: a staged output never replaces another kind of folder --------------------------------
def test_stats_refuses_to_replace_a_run_folder(config_file: Path, tmp_path: Path) -> None:
    run = fedgin_run(tmp_path / "run")
    before = snapshot(run)
    line = refused(invoke("stats", "--config", config_file, "--out", run), run)
    assert "is a fedgin run folder, not a statistics folder" in line
    assert snapshot(run) == before
    assert not list(run.parent.glob(".run.*"))  # no staging folder either

    legacy = tmp_path / "legacy-run"  # a run of fedgin 0.8: no marker, config.toml and a checkpoint
    shutil.copytree(run, legacy)
    (legacy / MARKER).unlink()
    before = snapshot(legacy)
    assert "fedgin run folder" in refused(invoke("stats", "--config", config_file, "--out", legacy), legacy)
    assert snapshot(legacy) == before


def test_cross_site_refuses_to_replace_a_cache(
    caches: dict[str, Path], config_file: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save(
        {"model": {}, "config": run_config(caches, tmp_path / "m").model_dump(mode="json")}, checkpoint
    )
    for marked in (True, False):  # a cache with its marker, and one prepared before markers existed
        cache = tmp_path / f"cache-{marked}"
        shutil.copytree(caches["ct"], cache)
        if not marked:
            (cache / MARKER).unlink()
        before = snapshot(cache)
        args = ("cross-site", "--config", config_file, "--model", f"m={checkpoint}", "--out", cache)
        assert "is a fedgin cache, not a cross-site folder" in refused(invoke(*args), cache)
        assert snapshot(cache) == before


def test_stats_and_cross_site_refuse_a_users_folder(config_file: Path, tmp_path: Path) -> None:
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    line = refused(invoke("stats", "--config", config_file, "--out", mine), mine)
    assert "holds files fedgin did not make" in line and "nothing was changed" in line
    assert snapshot(mine) == before


@pytest.mark.parametrize(("kind", "legacy_file"), [("stats", "stats.json"), ("cross-site", "cross_site.csv")])
def test_a_staged_output_replaces_its_own_kind(tmp_path: Path, kind: str, legacy_file: str) -> None:
    out = tmp_path / "out"
    with staged_folder(out, kind) as staging:  # type: ignore[arg-type]
        (staging / legacy_file).write_text("first")
    assert marked_kind(out) == kind and (out / legacy_file).read_text() == "first"
    with staged_folder(out, kind) as staging:  # type: ignore[arg-type]
        (staging / legacy_file).write_text("second")
    assert (out / legacy_file).read_text() == "second"
    (out / MARKER).unlink()  # as written before markers existed: recognised by its files
    (out / "stale.txt").write_text("from the old outputs")
    with staged_folder(out, kind) as staging:  # type: ignore[arg-type]
        (staging / legacy_file).write_text("third")
    assert (out / legacy_file).read_text() == "third" and not (out / "stale.txt").exists()
    assert marked_kind(out) == kind
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging or old folder left


# -- train / federate --overwrite ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "federate"])
def test_overwrite_refuses_a_folder_fedgin_did_not_make(
    command: str, config_file: Path, tmp_path: Path
) -> None:
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    line = refused(invoke(command, "--config", config_file, "--out", mine, "--overwrite"), mine)
    assert "holds files fedgin did not make, not a run folder" in line
    assert snapshot(mine) == before
    # A study or a cache is not a run folder either.
    study = tmp_path / "study"
    study.mkdir()
    mark(study, "study")
    line = refused(invoke(command, "--config", config_file, "--out", study, "--overwrite"), study)
    assert "is a fedgin study folder, not a run folder" in line and (study / MARKER).is_file()


# -- the working folder, the home folder and the folders above are never a run -------------------------------
@pytest.mark.parametrize("where", ["dot", "cwd", "home", "ancestor"])
def test_working_home_and_ancestor_folders_are_always_refused(
    where: str, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top, home = user_folder(tmp_path / "top"), user_folder(tmp_path / "home")
    working = top / "a" / "b"
    working.mkdir(parents=True)
    (working / "data.csv").write_text("1,2,3\n")
    monkeypatch.chdir(working)
    monkeypatch.setenv("HOME", str(home))  # Path.home(): a home folder the test may put at risk
    target = {"dot": Path("."), "cwd": working, "home": home, "ancestor": top / "a"}[where]
    before = snapshot(tmp_path)
    for args in (
        ("train", "--config", config_file, "--out", target, "--overwrite"),
        ("train", "--config", config_file, "--out", target, "--resume"),
        ("stats", "--config", config_file, "--out", target),
    ):
        line = refused(invoke(*args), target)
        assert "fedgin never uses it" in line, line
    assert snapshot(tmp_path) == before


def test_root_and_home_are_protected_whatever_the_kind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for kind in ("run", "stats", "cross-site", "cache", "study", "data"):
        with pytest.raises(ConfigError, match="is the root folder"):
            refuse_protected(Path("/"), kind)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="is the home folder"):
            check_replaceable(Path.home(), kind)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="above the working folder"):
            check_replaceable(tmp_path.parent, kind)  # type: ignore[arg-type]
    check_replaceable(tmp_path / "new", "run")  # below the working folder: fine


# -- studies, caches, synthetic data -------------------------------------------------------------------------
def test_study_overwrite_deletes_only_a_study_folder(caches: dict[str, Path], tmp_path: Path) -> None:
    from fedgin.study.runner import _check_output, run_study
    from test_study import study_config

    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    with pytest.raises(ConfigError, match="holds files fedgin did not make, not a study folder"):
        run_study(study_config(caches, mine), overwrite=True)
    assert snapshot(mine) == before

    legacy = tmp_path / "study"  # a study of fedgin 0.8: study.toml, no marker
    legacy.mkdir()
    (legacy / "study.toml").write_text('name = "old"\n')
    _check_output(study_config(caches, legacy), resume=False, overwrite=True)
    assert not legacy.exists()


def test_prepare_and_synth_do_not_write_into_another_kind(caches: dict[str, Path], tmp_path: Path) -> None:
    from fedgin.prepare import prepare
    from fedgin.synth import generate

    run = fedgin_run(tmp_path / "run")
    before = snapshot(run)
    source = caches["ct"].parent / "data_ct"
    with pytest.raises(ConfigError, match="is a fedgin run folder, not a cache"):
        prepare(
            "totalseg-ct", source, run, PreprocessConfig(spacing_mm=8.0, size=48), workers=1, progress=False
        )
    synth = SynthConfig(subjects=1, shape=(16, 16, 4), modalities=["ct"])
    with pytest.raises(ConfigError, match="is a fedgin run folder, not a synthetic data set"):
        generate(synth, "totalseg", run, progress=False, overwrite=True)
    assert snapshot(run) == before
    assert marked_kind(caches["ct"]) == "cache" and marked_kind(source) == "data"


def test_demo_replaces_only_its_own_data(tmp_path: Path) -> None:
    from rich.console import Console

    from fedgin.demo import DEMO_DATASETS, generate_once

    folder = user_folder(tmp_path / "data" / "ts_ct")
    before = snapshot(folder)
    synth = SynthConfig(subjects=1, shape=(16, 16, 4), modalities=["ct"])
    with pytest.raises(ConfigError, match="not a synthetic data set"):
        generate_once(DEMO_DATASETS[0], synth, folder, Console(quiet=True))
    assert snapshot(folder) == before
    shutil.rmtree(folder)
    assert generate_once(DEMO_DATASETS[0], synth, folder, Console(quiet=True))
    assert kind_of(folder) == "data" and (folder / "meta.csv").is_file()
    (folder / "stale.txt").write_text("x")
    changed = synth.model_copy(update={"seed": 5})
    assert generate_once(DEMO_DATASETS[0], changed, folder, Console(quiet=True))  # regenerated in place
    assert not (folder / "stale.txt").exists() and kind_of(folder) == "data"
    assert sorted(path.name for path in folder.parent.iterdir()) == ["ts_ct", "ts_ct.synth.json"]
