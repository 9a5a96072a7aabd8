"""A federation's sites checked before Ray starts; a site that never contributed fails the run in one line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from flwr.app import Context, Message
from typer.testing import CliRunner

from fedgin.checkpoints import load_checkpoint
from fedgin.cli import app as cli_app
from fedgin.config import DataSpec, RunConfig, dump_toml
from fedgin.errors import ConfigError, DataError
from fedgin.federation import run_federation
from fedgin.federation.client import build_client_app, site_settings, train_site
from fedgin.federation.simulation import check_sites
from test_federation import fl_config


def tiny_config(
    caches: dict[str, Path], output: Path, clients: list[dict], **federation: object
) -> RunConfig:
    """test_federation's tiny federation with one local step, no site validation, CT-only server eval."""
    quick = {"local_steps": 1, "client_validation": False, "server_eval": [{"cache": caches["ct"]}]}
    return fl_config(caches, output, clients, **{**quick, **federation})


def two_sites(caches: dict[str, Path]) -> list[dict]:
    return [
        {"name": "ct", "data": [{"cache": caches["ct"]}]},
        {"name": "mri", "data": [{"cache": caches["t2"]}]},
    ]


# -- up-front checks: refused before Flower and Ray start -----------------------------------------------
@pytest.mark.parametrize(
    ("data", "error", "expected"),
    [
        ({"cache": "{tmp}/no-such-cache"}, DataError, "no-such-cache/index.csv: no cache index here"),
        ({"cache": "{ct}", "skip_cases": 10}, ConfigError, "no cached cases in splits ['train']"),
        (
            {"cache": "{ct}", "splits": ["validation"]},
            ConfigError,
            "no cached cases in splits ['validation']",
        ),
        ({"cache": "{ct}", "domains": ["mri_t1"]}, ConfigError, "with domains ['mri_t1']"),
    ],
    ids=["missing-cache", "skip-past-the-end", "no-such-split", "no-such-domain"],
)
def test_a_site_without_training_cases_is_refused_before_ray(
    caches: dict[str, Path], tmp_path: Path, data: dict, error: type, expected: str
) -> None:
    cache = data["cache"].format(tmp=tmp_path, ct=caches["ct"])
    clients = [*two_sites(caches), {"name": "empty-site", "data": [{**data, "cache": cache}]}]
    config = tiny_config(caches, tmp_path / "run", clients)
    with pytest.raises(error) as raised:
        run_federation(config)
    message = str(raised.value)
    assert "'empty-site'" in message and expected in message and cache in message
    assert "\n" not in message
    assert not config.output.exists()  # refused before the run directory is made
    assert not ray.is_initialized()
    check_sites(tiny_config(caches, tmp_path / "ok", two_sites(caches)))  # the valid sites pass


def test_missing_server_evaluation_cache_is_refused(caches: dict[str, Path], tmp_path: Path) -> None:
    config = tiny_config(
        caches, tmp_path / "run", two_sites(caches), server_eval=[{"cache": tmp_path / "gone"}]
    )
    with pytest.raises(DataError, match=r"gone/index.csv: no cache index here.*server's evaluation"):
        check_sites(config)


def test_cli_refuses_a_site_with_a_missing_cache_in_one_line(caches: dict[str, Path], tmp_path: Path) -> None:
    """The real command: exit 2 and one line naming the site and its cache, before Ray starts."""
    clients = [*two_sites(caches), {"name": "lost", "data": [{"cache": tmp_path / "lost-cache"}]}]
    config = tiny_config(caches, tmp_path / "run", clients)
    dump_toml(config, tmp_path / "fl.toml")
    result = subprocess.run(
        [sys.executable, "-m", "fedgin", "federate", "--config", str(tmp_path / "fl.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        },
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "lost-cache/index.csv" in lines[0] and "'lost'" in lines[0] and lines[0].startswith("error:")
    assert "Traceback" not in result.stdout + result.stderr
    assert not config.output.exists()


# -- a site left out of every round ----------------------------------------------------------------------
def vanishing_cache_train(message: Message, context: Context) -> Message:
    """fedgin's client, except that site 'broken' (every round) and 'flaky' (round 1) find their cache gone.

    The cache passed the up-front check; the site then fails inside fedgin's own client code, as a site
    whose disk went away would.
    """
    config, spec = site_settings(message, context)
    name = spec.name
    if name == "broken" or (name == "flaky" and int(message.content["config"]["server-round"]) == 1):
        spec = spec.model_copy(update={"data": [DataSpec(cache=config.output / f"{name}-cache-gone")]})
    return train_site(message, context, config, spec)


def test_a_site_that_never_contributed_fails_the_run_after_its_results(
    caches: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fedgin federate` (in-process, on Ray): 'flaky' is left out of round 1 only and the run goes on;
    'broken' is left out of both rounds, so the run ends with exit 2 and one line naming it and why."""
    ct = [{"cache": caches["ct"]}]
    clients = [*two_sites(caches), {"name": "flaky", "data": ct}, {"name": "broken", "data": ct}]
    config = tiny_config(caches, tmp_path / "run", clients)
    dump_toml(config, tmp_path / "fl.toml")
    monkeypatch.setattr("fedgin.federation.client.app", build_client_app(vanishing_cache_train))
    result = CliRunner().invoke(cli_app, ["federate", "--config", str(tmp_path / "fl.toml")])

    assert result.exit_code == 2, result.output
    # stderr: a warning line per left-out reply (when logging is not captured), then the one error line
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    assert errors[0].startswith("error: 1 of 4 sites contributed to none of the 2 rounds")
    assert "site 'broken'" in errors[0] and "broken-cache-gone/index.csv: no cache index here" in errors[0]
    assert "flaky" not in errors[0]
    assert "Traceback" not in result.output

    # The results were written before the error: both rounds, from the sites that did contribute.
    with open(config.output / "rounds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["round"] for row in rows] == ["1", "2"]
    assert [row["clients"] for row in rows] == ["2", "3"]
    assert "flaky-cache-gone" in rows[0]["left_out"] and "flaky" not in rows[1]["left_out"]
    assert rows[1]["examples_flaky"] == rows[1]["examples_ct"]
    # left_out names the site even though it never replied with its name
    assert all("broken: client error: client broken: DataError" in row["left_out"] for row in rows)
    assert not any(row.get("examples_broken") for row in rows)
    assert json.loads((config.output / "summary.json").read_text())["rounds"] == 2
    assert load_checkpoint(config.output / "checkpoints" / "last.pt")["round"] == 2
    assert not ray.is_initialized()
