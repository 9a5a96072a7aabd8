"""Settings refused for range and sense before anything runs (issue 27, items 6 and 7).

Each case drives the real command line with a small TOML file or option and expects one `error:` line
naming the setting, exit 2, no traceback, no pydantic URL, and nothing written where the command writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedgin.cli import app
from fedgin.config import PreprocessConfig
from fedgin.prepare import prepare

runner = CliRunner()


def assert_refused(args: list[str], setting: str, out: Path) -> None:
    """`fedgin ARGS` exits 2 with one error line naming `setting`, and `out` was not made."""
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert setting in lines[0], lines[0]
    assert "Traceback" not in result.output and "errors.pydantic.dev" not in result.output
    assert not out.exists(), sorted(out.rglob("*"))


def run_toml(tmp_path: Path, command: str, text: str, *options: str) -> tuple[list[str], Path]:
    """`fedgin COMMAND --config run.toml OPTIONS` for a run TOML of `text` whose output is tmp_path/out."""
    out = tmp_path / "out"
    toml = tmp_path / "run.toml"
    toml.write_text(f'name = "x"\noutput = "{out}"\n{text}\n')
    return [command, "--config", str(toml), *options], out


@pytest.mark.parametrize(
    ("command", "text", "setting"),
    [
        ("train", "[train]\nlr = inf", "train.lr"),
        ("train", "[train]\nweight_decay = inf", "train.weight_decay"),
        ("train", "[gin]\nconsistency_weight = inf", "gin.consistency_weight"),
        ("train", "[preprocess]\nspacing_mm = inf", "preprocess.spacing_mm"),
        ("federate", "[federation.privacy]\nclipping_norm = inf\nnoise_multiplier = 0.1", "clipping_norm"),
        ("federate", "[federation.privacy]\nclipping_norm = 1.0\nnoise_multiplier = inf", "noise_multiplier"),
        ("federate", '[federation]\nstrategy = "fedadam"\nserver_lr = inf', "federation.server_lr"),
        ("federate", "[federation]\nproximal_mu = inf", "federation.proximal_mu"),
        ("federate", '[federation.fault]\nsite = "a"\nmode = "scale"\nscale = nan', "federation.fault.scale"),
    ],
)
def test_non_finite_numbers(tmp_path: Path, command: str, text: str, setting: str) -> None:
    """inf and nan are refused when the settings are read (these once failed after Ray had started, or
    trained a NaN model with rc 0)."""
    args, out = run_toml(tmp_path, command, text)
    assert_refused(args, setting, out)


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("ct_window = [275, -125]", "preprocess.ct_window"),
        ("mri_percentiles = [99.5, 0.5]", "preprocess.mri_percentiles"),
        ("mri_percentiles = [0.5, 100.5]", "preprocess.mri_percentiles"),
        ("ct_window = [nan, 275]", "preprocess.ct_window"),
        ("volume_range_ml = [100.0, 1.0]", "stats.volume_range_ml"),
    ],
)
def test_ordered_windows_and_percentiles(tmp_path: Path, text: str, setting: str) -> None:
    """A reversed window or NaN bound once wrote all-zero or all-NaN images with rc 0."""
    if setting.startswith("stats."):
        args, out = run_toml(tmp_path, "stats", f"[stats]\n{text}")
        assert_refused(args, setting, out)
        return
    toml = tmp_path / "run.toml"
    toml.write_text(f"[preprocess]\n{text}\n")
    out = tmp_path / "cache"
    args = ["prepare", "--source", "totalseg-ct", "--root", tmp_path, "--out", out, "--config", toml]
    assert_refused(args, setting, out)


@pytest.mark.parametrize(
    ("command", "text", "options", "setting"),
    [
        ("train", "[model]\nchannels = [-8, 16, 32]\nstrides = [2, 2]", [], "model.channels"),
        ("train", '[train]\ndevice = "banana"', [], "train.device"),
        ("train", '[train]\ndevice = "cuda:x"', [], "train.device"),
        ("evaluate", "", ["--pred", ".", "--ref", ".", "--device", "banana"], "--device banana"),
        ("predict", "", ["-i", ".", "-m", "model.pt", "--device", "banana"], "--device banana"),
        ("prepare", "", ["--source", "amos", "--root", ".", "--workers", "0"], "--workers"),
        ("prepare", "", ["--source", "totalseg-ct", "--root", ".", "--label-map", '{"1": 1}'], "label map"),
        ("prepare", "", ["--source", "totalseg-ct", "--root", ".", "--modality", "mri"], "a modality"),
    ],
)
def test_model_device_and_options(
    tmp_path: Path, command: str, text: str, options: list[str], setting: str
) -> None:
    if not text:  # options only
        out = tmp_path / "out"
        args = [command, "--out", out, *options]
    else:
        args, out = run_toml(tmp_path, command, text, *options)
    assert_refused(args, setting, out)


def test_sizes_within_what_the_machine_and_formats_hold(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for shape in ("100000,100000,100000", "30000,30000,30000"):  # NIfTI-1's int16 sizes; the memory
        assert_refused(["synth", "--out", out, "--shape", shape], "shape", out)
    mix = tmp_path / "mix.toml"
    mix.write_text("[weights]\nct_pv_120kvp_standard_3mm = 1e308\nct_art_100kvp_smooth_3mm = 1e308\n")
    assert_refused(["synth", "--out", out, "--protocols", mix], "weight of", out)
    assert_refused(["certs", "--out", out, "--sites", "a", "--days", "10000000"], "--days", out)
    for text, setting in (
        ("size = 1000000", "preprocess.size"),
        ("spacing_mm = 1e-4", "preprocess.spacing_mm"),
        ("spacing_mm = 1e6", "preprocess.spacing_mm"),  # once a nearly constant cache with rc 0
    ):
        toml = tmp_path / "run.toml"
        toml.write_text(f"[preprocess]\n{text}\n")
        prepare_args = ["prepare", "--source", "amos", "--root", tmp_path, "--out", out, "--config", toml]
        assert_refused(prepare_args, setting, out)
    # Sizes that once ran until killed, without a word.
    args, run_out = run_toml(tmp_path, "train", "[train]\nbatch_size = 100000000")
    assert_refused(args, "train.batch_size", run_out)
    preview = ["gin-preview", "--data", tmp_path, "-o", out / "g.png", "--draws", "100000"]
    assert_refused(preview, "--draws", out)
    args, run_out = run_toml(tmp_path, "stats", "[stats]\nnoise_epsilon = 1e-300")
    assert_refused(args, "stats.noise_epsilon", run_out)


@pytest.mark.parametrize(
    ("case", "setting"),
    [
        ("ipa_without_gin", "ipa"),
        ("empty_splits", "splits"),
        ("empty_domains", "domains"),
        ("ignored_key", "train.learning_rate"),
        ("study_methods", "--methods"),
        ("study_seeds", "--seeds"),
        ("limited_ratios", "ratios"),
        ("shadowing_protocol", "custom protocol 'ct_pv_120kvp_standard_3mm'"),
        ("nsd_tolerance_negative", "--nsd-tolerance"),
        ("nsd_tolerance_nan", "--nsd-tolerance"),
    ],
)
def test_settings_that_mean_nothing(tmp_path: Path, case: str, setting: str) -> None:
    """IPA without GIN, empty lists, ignored keys, a custom protocol shadowing a shipped one, a surface
    tolerance that is not a positive number: each once ran silently with something else than was asked."""
    out = tmp_path / "out"
    data = '[[data.train]]\ncache = "c"\n'
    if case == "ipa_without_gin":
        args, out = run_toml(tmp_path, "train", "[gin]\nenabled = false\nipa = true")
    elif case == "empty_splits":
        args, out = run_toml(tmp_path, "train", f"{data}splits = []")
    elif case == "empty_domains":
        args, out = run_toml(tmp_path, "train", f"{data}domains = []")
    elif case == "ignored_key":
        args, out = run_toml(tmp_path, "train", "[train]\nlearning_rate = 1e-3")
    elif case in ("study_methods", "study_seeds"):
        args = ["study", "--preset", "quick", "--out", out, f"--{case.removeprefix('study_')}", ""]
    elif case == "limited_ratios":
        toml = tmp_path / "study.toml"
        toml.write_text(
            f'output = "{out}"\nscenario = "limited"\nratios = []\n'
            '[[sites]]\nname = "a"\n[[test]]\ncache = "c"\n[federation]\nlocal_steps = 1\n'
        )
        args = ["study", "--config", toml]
    elif case == "shadowing_protocol":
        mix = tmp_path / "mix.toml"
        mix.write_text(
            "[weights]\nct_pv_120kvp_standard_3mm = 1\n"
            '[custom.ct_pv_120kvp_standard_3mm]\nmodality = "ct"\nkvp = 80\n'
        )
        args = ["synth", "--out", out, "--protocols", mix]
    else:
        value = "-1" if case.endswith("negative") else "nan"
        args = ["evaluate", "--pred", tmp_path, "--ref", tmp_path, "--out", out, f"--nsd-tolerance={value}"]
    assert_refused(args, setting, out)


@pytest.fixture(scope="module")
def train_only_cache(caches: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CT fixture's data prepared with every case in the train split: no held-out (test) cases."""
    out = tmp_path_factory.mktemp("train_only") / "cache"
    report = prepare(
        "totalseg-ct", caches["ct"].parent / "data_ct", out, PreprocessConfig(spacing_mm=8.0, size=48),
        workers=1, progress=False, split_override="train",
    )  # fmt: skip
    assert report.ok, report.failed
    return out


def test_late_failures_come_before_training(
    caches: dict[str, Path], train_only_cache: Path, tmp_path: Path
) -> None:
    """`federate --cross-site` with a site that has no test cases, and a TensorBoard folder that cannot be
    made, are refused before the first step (they once failed after training)."""
    model = (
        "[model]\nchannels = [4, 8]\nstrides = [2]\nnum_res_units = 1\n[train]\nsteps = 1\nbatch_size = 2\n"
    )
    federation = (
        f"{model}[federation]\nrounds = 1\nlocal_steps = 1\n"
        f'[[federation.clients]]\nname = "a"\n[[federation.clients.data]]\ncache = "{caches["ct"]}"\n'
        f'[[federation.clients]]\nname = "b"\n[[federation.clients.data]]\ncache = "{train_only_cache}"\n'
    )
    args, out = run_toml(tmp_path, "federate", federation, "--cross-site")
    assert_refused(args, "site 'b': no cached cases of split 'test'", out)

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args, out = run_toml(
        tmp_path, "train", f'{model}[[data.train]]\ncache = "{caches["ct"]}"',
        "--tensorboard", str(blocker / "tb"),
    )  # fmt: skip
    assert_refused(args, "tracking.tensorboard", out)
    study = ["study", "--preset", "quick", "--out", out, "--tensorboard", blocker / "tb"]
    assert_refused(study, "tracking.tensorboard", out)  # before its sources are prepared
