"""The `fedgin` command line end to end: real synthetic NIfTI files, real caches, one-line errors."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from fedgin.cli import app

runner = CliRunner()
SMALL = ["--shape", "48,48,16", "--spacing", "8,8,20"]


def invoke(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def index_rows(cache: Path) -> list[dict[str, str]]:
    with open(cache / "index.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("synth", "prepare", "inspect", "demo"):
        assert command in result.output


def test_synth_prepare_inspect(tmp_path: Path) -> None:
    data, cache = tmp_path / "ts_mri", tmp_path / "cache"
    result = invoke(
        "synth",
        "--layout",
        "totalseg",
        "--modality",
        "mri_t2",
        "--subjects",
        3,
        "--seed",
        1,
        "--out",
        data,
        "--preview",
        *SMALL,
    )
    assert result.exit_code == 0, result.output
    assert (data / "meta.csv").is_file() and (data / "preview.png").stat().st_size > 0
    assert sorted(p.name for p in data.glob("s*")) == ["s0000", "s0001", "s0002"]

    result = invoke("prepare", "--source", "totalseg-mri", "--root", data, "--out", cache, "--workers", 1)
    assert result.exit_code == 0, result.output
    rows = index_rows(cache)
    assert len(rows) == 3
    assert {row["domain"] for row in rows} == {"mri_t2"}
    assert {row["modality"] for row in rows} == {"mri"}

    rerun = invoke("prepare", "--source", "totalseg-mri", "--root", data, "--out", cache, "--workers", 1)
    assert rerun.exit_code == 0 and "3 unchanged" in rerun.output

    shown = invoke("inspect", cache)
    assert shown.exit_code == 0, shown.output
    assert "mri_t2" in shown.output and "liver" in shown.output
    # every case's protocol, from meta.csv through the cache index to inspect's table
    protocols = {row["protocol"] for row in index_rows(cache)}
    assert protocols and all(name.startswith("mr") and "_t2_" in name for name in protocols)
    assert "Cases per protocol" in shown.output


def test_protocols_lists_the_mixes() -> None:
    from fedgin.synth.protocols import MIXES, PROTOCOLS

    result = invoke("protocols", "--markdown")
    assert result.exit_code == 0, result.output
    header, _, *rows = result.output.strip().splitlines()
    assert header.split(" | ")[3:] == [*list(MIXES)[:-1], f"{list(MIXES)[-1]} |"]
    assert {row.split(" | ")[1].strip("`") for row in rows} == set(PROTOCOLS)
    one = invoke("protocols", "amos")
    assert one.exit_code == 0 and "ct_del_120kvp" in one.output and "totalseg-ct" not in one.output
    unknown = invoke("protocols", "amoss")
    assert unknown.exit_code != 0 and "did you mean 'amos'" in unknown.output


def test_prepare_config_table_changes_the_cache(tmp_path: Path) -> None:
    data, cache = tmp_path / "ct", tmp_path / "cache"
    assert invoke("synth", "--subjects", 1, "--out", data, *SMALL).exit_code == 0
    config = tmp_path / "run.toml"
    config.write_text("[preprocess]\nspacing_mm = 16.0\nsize = 32\n")
    result = invoke(
        "prepare",
        "--source",
        "totalseg-ct",
        "--root",
        data,
        "--out",
        cache,
        "--config",
        config,
        "--workers",
        1,
    )
    assert result.exit_code == 0, result.output
    (row,) = index_rows(cache)
    assert (int(row["height"]), int(row["width"]), float(row["spacing_x"])) == (32, 32, 16.0)


def test_bad_case_fails_with_one_line_naming_the_file(tmp_path: Path) -> None:
    data, cache = tmp_path / "ct", tmp_path / "cache"
    assert invoke("synth", "--subjects", 3, "--out", data, *SMALL).exit_code == 0
    broken = data / "s0001" / "ct.nii.gz"
    broken.write_bytes(gzip.compress(b"\0" * 4000)[:50])  # a truncated gzip stream
    result = invoke("prepare", "--source", "totalseg-ct", "--root", data, "--out", cache, "--workers", 1)
    assert result.exit_code == 1
    failure_lines = [line for line in result.output.splitlines() if str(broken) in line]
    assert len(failure_lines) == 1
    assert "Traceback" not in result.output
    assert {row["source_case_id"] for row in index_rows(cache)} == {"s0000", "s0002"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prepare", "--source", "totalseg-ct", "--root", "{empty}", "--out", "{tmp}/c"], "cases found"),
        (["prepare", "--source", "nosuch", "--root", "{empty}", "--out", "{tmp}/c"], "nosuch"),
        (["inspect", "{empty}"], "index.csv"),
        (["synth", "--shape", "1,2", "--out", "{tmp}/x"], "three"),
        (["synth", "--modality", "pet", "--out", "{tmp}/x"], "modalities"),
        (
            [
                "prepare",
                "--source",
                "totalseg-ct",
                "--root",
                "{empty}",
                "--out",
                "{tmp}/c",
                "--config",
                "{tmp}/missing.toml",
            ],
            "missing.toml",
        ),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke(*(arg.format(empty=empty, tmp=tmp_path) for arg in args))
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_demo_generates_and_prepares_every_modality(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "--subjects", 2, "--workers", 1, "--no-study")
    assert result.exit_code == 0, result.output
    domains = {
        name: {row["domain"] for row in index_rows(out / "cache" / name)}
        for name in ("ts_ct", "ts_mri_t1", "ts_mri_t2", "amos")
    }
    assert domains == {
        "ts_ct": {"ct"},
        "ts_mri_t1": {"mri_t1"},
        "ts_mri_t2": {"mri_t2"},
        "amos": {"ct", "mri_t1", "mri_t2"},
    }
    assert {row["split"] for row in index_rows(out / "cache" / "amos")} == {"test"}
    assert (out / "preview.png").is_file() and (out / "demo.json").is_file()
    assert (out / "protocols.png").stat().st_size > 0
    # training sources from the TotalSegmentator-like mixes, the test source from the AMOS-like mix
    from fedgin.synth.protocols import MIXES

    for name, mix in (("ts_ct", "totalseg-ct"), ("ts_mri_t1", "totalseg-mri"), ("amos", "amos")):
        assert {row["protocol"] for row in index_rows(out / "cache" / name)} <= set(MIXES[mix]), name
    again = invoke("demo", "--out", out, "--subjects", 2, "--workers", 1, "--no-study")
    assert again.exit_code == 0 and "reusing" in again.output


def test_evaluate_folders_and_gin_preview(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    from fedgin.config import SynthConfig
    from fedgin.synth import make_subject

    config = SynthConfig(shape=(48, 48, 16), spacing=(8, 8, 20))
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for folder in (ref, pred):
        folder.mkdir()
    for index in range(2):
        _, label, affine = make_subject(config, index, "ct")
        nib.save(nib.Nifti1Image(label, affine), ref / f"case{index}.nii.gz")
        shifted = np.roll(label, 1, axis=0) if index else label
        nib.save(nib.Nifti1Image(shifted, affine), pred / f"case{index}.nii.gz")
    result = invoke("evaluate", "--pred", pred, "--ref", ref, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "eval" / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    dice = {(row["case_id"], row["organ"]): float(row["dice"]) for row in rows}
    assert all(dice[("case0", organ)] == 1.0 for organ in ("liver", "kidneys", "spleen"))
    assert 0.5 < dice[("case1", "liver")] < 1.0

    missing = invoke("evaluate", "--pred", pred)
    assert missing.exit_code == 2 and "--checkpoint" in missing.output

    data, cache = tmp_path / "t2", tmp_path / "cache"
    assert invoke("synth", "--modality", "mri_t2", "--subjects", 1, "--out", data, *SMALL).exit_code == 0
    assert (
        invoke(
            "prepare", "--source", "totalseg-mri", "--root", data, "--out", cache, "--workers", 1
        ).exit_code
        == 0
    )
    png = tmp_path / "gin.png"
    result = invoke("gin-preview", "--data", cache, "--out", png, "--draws", 3)
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 10_000


def test_certs_makes_a_ca_and_one_key_pair_per_site(tmp_path: Path) -> None:
    result = invoke("certs", "--out", tmp_path / "certs", "--sites", "ct,mri")
    assert result.exit_code == 0, result.output
    for name in ("ca.crt", "server.crt", "server.key", "supernodes/ct.key", "supernodes/mri.pub"):
        assert (tmp_path / "certs" / name).stat().st_size > 0, name
    assert (tmp_path / "certs" / "supernodes" / "ct.key").stat().st_mode & 0o077 == 0
    assert invoke("certs", "--out", tmp_path / "x", "--sites", " ").exit_code == 2


def help_text(*command: str) -> str:
    """A command's --help as plain text on a wide terminal, so that no phrase is wrapped over two lines."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return click.unstyle(result.output)


def parsed_options(command: list[str], args: list[str]) -> dict[str, object]:
    """What click parses from `args` for a (sub)command with the root's context settings, not running it."""
    root = typer.main.get_command(app)
    target = root
    for name in command:
        target = target.commands[name]  # type: ignore[attr-defined]
    with target.make_context(" ".join(command), args, **root.context_settings) as context:
        return dict(context.params)


@pytest.mark.parametrize(
    ("command", "tables"),
    [
        (["prepare"], "[preprocess]"),
        (["federate"], "[federation] and [[federation.clients]]"),
        (["deploy", "run"], "[[federation.clients]]"),
        (["deploy", "register"], "[[federation.clients]]"),
        (["deploy", "supernode"], "[[federation.clients]]"),
        (["synth"], "[weights] and optional [custom.NAME]"),
    ],
)
def test_help_shows_toml_table_names(command: list[str], tables: str) -> None:
    assert tables in help_text(*command)


def test_evaluate_help_names_the_alternatives_and_where_out_goes() -> None:
    text = help_text("evaluate")
    assert "either --checkpoint and --data" in text and "or --pred and --ref" in text
    assert "default: RUN/eval_SPLIT for a checkpoint RUN/checkpoints/*.pt" in text
    assert "or evaluation beside the --pred folder" in text


@pytest.mark.parametrize(
    ("command", "description"),
    [
        (["inspect"], "CACHE is a cache folder written by `fedgin prepare`."),
        (["deploy", "register"], "PUBLIC_KEY is the site's public key in OpenSSH format"),
        (["protocols"], "MIX is a preset or a mix TOML file"),
    ],
)
def test_help_describes_the_arguments(command: list[str], description: str) -> None:
    assert description in help_text(*command)


WRITING_COMMANDS = [
    ["synth"], ["prepare"], ["federate"], ["certs"], ["deploy", "run"], ["evaluate"], ["gin-preview"],
    ["train"], ["demo"], ["study"], ["predict"], ["export"],
]  # fmt: skip


@pytest.mark.parametrize("command", WRITING_COMMANDS, ids=" ".join)
def test_every_writing_command_shows_one_output_option(command: list[str]) -> None:
    text = help_text(*command)
    assert "--out " in text and " -o " in text
    assert "--output" not in text


@pytest.mark.parametrize(
    ("command", "required", "name"),
    [
        (["train"], ["--config", "run.toml"], "output"),
        (["federate"], ["--config", "run.toml"], "output"),
        (["deploy", "run"], ["--config", "run.toml"], "output"),
        (["study"], [], "output"),
        (["predict"], ["--input", "scan.nii.gz", "--model", "m.fedgin.pt"], "output"),
        (["export"], ["--checkpoint", "best.pt"], "output"),
        (["evaluate"], [], "out"),
    ],
)
def test_output_is_a_hidden_alias_of_out(command: list[str], required: list[str], name: str) -> None:
    for spelling in ("--out", "-o", "--output", "--output=x"):
        args = [*required, spelling] if "=" in spelling else [*required, spelling, "x"]
        assert str(parsed_options(command, args)[name]) == "x", spelling


def test_the_hidden_alias_reaches_the_command(tmp_path: Path) -> None:
    result = invoke("certs", "--output", tmp_path / "certs", "--sites", "ct")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "certs" / "ca.crt").stat().st_size > 0
