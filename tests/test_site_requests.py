"""Federated statistics and cross-site evaluation on Flower's simulation engine, against the same numbers
computed centrally (statistics of the pooled data; `fedgin evaluate` of each model on each site's split)."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from rich.console import Console

from fedgin.config import DataSpec, RunConfig, StatsConfig, dump_toml
from fedgin.errors import ConfigError
from fedgin.evaluation.evaluate import evaluate_checkpoint
from fedgin.federation import cross_site
from fedgin.federation.cross_site import Model, read_rows, run_cross_site
from fedgin.statistics import central_statistics
from fedgin.training.trainer import run_training


def site_config(caches: dict[str, Path], output: Path, **extra: object) -> RunConfig:
    """Three sites: the CT cache split in two (2 + 2 cases) and the MRI T2 cache."""
    return RunConfig(
        name="requests-tiny",
        seed=3,
        output=output,
        model={"channels": (4, 8), "strides": (2,), "num_res_units": 1},
        train={"batch_size": 4, "device": "cpu"},
        federation={
            "min_clients": 2,
            "round_timeout_s": 120,
            "clients": [
                {"name": "ct_a", "data": [{"cache": caches["ct"], "max_cases": 2}]},
                {"name": "ct_b", "data": [{"cache": caches["ct"], "skip_cases": 2}]},
                {"name": "mri", "data": [{"cache": caches["t2"]}]},
            ],
        },
        **extra,
    )


def test_federated_statistics_equal_the_pooled_data_statistics(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    """`fedgin stats` (Flower simulation, one TOML) gives the statistics of the pooled data: counts and
    histograms exactly, means to rounding; the figures and the Markdown summary are written."""
    settings = StatsConfig(min_count=1, bins=32)
    config = site_config(caches, tmp_path / "run", stats=settings.model_dump())
    dump_toml(config, tmp_path / "fl.toml")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fedgin"), "stats", "--config", tmp_path / "fl.toml"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "run" / "stats"
    for name in ("stats.json", "stats.md", "intensity_histograms.png", "organ_volumes.png"):
        assert (out / name).stat().st_size > 0, name
    federated = json.loads((out / "stats.json").read_text())
    assert sorted(federated["sites"]) == ["ct_a", "ct_b", "mri"]
    assert "3 site(s) described" in done.stdout

    pooled_data = [DataSpec(cache=caches["ct"]), DataSpec(cache=caches["t2"])]
    central = central_statistics(pooled_data, settings, seed=0)
    assert federated["edges"] == central["edges"]  # the same bins: global min/max over the sites
    for domain, expected in central["pooled"].items():
        got = federated["pooled"][domain]
        assert got["n_cases"] == expected["n_cases"] and got["n_slices"] == expected["n_slices"]
        for feature in ("raw", "preprocessed"):
            assert got["intensity"][feature]["histogram"] == expected["intensity"][feature]["histogram"]
            assert math.isclose(got["intensity"][feature]["mean"], expected["intensity"][feature]["mean"],
                                rel_tol=1e-9)  # fmt: skip
        for organ, volume in expected["volumes"].items():
            assert got["volumes"][organ]["histogram"] == volume["histogram"]
        assert got["labels"] == expected["labels"]
        assert got["spacing"]["original"]["histograms"] == expected["spacing"]["original"]["histograms"]


@pytest.fixture(scope="module")
def models(caches: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny models: one trained a few steps on CT, one on MRI T2."""
    base = tmp_path_factory.mktemp("cross_site_models")
    checkpoints = {}
    for name, cache in (("ct_model", caches["ct"]), ("t2_model", caches["t2"])):
        config = RunConfig(
            name=name,
            seed=5,
            output=base / name,
            model={"channels": (4, 8), "strides": (2,), "num_res_units": 1},
            train={"batch_size": 4, "device": "cpu", "steps": 6, "val_interval": 6, "checkpoint_interval": 6},
            data={"train": [{"cache": cache}]},
        )
        run_training(config, console=Console(file=io.StringIO()))
        checkpoints[name] = base / name / "checkpoints" / "best.pt"
    return checkpoints


def test_cross_site_matrix_equals_fedgin_evaluate(
    caches: dict[str, Path], models: dict[str, Path], tmp_path: Path
) -> None:
    """Every model on every site's test split, in simulation: each site's summary rows are those of
    `fedgin evaluate --checkpoint M --data <site caches> --split test`."""
    config = site_config(caches, tmp_path / "run")
    config.federation.clients = [config.federation.clients[0], config.federation.clients[2]]  # ct_a, mri
    chosen = [Model.from_checkpoint(name, path) for name, path in models.items()]
    result = run_cross_site(config, chosen, tmp_path / "xs", console=Console(file=io.StringIO()))
    assert (tmp_path / "xs" / "cross_site.png").stat().st_size > 0
    rows = read_rows(tmp_path / "xs" / "cross_site.csv")
    assert {(row["model"], row["site"]) for row in rows} == {(m, s) for m in models for s in ("ct_a", "mri")}
    site_caches = {"ct_a": caches["ct"], "mri": caches["t2"]}
    for name, checkpoint in models.items():
        for site, cache in site_caches.items():
            evaluated = evaluate_checkpoint(
                checkpoint, [cache], tmp_path / f"eval_{name}_{site}", progress=False
            )
            mine = [row for row in rows if row["model"] == name and row["site"] == site]
            assert len(mine) == len(evaluated.summary)
            for got, expected in zip(mine, evaluated.summary, strict=True):
                assert (got["group_by"], got["group"], got["organ"]) == (
                    expected["group_by"], expected["group"], expected["organ"]
                )  # fmt: skip
                assert int(got["n_cases"]) == expected["n_cases"]
                for metric in ("dice_mean", "hd95_mean", "nsd_mean"):
                    want = float(expected[metric])
                    assert (math.isnan(want) and math.isnan(got[metric])) or math.isclose(
                        got[metric], want, rel_tol=1e-9, abs_tol=1e-12
                    ), (name, site, got, expected)
    cells = result.matrix()
    assert set(cells) == {(m, s) for m in models for s in ("ct_a", "mri")}
    assert all(0.0 <= value <= 1.0 for value in cells.values())


def test_a_site_shares_per_case_rows_only_when_its_node_config_allows(
    caches: dict[str, Path], models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site answers with summaries; case ids come back only with `share-case-results=true`."""
    # A message made outside a Flower run needs the run's identity (set by a simulation run before, if any).
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    model = Model.from_checkpoint("ct_model", models["ct_model"])
    spec = site_config(caches, Path("unused")).federation.clients[2]
    content = RecordDict(
        {
            cross_site.ARRAYS: ArrayRecord({k: v.float() for k, v in model.state.items()}),
            cross_site.REQUEST: ConfigRecord(
                {
                    cross_site.MODEL_NAME: model.name,
                    cross_site.MODEL_CONFIG: model.config.model_dump_json(),
                    cross_site.SITE_SPEC: spec.model_dump_json(),
                    cross_site.SPLIT: "test",
                }
            ),
        }
    )
    for allowed in (False, True):
        message = Message(content, dst_node_id=1, message_type=cross_site.MESSAGE_TYPE)
        node_config = {"partition-id": 0, **({cross_site.NODE_SHARE_CASES: True} if allowed else {})}
        context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
        reply = cross_site.site_reply(message, context).content[cross_site.REPLY]
        summary = json.loads(str(reply[cross_site.SUMMARY]))
        assert summary and all("case_id" not in row for row in summary)
        assert (cross_site.CASES in reply) is allowed
        if allowed:
            assert {row["case_id"] for row in json.loads(str(reply[cross_site.CASES]))}


def test_cross_site_refuses_duplicate_and_missing_models(models: dict[str, Path], tmp_path: Path) -> None:
    model = Model.from_checkpoint("m", models["ct_model"])
    config = RunConfig(federation={"clients": [{"name": "a", "data": [{"cache": tmp_path}]}]})
    with pytest.raises(ConfigError, match="must differ"):
        cross_site.CrossSiteServer(config, Console(file=io.StringIO()), [model, model], tmp_path / "xs")
    with pytest.raises(ConfigError, match="at least one model"):
        cross_site.CrossSiteServer(config, Console(file=io.StringIO()), [], tmp_path / "xs")
