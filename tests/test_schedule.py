"""Learning-rate schedules: values at given steps and rounds, and what the trainer applies."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from fedgin.config import ModelConfig, RunConfig, TrainConfig
from fedgin.training.schedule import learning_rate, schedule_values
from fedgin.training.trainer import LocalTrainer


def test_poly_is_nnunets_decay() -> None:
    train = TrainConfig(lr=0.01, lr_schedule="poly", lr_power=0.9)
    assert learning_rate(train, 0, 1000) == 0.01
    assert learning_rate(train, 500, 1000) == pytest.approx(0.01 * 0.5**0.9)
    assert learning_rate(train, 999, 1000) == pytest.approx(0.01 * 0.001**0.9)
    values = schedule_values(train, 1000)
    assert all(a > b > 0 for a, b in itertools.pairwise(values))
    # Over 12 rounds the last round still trains, at (1/12)^0.9 of the base rate.
    assert learning_rate(train, 11, 12) == pytest.approx(0.01 * (1 / 12) ** 0.9)


def test_cosine_with_warmup_and_constant() -> None:
    cosine = TrainConfig(lr=1.0, lr_schedule="cosine", warmup_fraction=0.25)
    # 8 indices, 2 of warm-up: 1/3, 2/3, then the half cosine over the remaining 6 starting at the peak.
    expected = [1 / 3, 2 / 3] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert schedule_values(cosine, 8) == pytest.approx(expected)
    assert schedule_values(TrainConfig(lr=0.3, lr_schedule="constant"), 5) == [0.3] * 5
    warm_constant = TrainConfig(lr=1.0, lr_schedule="constant", warmup_fraction=0.5)
    assert schedule_values(warm_constant, 4) == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    # A schedule of one step (or round) is its base rate, even with warm-up.
    assert learning_rate(TrainConfig(lr=0.2, warmup_fraction=0.9), 0, 1) == 0.2


def test_out_of_range_and_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="outside a schedule of 4"):
        learning_rate(TrainConfig(), 4, 4)
    with pytest.raises(ValueError):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError):
        TrainConfig(warmup_fraction=1.0)


class _Slices(torch.utils.data.Dataset):
    """Eight random 16 x 16 slices with labels: enough to drive the optimizer."""

    num_cases = 1

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(8, 1, 16, 16, generator=generator)
        self.labels = torch.randint(0, 6, (8, 1, 16, 16), generator=generator)
        self.foreground = [True] * 8

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index]}


def test_trainer_applies_the_schedule_step_by_step_or_a_fixed_rate(tmp_path: Path) -> None:
    config = RunConfig(
        output=tmp_path,
        model=ModelConfig(channels=(4, 8), strides=(2,)),
        gin={"enabled": False},
        train={"steps": 6, "batch_size": 4, "lr": 1e-3, "lr_schedule": "cosine", "device": "cpu"},
    )
    trainer = LocalTrainer(config, _Slices())
    applied = []
    for _ in range(6):
        trainer.train_steps(1)
        applied.append(trainer.optimizer.param_groups[0]["lr"])
    assert applied == pytest.approx(schedule_values(config.train, 6))
    # Steps past the schedule's end (a run extended afterwards) keep its last rate instead of failing.
    assert trainer.learning_rate(10) == applied[-1]
    fixed = LocalTrainer(config, _Slices(), lr=2e-4)  # a federated client: the server chose the rate
    fixed.train_steps(2)
    assert fixed.optimizer.param_groups[0]["lr"] == 2e-4
