"""Failure handling (issue 12): every case a user can cause gets the behaviour they expect, with real files
and real commands: a refusal in one line naming the file and the problem, never a traceback, never a
silently wrong result."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tomli_w
import typer
from typer.testing import CliRunner

from fedgin.cli import app, load_preprocess_config, user_errors
from fedgin.config import (
    DataSpec,
    FederationConfig,
    ModelConfig,
    PreprocessConfig,
    RunConfig,
    dump_toml,
    load_toml,
    validate,
)
from fedgin.errors import ConfigError
from fedgin.study.config import load_study

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
FEDGIN = Path(sys.executable).parent / "fedgin"
SMALL = ["--shape", "48,48,12", "--spacing", "8,8,25"]
TINY_MODEL = {"channels": [4, 8], "strides": [2], "num_res_units": 1}
PREPROCESS = {"preprocess": {"spacing_mm": 8.0, "size": 48}}


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def prepare(source: Path, out: Path, *options: object):
    return invoke(
        "prepare", "--source", "totalseg-ct", "--root", source, "--out", out, "--workers", 1, *options
    )


def error_line(result) -> str:
    """The one line a failed command printed on stderr (asserts there is exactly one and no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic TotalSegmentator-layout CT data set (3 subjects of 48 x 48 x 12 voxels)."""
    data = tmp_path_factory.mktemp("failures") / "ts_ct"
    result = invoke("synth", "--subjects", 3, "--seed", 3, "--out", data, *SMALL)
    assert result.exit_code == 0, result.output
    return data


@pytest.fixture(scope="module")
def prepared(source: Path) -> Path:
    """The cache of `source` (8 mm, 48 x 48); tests corrupt copies of it, never the cache itself."""
    cache = source.parent / "cache"
    config = _write(source.parent / "prepare.toml", PREPROCESS)
    result = prepare(source, cache, "--config", config)
    assert result.exit_code == 0, result.output
    return cache


@pytest.fixture
def cache(prepared: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared cache, to damage."""
    return Path(shutil.copytree(prepared, tmp_path / "cache"))


@pytest.fixture(scope="module")
def checkpoint(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a real (tiny, 2-step) training run on the prepared cache, written by `fedgin train`."""
    folder = tmp_path_factory.mktemp("failures_run")
    config = _run_toml(folder / "run.toml", [prepared], folder / "run")
    result = invoke("train", "--config", config)
    assert result.exit_code == 0, result.output
    return folder / "run" / "checkpoints" / "best.pt"


def _write(path: Path, tables: dict) -> Path:
    path.write_text(tomli_w.dumps(tables), encoding="utf-8")
    return path


def _run_toml(path: Path, caches: list[Path], output: Path, **train: object) -> Path:
    return _write(
        path,
        {
            "name": "failures",
            "output": str(output),
            "data": {"train": [{"cache": str(cache)} for cache in caches]},
            "model": TINY_MODEL,
            "train": {"steps": 2, "batch_size": 4, "val_interval": 2, "checkpoint_interval": 2, **train},
        },
    )


def _index(cache: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(cache / "index.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _rewrite_index(cache: Path, columns: list[str], rows: list[dict[str, str]]) -> Path:
    with open(cache / "index.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return cache / "index.csv"


# --------------------------------------------------------------------------------------------------------
# 1. `prepare --config` validates the whole file


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[preproces]\nsize = 32\n", "preproces: unknown setting (did you mean 'preprocess'?)"),
        ("[preprocess]\nsise = 32\n", "preprocess.sise: unknown setting (did you mean 'size'?)"),
        ("spacing_mm = 2.0\n", "spacing_mm: unknown setting"),
        ("[preprocess]\nsize = 32\n[train]\nstepz = 3\n", "train.stepz: unknown setting"),
    ],
)
def test_prepare_refuses_a_misspelled_table_or_key(
    source: Path, tmp_path: Path, toml: str, named: str
) -> None:
    """A typo used to be ignored and the cache built with the defaults; now nothing is prepared."""
    config = tmp_path / "run.toml"
    config.write_text(toml)
    out = tmp_path / "cache"
    result = prepare(source, out, "--config", config)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith(f"error: {config}: ") and named in line, line
    assert not out.exists()


def test_prepare_config_accepts_every_shipped_run_and_study_file() -> None:
    for path in sorted((REPO / "examples").glob("*.toml")):
        assert load_preprocess_config(path) == load_toml(path, RunConfig).preprocess, path
    presets = sorted((REPO / "src" / "fedgin" / "study" / "presets").glob("*.toml"))
    studies = sorted((REPO / "examples" / "studies").glob("*.toml"))
    assert presets and studies
    for path in [*presets, *studies]:
        assert load_preprocess_config(path) == load_study(path).preprocess, path


def test_prepare_config_table_is_used(source: Path, tmp_path: Path) -> None:
    config = _write(
        tmp_path / "run.toml", {"preprocess": {"spacing_mm": 16, "size": 32}}
    )  # 16: int for float
    out = tmp_path / "cache"
    result = prepare(source, out, "--config", config)
    assert result.exit_code == 0, result.output
    _, rows = _index(out)
    assert {(row["height"], row["spacing_x"]) for row in rows} == {("32", "16")}


# --------------------------------------------------------------------------------------------------------
# 2. Strict types: numbers and switches written as strings are refused


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("federation", "rounds", "3"),
        ("train", "steps", "3"),
        ("train", "lr", "1e-3"),
        ("gin", "enabled", "true"),
        ("preprocess", "size", 32.5),
        ("model", "dimensions", "2"),
    ],
)
def test_numbers_and_switches_given_as_strings_are_refused(
    prepared: Path, tmp_path: Path, table: str, key: str, value: object
) -> None:
    """`rounds = "3"` used to be read as 3; the run does not start."""
    config = _run_toml(tmp_path / "run.toml", [prepared], tmp_path / "run")
    tables = load_toml(config, RunConfig).model_dump(mode="json", exclude_none=True)
    tables[table][key] = value
    _write(config, tables)
    command = "federate" if table == "federation" else "train"
    result = invoke(command, "--config", config)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith(f"error: {config}: {table}.{key}: "), line
    assert repr(value) in line
    assert not (tmp_path / "run").exists()


def test_strict_settings_still_read_toml_json_and_checkpoint_round_trips(tmp_path: Path) -> None:
    """Paths come as strings and tuples as lists from TOML and JSON; integers are fine for floats."""
    raw = {
        "output": "runs/x",
        "data": {"train": [{"cache": "cache/ct", "max_cases": 2}], "test": [{"cache": "cache/t2"}]},
        "preprocess": {"spacing_mm": 3, "ct_window": [-100, 200], "mri_percentiles": [1, 99.0]},
        "model": {"channels": [4, 8], "strides": [2], "patch_size": [8, 32, 32]},
        "train": {"lr": 1, "amp": False},
        "federation": {
            "rounds": 3,
            "round_timeout_s": 60,
            "clients": [{"name": "a", "data": [{"cache": "c"}]}],
        },
    }
    config = validate(raw, RunConfig)
    assert config.output == Path("runs/x") and config.model.channels == (4, 8)
    assert config.preprocess.ct_window == (-100.0, 200.0) and config.train.lr == 1.0
    assert RunConfig.model_validate_json(config.model_dump_json()) == config
    assert RunConfig.model_validate(config.model_dump(mode="json")) == config  # as stored in checkpoints
    assert RunConfig.model_validate(config.model_dump()) == config
    dump_toml(config, tmp_path / "config.toml")
    assert load_toml(tmp_path / "config.toml", RunConfig) == config
    # Python callers and the CLI's overrides (validate_assignment) keep working.
    config.output = tmp_path / "y"
    config.train.steps = 5
    assert DataSpec(cache=str(tmp_path)).cache == tmp_path
    assert ModelConfig(channels=[2, 4], strides=(2,)).channels == (2, 4)
    assert FederationConfig(rounds=10, local_steps=50).rounds == 10
    with pytest.raises(ConfigError, match="got the string '8'"):
        validate({"size": "8"}, PreprocessConfig, source="x")


# --------------------------------------------------------------------------------------------------------
# 3. The cache is checked when opened


def _garbage(cache: Path) -> tuple[Path, str]:
    (cache / "index.csv").write_bytes(os.urandom(64) + b"\xff\xfe\x00")
    return cache / "index.csv", "not a fedgin cache index"


def _text_garbage(cache: Path) -> tuple[Path, str]:
    (cache / "index.csv").write_text("this is not\na cache index\n")
    return cache / "index.csv", "not a fedgin cache index (no columns case_id, source"


def _missing_column(cache: Path) -> tuple[Path, str]:
    columns, rows = _index(cache)
    columns.remove("n_slices")
    return _rewrite_index(cache, columns, rows), "no columns n_slices"


def _bad_number(cache: Path) -> tuple[Path, str]:
    columns, rows = _index(cache)
    rows[1]["height"] = "4S"
    return _rewrite_index(cache, columns, rows), f"case {rows[1]['case_id']!r}: height is '4S', not a whole"


def _short_row(cache: Path) -> tuple[Path, str]:
    text = (cache / "index.csv").read_text().splitlines()
    text[2] = ",".join(text[2].split(",")[:5])
    (cache / "index.csv").write_text("\n".join(text) + "\n")
    return cache / "index.csv", "line 3: "


def _truncated_image(cache: Path) -> tuple[Path, str]:
    _, rows = _index(cache)
    npy = cache / rows[1]["image_file"]
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    return npy, "truncated: "


def _missing_label(cache: Path) -> tuple[Path, str]:
    _, rows = _index(cache)
    (cache / rows[0]["label_file"]).unlink()
    return cache / rows[0]["label_file"], "cached array is missing"


def _wrong_shape(cache: Path) -> tuple[Path, str]:
    columns, rows = _index(cache)
    rows[0]["n_slices"] = str(int(rows[0]["n_slices"]) + 1)
    _rewrite_index(cache, columns, rows)
    return cache / rows[0]["image_file"], "differs from index.csv's"


def _not_npy(cache: Path) -> tuple[Path, str]:
    _, rows = _index(cache)
    (cache / rows[0]["label_file"]).write_text("hello")
    return cache / rows[0]["label_file"], "not a readable .npy array"


DAMAGE = {
    "garbage index": _garbage,
    "text index": _text_garbage,
    "missing column": _missing_column,
    "bad number": _bad_number,
    "short row": _short_row,
    "truncated image": _truncated_image,
    "missing label": _missing_label,
    "shape differs": _wrong_shape,
    "not an npy": _not_npy,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_is_refused_by_inspect(cache: Path, damage: str) -> None:
    path, problem = DAMAGE[damage](cache)
    result = invoke("inspect", cache)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith(f"error: {path}: ") and problem in line, line


@pytest.mark.parametrize("damage", ["truncated image", "bad number"])
def test_train_on_a_damaged_cache_stops_before_the_first_step(
    cache: Path, tmp_path: Path, damage: str
) -> None:
    """A truncated .npy used to train for a few steps, then crash with a 77-line traceback."""
    path, problem = DAMAGE[damage](cache)
    config = _run_toml(tmp_path / "run.toml", [cache], tmp_path / "run", steps=50)
    result = invoke("train", "--config", config)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith(f"error: {path}: ") and problem in line, line
    assert not (tmp_path / "run" / "metrics.csv").exists()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_prepare_again_repairs_a_damaged_case(cache: Path, source: Path, tmp_path: Path) -> None:
    """The advice of the error (re-run prepare) works: the damaged case is prepared again, the others kept."""
    truncated, _ = _truncated_image(cache)
    config = _write(tmp_path / "prepare.toml", PREPROCESS)
    result = prepare(source, cache, "--config", config)
    assert result.exit_code == 0, result.output
    assert "1 prepared, 2 unchanged, 0 failed" in " ".join(result.output.split())
    assert invoke("inspect", cache).exit_code == 0
    assert np.load(truncated).shape[1:] == (48, 48)


# --------------------------------------------------------------------------------------------------------
# 4. `predict` refuses a label map unless --force


def test_predict_refuses_a_totalsegmentator_mask_unless_forced(
    source: Path, checkpoint: Path, tmp_path: Path
) -> None:
    mask = source / "s0000" / "segmentations" / "liver.nii.gz"
    assert set(np.unique(np.asarray(nib.load(mask).dataobj))) == {0, 1}
    out = tmp_path / "liver_pred.nii.gz"
    result = invoke("predict", "-i", mask, "-o", out, "-m", checkpoint, "--device", "cpu")
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith(f"error: {mask}: looks like a label map") and "--force" in line, line
    assert "2 whole-number values: 0, 1" in line
    assert not out.exists() and not list(tmp_path.iterdir())

    forced = invoke("predict", "-i", mask, "-o", out, "-m", checkpoint, "--device", "cpu", "--force")
    assert forced.exit_code == 0, forced.output
    assert out.is_file()

    # fedgin's own output is a label map by its header (intent "label"), refused before any voxel is read
    again = invoke("predict", "-i", out, "-o", tmp_path / "again.nii.gz", "-m", checkpoint, "--device", "cpu")
    assert again.exit_code == 2, again.output
    assert "its header's intent is 'label'" in error_line(again)


def test_predict_takes_the_scan_and_a_folder_with_a_mask_is_refused_whole(
    source: Path, checkpoint: Path, tmp_path: Path
) -> None:
    scan = source / "s0001" / "ct.nii.gz"
    result = invoke(
        "predict", "-i", scan, "-o", tmp_path / "scan.nii.gz", "-m", checkpoint, "--device", "cpu"
    )
    assert result.exit_code == 0, result.output

    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(scan, folder / "a_scan.nii.gz")
    labels = np.asarray(nib.load(source / "s0001" / "segmentations" / "kidney_left.nii.gz").dataobj) * 2
    nib.save(nib.Nifti1Image(labels.astype(np.int16), nib.load(scan).affine), folder / "b_mask.nii.gz")
    out = tmp_path / "out"
    result = invoke("predict", "-i", folder, "-o", out, "-m", checkpoint, "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert error_line(result).startswith(f"error: {folder / 'b_mask.nii.gz'}: looks like a label map")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------------
# 5. Impossible counts and sizes


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["synth", "--spacing", "0,0,0"], "spacing.0: Input should be greater than 0"),
        (["synth", "--spacing", "3,-1,5"], "spacing.1: Input should be greater than 0"),
        (["synth", "--spacing", "3,nan,5"], "spacing.1"),
        (["synth", "--shape", "0,48,12"], "shape.0: Input should be greater than 0"),
        (["synth", "--shape", "48,48,-2"], "shape.2: Input should be greater than 0"),
        (["gin-preview", "--data", "{cache}", "--draws", "0"], "--draws must be from 1 to 64, got 0"),
        (["gin-preview", "--data", "{cache}", "--draws", "-3"], "--draws must be from 1 to 64, got -3"),
    ],
)
def test_zero_or_negative_sizes_are_refused(
    prepared: Path, tmp_path: Path, args: list[str], problem: str
) -> None:
    out = tmp_path / "out"
    result = invoke(*(arg.format(cache=prepared) for arg in args), "--out", out)
    assert result.exit_code == 2, result.output
    assert problem in error_line(result)
    assert not out.exists()


# --------------------------------------------------------------------------------------------------------
# 6. OSError and ValueError from the user's own paths: one line, never a traceback


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write into (mode 555); see `run_unprivileged` for how root is kept out."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def run_unprivileged(*args: object) -> subprocess.CompletedProcess:
    """Run the real `fedgin` executable so that file permissions apply to it.

    These tests run as root, and root writes into a mode-555 folder anyway (CAP_DAC_OVERRIDE). For root,
    the command runs under `setpriv` with CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER dropped
    from its bounding set: still uid 0 (so it reads the test's root-owned files), but it meets the folder's
    permission bits as any other user does, and the kernel answers its first write with EACCES, exactly
    what a user sees on a read-only output folder. Another user runs the command as it is.
    """
    command = [str(FEDGIN), *(str(arg) for arg in args)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a folder read-only for the command")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *command]
    environment = {**os.environ, "COLUMNS": "200"}
    environment.pop("FEDGIN_TRACEBACK", None)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, check=False)


def _labels_folders(tmp_path: Path) -> list[object]:
    """`--pred PRED --ref REF`: two folders holding the same label file."""
    from fedgin.config import SynthConfig
    from fedgin.synth import make_subject

    _, label, affine = make_subject(SynthConfig(shape=(48, 48, 12), spacing=(8, 8, 25)), 0, "ct")
    for name in ("pred", "ref"):
        (tmp_path / name).mkdir()
        nib.save(nib.Nifti1Image(label, affine), tmp_path / name / "case0.nii.gz")
    return ["--pred", tmp_path / "pred", "--ref", tmp_path / "ref"]


def command_args(command: str, tmp: Path, out: Path, inputs: dict[str, Path]) -> list[object]:
    """The arguments of `command` writing into the folder `out`, reading `inputs` (cache, source, ...)."""
    if command == "train":
        return ["train", "--config", _run_toml(tmp / "run.toml", [inputs["cache"]], out / "run")]
    if command == "prepare":
        return ["prepare", "--source", "totalseg-ct", "--root", inputs["source"], "--out", out / "cache"]
    if command == "evaluate":
        return ["evaluate", *_labels_folders(tmp), "--out", out / "eval"]
    if command == "export":
        return ["export", "--checkpoint", inputs["checkpoint"], "--out", out / "model.pt"]
    if command == "gin-preview":
        return ["gin-preview", "--data", inputs["cache"], "--out", out / "gin.png"]
    if command == "synth":
        return ["synth", "--subjects", 1, "--out", out / "data", *SMALL]
    assert command == "certs"
    return ["certs", "--out", out / "certs", "--sites", "ct,mri"]


READ_ONLY_COMMANDS = ["train", "prepare", "evaluate", "export", "gin-preview", "synth", "certs"]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS)
def test_read_only_output_folder_is_one_line(
    command: str, read_only: Path, tmp_path: Path, prepared: Path, source: Path, checkpoint: Path
) -> None:
    inputs = {"cache": prepared, "source": source, "checkpoint": checkpoint}
    result = run_unprivileged(*command_args(command, tmp_path, read_only, inputs))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {read_only}") and "Permission denied" in lines[0], lines[0]
    assert list(read_only.iterdir()) == []


def test_output_under_a_file_is_one_line(tmp_path: Path) -> None:
    """A path through a regular file fails for every user (NotADirectoryError), root included."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    result = invoke("synth", "--subjects", 1, "--out", blocker / "data", *SMALL)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith(f"error: {blocker}"), line
    assert "Not a directory (a part of the path is a file, not a folder)" in line


def test_value_error_is_one_line_and_bugs_keep_their_traceback(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """matplotlib refuses an unknown image format with a ValueError: the user's own path, one line (and
    its traceback with FEDGIN_TRACEBACK=1); any other exception is a bug and keeps its traceback."""
    args = ["gin-preview", "--data", prepared, "--out", tmp_path / "gin.webpx"]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "webpx" in error_line(result)
    monkeypatch.setenv("FEDGIN_TRACEBACK", "1")
    assert isinstance(invoke(*args).exception, ValueError)
    monkeypatch.delenv("FEDGIN_TRACEBACK")

    @user_errors
    def bug() -> None:
        raise RuntimeError("a fedgin bug")

    @user_errors
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(RuntimeError, match="a fedgin bug"):
        bug()
    with pytest.raises(typer.Exit) as stopped:
        interrupted()
    assert stopped.value.exit_code == 130
