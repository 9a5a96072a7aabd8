"""Learning-rate schedules: the learning rate as a pure function of progress (a step or a round).

A schedule that is a function of (settings, index, total) and keeps no state of its own resumes exactly:
a single-site run resumed at step t, or a federation resumed at round r, uses the same learning rates as
the uninterrupted run. That is why fedgin does not use `torch.optim.lr_scheduler` here: in a federation
the server decides each round's rate and sends it, and the clients' optimizers live for one round only.

With base rate lr0, index i of n (0-based) and w = round(warmup_fraction * n) warm-up indices:

- warm-up (i < w): lr0 * (i + 1) / (w + 1), a linear ramp towards lr0;
- then, with p = (i - w) / (n - w) in [0, 1):
  - ``constant``: lr0
  - ``poly``: lr0 * (1 - p) ** power, nnU-Net's decay (power 0.9)
  - ``cosine``: lr0 * (1 + cos(pi * p)) / 2

Example:
    >>> from fedgin.config import TrainConfig
    >>> train = TrainConfig(lr=1e-3, lr_schedule="poly", lr_power=0.9)
    >>> [round(learning_rate(train, i, 4), 6) for i in range(4)]
    [0.001, 0.000772, 0.000536, 0.000287]
"""

from __future__ import annotations

import math

from fedgin.config import TrainConfig


def learning_rate(train: TrainConfig, index: int, total: int) -> float:
    """The learning rate of step (or round) `index` (0-based) of `total` under `train`'s schedule."""
    if total < 1 or not 0 <= index < total:
        raise ValueError(f"learning_rate: index {index} is outside a schedule of {total}")
    base = train.lr
    warmup = min(round(train.warmup_fraction * total), total - 1)
    if index < warmup:
        return base * (index + 1) / (warmup + 1)
    progress = (index - warmup) / (total - warmup)
    if train.lr_schedule == "poly":
        return base * (1.0 - progress) ** train.lr_power
    if train.lr_schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


def schedule_values(train: TrainConfig, total: int) -> list[float]:
    """Every learning rate of a schedule of `total` steps or rounds (for plots and checks)."""
    return [learning_rate(train, index, total) for index in range(total)]


__all__ = ["learning_rate", "schedule_values"]
