"""Secure aggregation (federation/secure_aggregation.py): a real SecAgg+ federation gives the plain FedAvg's
global model within the quantization's error while only the unmasked mean reaches the server; DP's noise
goes on that mean; settings SecAgg+ cannot run are one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgin.checkpoints import load_checkpoint
from fedgin.config import RunConfig
from fedgin.errors import ConfigError
from fedgin.federation import run_federation
from fedgin.federation import secure_aggregation as secure
from fedgin.federation.screening import ScreeningMixin
from test_federation import fl_config

SECAGG = {"max_weight": 100.0, "clipping_range": 1.0, "quantization_range": 2**24}


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "rounds.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_secagg_gives_fedavgs_model_and_the_server_sees_only_the_mean(
    caches: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_over: list[list[list[np.ndarray]]] = []
    original = secure._HandOver.aggregate_fit

    def recording(self, server_round, results, failures):  # type: ignore[no-untyped-def]
        from flwr.common import parameters_to_ndarrays

        handed_over.append([parameters_to_ndarrays(result.parameters) for _, result in results])
        return original(self, server_round, results, failures)

    def no_single_updates(self, server_round, replies):  # type: ignore[no-untyped-def]
        raise AssertionError("a site's own update reached the server's strategy")

    plain = fl_config(caches, tmp_path / "plain", rounds=1)
    assert run_federation(plain).rounds == 1
    monkeypatch.setattr(secure._HandOver, "aggregate_fit", recording)
    monkeypatch.setattr(ScreeningMixin, "aggregate_train", no_single_updates)
    masked = fl_config(caches, tmp_path / "secagg", rounds=1, secagg=SECAGG)
    assert run_federation(masked).rounds == 1

    assert len(handed_over) == 1 and len(handed_over[0]) == 2  # two sites' results, one mean
    first, second = handed_over[0]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    ends = [load_checkpoint(c.output / "checkpoints" / "last.pt")["model"] for c in (plain, masked)]
    worst = max(float((ends[1][key] - ends[0][key]).abs().max()) for key in ends[0])
    assert 0 < worst < 1e-5  # quantization: 2 sites x 2 / 2^24 / (60 slices / 100)
    row = rows(masked.output)[0]
    assert row["clients"] == "2" and float(row["loss_ct"]) > 0 and row["site_val_mri_mri_t2"]
    assert row["secagg_mean_only"] == "True"
    assert rows(plain.output)[0]["loss_ct"] == row["loss_ct"]  # the sites trained the same round


def test_dp_noise_on_the_secure_mean_is_accounted(caches: dict[str, Path], tmp_path: Path) -> None:
    privacy = {
        "clipping": "fixed",
        "clip_on": "client",
        "clipping_norm": 0.5,
        "noise_multiplier": 0.5,
        "target_delta": 1e-3,
    }
    config = fl_config(caches, tmp_path / "dp-secagg", rounds=2, secagg=SECAGG, privacy=privacy)
    assert run_federation(config).rounds == 2
    epsilons = [float(row["epsilon"]) for row in rows(config.output)]
    assert 0 < epsilons[0] < epsilons[1]
    weights = load_checkpoint(config.output / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(value).all() for value in weights.values())


def sites(count: int) -> list[dict]:
    return [{"name": f"site{index}", "data": [{"cache": "c"}]} for index in range(count)]


@pytest.mark.parametrize(
    ("secagg", "federation", "message"),
    [
        ({}, {"strategy": "median"}, "strategy median needs each site's update"),
        ({}, {"privacy": {"clipping_norm": 1.0, "noise_multiplier": 1.0}}, "DP needs clip_on = client"),
        ({"num_shares": 5}, {}, "num_shares is 5 but there are 3 sites"),
        ({"reconstruction_threshold": 3}, {}, "reconstruction_threshold is 3, not below num_shares"),
        (
            {"reconstruction_threshold": 1.0},
            {"min_clients": 2},
            "reconstruction threshold 3 is above min_clients",
        ),
        ({"quantization_range": 2**31}, {}, "overflow the 32-bit sums"),
    ],
)
def test_settings_secagg_cannot_run_are_one_line_errors(secagg: dict, federation: dict, message: str) -> None:
    settings = {"clients": sites(3), "min_clients": 3, "secagg": {**SECAGG, **secagg}, **federation}
    if "privacy" in federation:
        settings["privacy"] = {**federation["privacy"]}
    with pytest.raises(ConfigError, match=r"federation\.secagg") as error:
        RunConfig(federation=settings).federation.require_clients()
    assert message in str(error.value) and "\n" not in str(error.value)
