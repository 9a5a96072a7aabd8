"""Differential privacy (federation/privacy.py): clipping and noise through Flower's wrappers after screening,
the epsilon of every round against dp-accounting's own computation, exact resume, and the settings that are
refused in one line before anything starts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from typer.testing import CliRunner

from fedgin.checkpoints import load_checkpoint
from fedgin.cli import app
from fedgin.config import RunConfig
from fedgin.errors import ConfigError
from fedgin.federation import protocol, run_federation
from fedgin.federation.privacy import PrivacyLedger, clip_on_site, planned_epsilon
from fedgin.federation.server import build_strategy
from test_federation import fl_config
from test_protocol import reply

PRIVACY = {"clipping": "fixed", "clipping_norm": 1.0, "noise_multiplier": 0.8, "target_delta": 1e-3}


def sites(count: int) -> list[dict]:
    return [{"name": f"site{index}", "data": [{"cache": "c"}]} for index in range(count)]


def dp_epsilons(noise_multiplier: float, rounds: int, delta: float) -> list[float]:
    """dp-accounting's RDP epsilon after each of `rounds` Gaussian releases (no Flower in between)."""
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    epsilons = []
    for _ in range(rounds):
        accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier))
        epsilons.append(accountant.get_epsilon(delta))
    return epsilons


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "rounds.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_server_side_clipping_bounds_a_sites_pull_and_adds_the_calibrated_noise() -> None:
    count, norm, z = 4, 1.0, 0.5
    config = RunConfig(
        federation={
            "clients": sites(count),
            "min_clients": count,
            "privacy": {**PRIVACY, "clipping_norm": norm, "noise_multiplier": z},
        }
    )
    config.federation.require_clients()
    strategy = build_strategy(config, set())
    current = ArrayRecord({"w": Array(np.zeros(10_000, np.float32))})
    strategy.reference, strategy.current_arrays, strategy.sent = current, current, set(range(count))
    updates = [np.full(10_000, 0.001, np.float32)] * 3 + [np.full(10_000, -100.0, np.float32)]
    replies = [
        reply(
            node,
            {
                protocol.ARRAYS: ArrayRecord({"w": Array(update)}),
                protocol.METRICS: MetricRecord(
                    {protocol.NUM_EXAMPLES: 10 * (node + 1), protocol.UNIT_WEIGHT: 1}
                ),
                protocol.SITE: ConfigRecord({protocol.SITE_NAME: f"site{node}"}),
            },
        )
        for node, update in enumerate(updates)
    ]
    aggregated, _ = strategy.aggregate_train(1, replies)
    result = aggregated["w"].numpy()
    # Mean of the clipped updates: three of norm 0.1 (not clipped), one clipped to norm 1, equal weights.
    expected = (3 * 0.001 - 1.0 / np.sqrt(10_000)) / count
    noise = result - expected
    assert abs(noise.mean()) < 0.01 and noise.std() == pytest.approx(z * norm / count, rel=0.03)


def test_client_side_clipping_scales_the_update_to_the_norm() -> None:
    start = {"w": torch.zeros(4), "n": torch.tensor(3)}
    trained = {"w": torch.tensor([3.0, 4.0, 0.0, 0.0]), "n": torch.tensor(5)}
    clipped, metrics = clip_on_site(
        trained, start, ConfigRecord({protocol.CLIPPING_NORM: 1.0}), adaptive=True
    )
    torch.testing.assert_close(clipped["w"], torch.tensor([0.6, 0.8, 0.0, 0.0]))
    assert int(clipped["n"]) == 5 and metrics == {protocol.NORM_BIT: 1.0}
    kept, metrics = clip_on_site(trained, start, ConfigRecord({protocol.CLIPPING_NORM: 10.0}), adaptive=True)
    assert torch.equal(kept["w"], trained["w"]) and metrics == {protocol.NORM_BIT: 0.0}


def test_epsilon_grows_each_round_as_dp_accounting_computes_and_resumes_exactly(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    full = fl_config(caches, tmp_path / "full", rounds=3, privacy=PRIVACY)
    assert run_federation(full).rounds == 3
    epsilons = [float(row["epsilon"]) for row in rows(full.output)]
    assert epsilons[0] < epsilons[1] < epsilons[2]
    np.testing.assert_allclose(epsilons, dp_epsilons(0.8, 3, 1e-3), rtol=1e-5)
    assert planned_epsilon(full.federation) == pytest.approx(epsilons[-1], rel=1e-5)
    summary = json.loads((full.output / "summary.json").read_text())["privacy"]
    assert summary["epsilon"] == pytest.approx(epsilons[-1], rel=1e-5) and summary["delta"] == 1e-3
    assert {row["dp_clipping_norm"] for row in rows(full.output)} == {"1.0"}

    parted = fl_config(caches, tmp_path / "parted", rounds=3, privacy=PRIVACY)
    assert run_federation(parted, stop_after=2).rounds == 2
    assert run_federation(parted, resume=True).rounds == 3
    assert [row["epsilon"] for row in rows(parted.output)] == [row["epsilon"] for row in rows(full.output)]
    ends = [load_checkpoint(c.output / "checkpoints" / "last.pt")["model"] for c in (full, parted)]
    for key in ends[0]:  # the noise is seeded per round: the resumed run adds the same noise
        torch.testing.assert_close(ends[1][key], ends[0][key], rtol=0, atol=0, msg=key)


def test_client_side_adaptive_clipping_moves_the_norm_and_is_accounted(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    privacy = {
        "clipping": "adaptive",
        "clip_on": "client",
        "clipping_norm": 1e-3,  # below every update: all are clipped, the norm grows
        "noise_multiplier": 0.1,
        "clipped_count_stddev": 0.1,
        "target_delta": 1e-3,
    }
    config = fl_config(caches, tmp_path / "adaptive", rounds=2, privacy=privacy)
    assert run_federation(config).rounds == 2
    norms = [float(row["dp_clipping_norm"]) for row in rows(config.output)]
    assert norms[0] == pytest.approx(1e-3) and norms[1] > norms[0]
    np.testing.assert_allclose(
        [float(r["epsilon"]) for r in rows(config.output)], dp_epsilons(0.1, 2, 1e-3), rtol=1e-5
    )
    assert load_checkpoint(config.output / "checkpoints" / "last.pt")["privacy"]["clipping_norm"] > norms[1]


@pytest.mark.parametrize(
    ("privacy", "federation", "message"),
    [
        ({"clipping": "none"}, {}, "noise without clipping bounds no site's influence"),
        ({"clipping_norm": None}, {}, "clipping_norm: needed for fixed clipping"),
        ({"noise_multiplier": 0.0}, {}, "clipping alone spends an infinite epsilon"),
        ({}, {"strategy": "median"}, "strategy median is not accounted"),
        ({}, {"fedbn": True}, "FedBN is not supported under DP"),
        ({}, {"fraction_train": 0.5}, "fraction_train must be 1"),
        ({}, {"min_clients": 2}, "min_clients is 2 but there are 3 sites"),
        ({"clip_on": "client"}, {"update_dtype": "float16"}, "client-side clipping needs update_dtype"),
        ({"clipping": "adaptive", "noise_multiplier": 1.0}, {}, "needs clipped_count_stddev above z / 2"),
        (
            {"target_epsilon": 1.0},
            {"rounds": 10},
            "spend epsilon 21.1 at delta 0.001, above target_epsilon 1",
        ),
    ],
)
def test_unaccountable_settings_are_refused_in_one_line(
    privacy: dict, federation: dict, message: str
) -> None:
    settings = {"clients": sites(3), "min_clients": 3, "privacy": {**PRIVACY, **privacy}, **federation}
    with pytest.raises(ConfigError, match=r"federation\.privacy") as error:
        RunConfig(federation=settings).federation.require_clients()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_fedgin_federate_refuses_noise_without_clipping_before_starting(tmp_path: Path) -> None:
    config = RunConfig(
        output=tmp_path / "run",
        federation={"clients": sites(2), "privacy": {**PRIVACY, "clipping": "none"}},
    )
    path = tmp_path / "dp.toml"
    path.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    result = CliRunner().invoke(app, ["federate", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "noise without clipping" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_the_ledger_composes_the_rounds_a_resumed_run_already_has() -> None:
    settings = RunConfig(federation={"clients": sites(2), "privacy": PRIVACY}).federation.privacy
    ledger = PrivacyLedger(settings, sites=2)
    assert ledger.epsilon == 0.0
    ledger.compose(5)
    assert ledger.epsilon == pytest.approx(dp_epsilons(0.8, 5, 1e-3)[-1], rel=1e-6)


def test_the_study_report_lists_each_federated_runs_epsilon(tmp_path: Path) -> None:
    from fedgin.study.plan import PlannedRun
    from fedgin.study.report import privacy_table

    runs = []
    for method, privacy in (("fedgin", {"epsilon": 12.345, "delta": 1e-3}), ("centralized_gin", None)):
        run = PlannedRun(42, "complete", method, None, RunConfig(output=tmp_path / method), 10, 1, 1)
        run.run_dir.mkdir()
        extra = {"privacy": {**privacy, "noise_multiplier": 0.8, "clipping": "fixed", "clip_on": "server",
                             "rounds_accounted": 3}} if privacy else {}  # fmt: skip
        (run.run_dir / "summary.json").write_text(json.dumps({"rounds": 3, **extra}))
        runs.append(run)
    table = privacy_table(runs)
    assert "| FedGIN | 42 | 12.35 | 0.001 | 0.8 | fixed on the server | 3 |" in table
    assert "Centralized" not in table
