"""federation.weighting: examples (FedAvg), uniform and modality-balanced site weights, in a federation."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from fedgin.checkpoints import load_checkpoint
from fedgin.config import RunConfig
from fedgin.errors import ConfigError
from fedgin.federation import run_federation
from fedgin.federation.client import build_client_app
from fedgin.federation.weighting import site_weights
from test_federation import fl_config, recording_train

#: Three hand-made sites: CT only, MRI only, and one holding both (it counts in both modalities).
SITES = {"ct": {"ct": 300.0}, "mri": {"mri": 100.0}, "mixed": {"ct": 100.0, "mri": 300.0}}


def test_modality_balanced_gives_each_modality_half() -> None:
    weights = site_weights(SITES, "modality_balanced")
    assert math.isclose(sum(weights.values()), 1.0)
    # Each modality's half, split by examples of that modality: CT 300:100, MRI 100:300.
    assert weights == pytest.approx({"ct": 0.5 * 3 / 4, "mri": 0.5 * 1 / 4, "mixed": 0.5 / 4 + 0.5 * 3 / 4})
    assert math.isclose(
        weights["ct"] + 0.5 * 1 / 4, 0.5
    )  # the CT half: the CT site's and the mixed site's part
    assert site_weights(SITES, "uniform") == pytest.approx(dict.fromkeys(SITES, 1 / 3))
    assert site_weights(SITES, "examples") == pytest.approx(
        {"ct": 300 / 800, "mri": 100 / 800, "mixed": 400 / 800}
    )
    with pytest.raises(ValueError, match="unknown weighting"):
        site_weights(SITES, "by_size")


def test_weighting_is_refused_where_it_has_no_effect_or_breaks_a_guarantee(tmp_path: Path) -> None:
    clients = [{"name": n, "data": [{"cache": tmp_path}]} for n in ("a", "b", "c")]
    for extra, match in (
        ({"strategy": "median"}, "selects or takes medians"),
        ({"privacy": {"clipping": "fixed", "clipping_norm": 1.0, "noise_multiplier": 0.1}}, "weigh the same"),
    ):
        config = RunConfig(federation={"weighting": "modality_balanced", "clients": clients, **extra})
        with pytest.raises(ConfigError, match=match):
            config.federation.require_clients()


def test_a_modality_balanced_round_averages_with_the_balanced_weights(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    """One round of sites CT and mixed (CT + T2): the global model is the weighted mean of the sites' weights
    with w = modality-balanced weights of their examples per modality (recorded in rounds.csv)."""
    clients = [
        {"name": "ct", "data": [{"cache": caches["ct"], "splits": ["train", "test"]}]},
        {"name": "mixed", "data": [{"cache": caches["ct"]}, {"cache": caches["t2"]}]},
    ]
    config = fl_config(caches, tmp_path / "run", clients=clients, rounds=1, weighting="modality_balanced")
    run_federation(config, client_app=build_client_app(recording_train))
    with open(config.output / "rounds.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    # the CT site's 36 slices and the mixed site's 24 CT + 24 T2 slices (the fixture's train splits)
    examples = {"ct": {"ct": 36.0}, "mixed": {"ct": 24.0, "mri": 24.0}}
    assert int(row["examples_ct"]) == 36 and int(row["examples_mixed"]) == 48
    expected = site_weights(examples, "modality_balanced")
    assert expected == pytest.approx({"ct": 0.5 * 36 / 60, "mixed": 0.5 * 24 / 60 + 0.5})
    for site, weight in expected.items():
        assert float(row[f"weight_{site}"]) == pytest.approx(weight, rel=1e-5)
    updates = {n: torch.load(config.output / "client_updates" / f"{n}_round1.pt") for n in expected}
    global_1 = load_checkpoint(config.output / "checkpoints" / "last.pt")["model"]
    for key, value in global_1.items():
        mean = sum(updates[n]["arrays"][key].double() * w for n, w in expected.items())
        torch.testing.assert_close(value.double(), mean.to(value.dtype).double(), rtol=1e-6, atol=1e-7)
