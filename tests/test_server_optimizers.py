"""Server optimizers (federation/server_optimizers.py): Flower's FedAdam, FedYogi and FedAvgM step on the
FedAvg of screened replies, leave FedBN's local keys out, and resume exactly from the state in last.pt; the
shuffled-labels fault (federation/faults.py) pairs a site's images with other slices' labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from fedgin.checkpoints import load_checkpoint
from fedgin.config import RunConfig
from fedgin.federation import protocol, run_federation
from fedgin.federation.server import build_strategy, initial_state
from fedgin.federation.server_optimizers import ServerOptimizerMixin
from test_federation import fl_config
from test_protocol import reply

GLOBAL = {"w": np.zeros(3, np.float32), "bn": np.ones(2, np.float32)}


def strategy_for(name: str, **settings: object) -> ServerOptimizerMixin:
    sites = [{"name": f"site{index}", "data": [{"cache": "c"}]} for index in range(2)]
    config = RunConfig(federation={"clients": sites, "strategy": name, **settings})
    strategy = build_strategy(config, local_keys={"bn"})
    assert isinstance(strategy, ServerOptimizerMixin)
    return strategy


def step(strategy: ServerOptimizerMixin, server_round: int, current: np.ndarray, update: float) -> np.ndarray:
    """One round: two sites reply current + update * (1, 2) (FedAvg: current + 1.5 update), without "bn"."""
    arrays = ArrayRecord({"w": Array(current.astype(np.float16)), "bn": Array(GLOBAL["bn"])})
    strategy.reference = arrays
    strategy.sent = {0, 1}
    strategy.set_current(
        strategy.shared_arrays(ArrayRecord({"w": Array(current), "bn": Array(GLOBAL["bn"])}))
    )
    replies = [
        reply(
            node,
            {
                protocol.ARRAYS: ArrayRecord(
                    {"w": Array((current + update * (node + 1)).astype(np.float32))}
                ),
                protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 10}),
                protocol.SITE: ConfigRecord({protocol.SITE_NAME: f"site{node}"}),
            },
        )
        for node in range(2)
    ]
    aggregated, _ = strategy.aggregate_train(server_round, replies)
    assert aggregated is not None and set(aggregated.keys()) == {"w"}  # FedBN's key stays on the sites
    return aggregated["w"].numpy().astype(np.float32)


def test_fedavgm_steps_with_momentum_on_the_fedavg_update() -> None:
    strategy = strategy_for("fedavgm", server_lr=1.0, server_momentum=0.5)
    first = step(strategy, 1, GLOBAL["w"], 0.1)
    np.testing.assert_allclose(first, 0.15, rtol=1e-6)  # v = 0.15: the first step is FedAvg's
    second = step(strategy, 2, first, 0.1)
    np.testing.assert_allclose(second, 0.15 + 0.5 * 0.15 + 0.15, rtol=1e-6)


def test_fedadam_steps_by_eta_in_the_updates_direction() -> None:
    strategy = strategy_for("fedadam", server_lr=0.01, server_tau=1e-9)
    first = step(strategy, 1, GLOBAL["w"], 0.1)
    # m = 0.1 * 0.15, v = 0.01 * 0.15^2: m / sqrt(v) = 1, times the bias-corrected eta of round 1.
    eta = 0.01 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    np.testing.assert_allclose(first, eta, rtol=1e-4)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm"])
def test_optimizer_state_restored_continues_exactly(name: str) -> None:
    straight = strategy_for(name, server_lr=0.05)
    weights = GLOBAL["w"]
    for server_round in (1, 2, 3):
        weights = step(straight, server_round, weights, 0.1 * server_round)

    first = strategy_for(name, server_lr=0.05)
    resumed_weights = step(first, 2, step(first, 1, GLOBAL["w"], 0.1), 0.2)
    saved = first.optimizer_state()
    assert saved and all(isinstance(v, torch.Tensor) for part in saved.values() for v in part.values())
    second = strategy_for(name, server_lr=0.05)
    second.load_optimizer_state(saved)
    np.testing.assert_array_equal(step(second, 3, resumed_weights, 0.3), weights)


def test_a_fedadam_federation_resumes_to_the_same_weights(caches: dict[str, Path], tmp_path: Path) -> None:
    settings = {"strategy": "fedadam", "server_lr": 1e-3}
    full = fl_config(caches, tmp_path / "full", **settings)
    assert run_federation(full).rounds == 2
    parted = fl_config(caches, tmp_path / "parted", **settings)
    assert run_federation(parted, stop_after=1).rounds == 1
    state = load_checkpoint(parted.output / "checkpoints" / "last.pt")["server_optimizer"]
    assert set(state) == {"m_t", "v_t"} and set(state["m_t"]) == set(initial_state(parted))
    assert run_federation(parted, resume=True).rounds == 2
    ends = [load_checkpoint(c.output / "checkpoints" / "last.pt")["model"] for c in (full, parted)]
    for key in ends[0]:
        torch.testing.assert_close(ends[1][key], ends[0][key], rtol=0, atol=0, msg=key)


def test_shuffled_labels_pair_each_image_with_another_slices_label(caches: dict[str, Path]) -> None:
    from fedgin.errors import ConfigError
    from fedgin.federation.faults import shuffle_labels
    from fedgin.slices import SliceDataset

    dataset = SliceDataset([caches["ct"]])
    shuffled = shuffle_labels(dataset, torch.Generator().manual_seed(0))
    assert len(shuffled) == len(dataset) and shuffled.num_cases == dataset.num_cases
    assert shuffled.permutation != list(range(len(dataset)))
    for index in range(len(dataset)):
        item, source = shuffled[index], shuffled.permutation[index]
        assert torch.equal(item["image"], dataset[index]["image"])
        assert torch.equal(item["label"], dataset[source]["label"])
        assert bool(shuffled.foreground[index]) == bool(dataset.foreground[source])
    with pytest.raises(ConfigError, match="shuffled_labels needs a 2D model"):
        shuffle_labels(object(), torch.Generator())
