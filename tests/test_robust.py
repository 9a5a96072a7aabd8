"""Robust aggregation (federation/robust.py): each rule resists one site sending sign-flipped, scaled
weights where FedAvg does not; the rules' requirements on the number of replies are one-line errors; a real
simulation runs with the median."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from fedgin.config import RunConfig, validate
from fedgin.errors import ConfigError
from fedgin.federation import protocol, run_federation
from fedgin.federation.server import build_strategy
from test_federation import fl_config
from test_protocol import reply

HONEST = 1.0


def sites(count: int) -> list[dict]:
    return [{"name": f"site{index}", "data": [{"cache": "c"}]} for index in range(count)]


def aggregate(strategy_name: str, count: int, poisoned: int, **settings: object) -> np.ndarray:
    """The aggregate of `count` sites' weights, `poisoned` of them sending -100 x the honest update."""
    config = RunConfig(
        federation={"clients": sites(count), "min_clients": count, "strategy": strategy_name, **settings}
    )
    config.federation.require_clients()
    strategy = build_strategy(config, set())
    strategy.reference = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    strategy.sent = set(range(count))
    rng = np.random.default_rng(0)
    replies = []
    for node in range(count):
        weights = HONEST + 0.01 * rng.standard_normal(4).astype(np.float32)
        if node < poisoned:
            weights = -100.0 * weights
        content = {
            protocol.ARRAYS: ArrayRecord({"w": Array(weights.astype(np.float32))}),
            protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 10}),
            protocol.SITE: ConfigRecord({protocol.SITE_NAME: f"site{node}"}),
        }
        replies.append(reply(node, content))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return arrays["w"].numpy()


@pytest.mark.parametrize(
    ("name", "count", "settings"),
    [
        ("median", 5, {}),
        ("trimmed_mean", 5, {"trim_beta": 0.2}),
        ("krum", 5, {"num_malicious": 1}),
        ("multikrum", 5, {"num_malicious": 1, "multikrum_select": 3}),
        ("bulyan", 7, {"num_malicious": 1}),
    ],
)
def test_a_robust_rule_resists_one_poisoned_site_where_fedavg_does_not(
    name: str, count: int, settings: dict
) -> None:
    assert np.abs(aggregate(name, count, poisoned=1, **settings) - HONEST).max() < 0.05
    assert np.abs(aggregate(name, count, poisoned=0, **settings) - HONEST).max() < 0.05
    # FedAvg of the same replies: one site in `count` drags the mean to about (count - 101) / count.
    assert np.abs(aggregate("fedavg", count, poisoned=1) - HONEST).max() > 10


def refused(strategy: str, count: int, **settings: object) -> None:
    federation = {"clients": sites(count), "min_clients": count, "strategy": strategy, **settings}
    RunConfig(federation=federation).federation.require_clients()


def test_the_rules_requirements_are_one_line_errors_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match=r"krum with num_malicious = 1 needs at least 4 replies a round"):
        refused("krum", 3, num_malicious=1)
    below_bound = RunConfig(
        federation={"clients": sites(4), "min_clients": 4, "strategy": "krum", "num_malicious": 1}
    ).federation
    below_bound.require_clients()  # Flower's Krum runs; the worst-case guarantee is what is lost
    assert "needs n >= 2f + 3 = 5 replies" in below_bound.caveats()[0]
    with pytest.raises(ConfigError, match=r"bulyan with num_malicious = 1 needs at least 7"):
        refused("bulyan", 6, num_malicious=1)
    with pytest.raises(ConfigError, match=r"multikrum_select is 5, more than the min_clients - num_mal"):
        refused("multikrum", 5, num_malicious=1, multikrum_select=5)
    with pytest.raises(ConfigError, match=r"fl\.toml: federation\.strategy"):
        validate({"federation": {"strategy": "mean"}}, RunConfig, source="fl.toml")
    with pytest.raises(ConfigError, match=r"fl\.toml: federation\.trim_beta"):
        validate({"federation": {"trim_beta": 0.5}}, RunConfig, source="fl.toml")


def test_a_median_federation_runs_on_flower(caches: dict[str, Path], tmp_path: Path) -> None:
    config = fl_config(caches, tmp_path / "median", rounds=2, strategy="median")
    result = run_federation(config)
    assert result.rounds == 2
    with open(config.output / "rounds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["round"] for row in rows] == ["1", "2"] and all(row["clients"] == "2" for row in rows)


def test_poisoned_updates_are_what_each_fault_mode_says() -> None:
    from fedgin.config import FaultConfig
    from fedgin.federation.faults import poison_update

    start = {"w": torch.tensor([1.0, 2.0, 3.0]), "count": torch.tensor(4)}
    trained = {"w": torch.tensor([1.5, 1.0, 3.0]), "count": torch.tensor(5)}
    generator = torch.Generator().manual_seed(0)
    flipped = poison_update(trained, start, FaultConfig(site="a", mode="sign_flip"), generator)
    assert torch.equal(flipped["w"], torch.tensor([0.5, 3.0, 3.0])) and int(flipped["count"]) == 5
    scaled = poison_update(trained, start, FaultConfig(site="a", mode="scale", scale=100.0), generator)
    assert torch.allclose(scaled["w"], torch.tensor([51.0, -98.0, 3.0]))
    noise = FaultConfig(site="a", mode="random")
    first = poison_update(trained, start, noise, torch.Generator().manual_seed(1))
    again = poison_update(trained, start, noise, torch.Generator().manual_seed(1))
    assert torch.equal(first["w"], again["w"]) and not torch.equal(first["w"], trained["w"])
    with pytest.raises(ConfigError, match=r"federation\.fault\.site: 'x' is not in federation\.clients"):
        refused("fedavg", 2, fault={"site": "x", "mode": "scale"})


def test_a_federation_with_a_poisoned_site_runs_and_differs_from_the_clean_one(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    from fedgin.checkpoints import load_checkpoint

    clean = fl_config(caches, tmp_path / "clean", rounds=1)
    poisoned = fl_config(caches, tmp_path / "poisoned", rounds=1, fault={"site": "mri", "mode": "sign_flip"})
    for config in (clean, poisoned):
        assert run_federation(config).rounds == 1
    weights = [load_checkpoint(c.output / "checkpoints" / "last.pt")["model"] for c in (clean, poisoned)]
    assert all(torch.isfinite(value).all() for value in weights[1].values())
    assert any(not torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
