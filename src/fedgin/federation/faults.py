"""Fault injection: one site of a simulated federation sends poisoned weights (tests and robustness studies).

With `[federation.fault] site = "x", mode = ...` the site `x` trains as usual and then replies, instead of its
trained weights w (global weights g, update u = w - g):

- `sign_flip`: g - u, the update reversed;
- `scale`: g + scale * u (default x100), a boosted update;
- `random`: Gaussian noise with each tensor's own mean and standard deviation, the update thrown away;
- `shuffled_labels`: the site trains on its images each paired with another of its slices' label (a
  fixed permutation per round), so its update is honest work on wrong ground truth (a data-poisoning site
  whose weights look like any other's, unlike the three model-poisoning modes).

Only floating-point tensors are changed (integer buffers stay as trained). The noise is drawn from a generator
seeded by (run seed, site, round), so a poisoned federation is as reproducible as a clean one.
The setting travels in the run's settings the server sends: only the federation that asks for it is
harmed, and no site's data or weights leave it because of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fedgin.config import FaultConfig
from fedgin.errors import ConfigError
from fedgin.slices import SliceDataset


class ShuffledLabels(Dataset):
    """A SliceDataset whose item i carries the label of slice `permutation[i]` (mode `shuffled_labels`).

    >>> import torch
    >>> permutation = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    >>> sorted(permutation.tolist()) == list(range(10))
    True
    """

    def __init__(self, dataset: SliceDataset, generator: torch.Generator) -> None:
        self.dataset = dataset
        self.permutation = torch.randperm(len(dataset), generator=generator).tolist()
        # The batch sampler balances slices by whether the label they carry shows an organ.
        self.foreground = np.asarray(dataset.foreground, dtype=bool)[self.permutation]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        item["label"] = self.dataset[self.permutation[index]]["label"]
        return item

    def __getattr__(self, name: str) -> Any:  # num_cases and the rest of SliceDataset's attributes
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def shuffle_labels(train_set: Any, generator: torch.Generator) -> ShuffledLabels:
    """The site's training slices with shuffled labels; 3D patch sampling has no slices to shuffle."""
    if not isinstance(train_set, SliceDataset):
        raise ConfigError("federation.fault.mode shuffled_labels needs a 2D model (model.dimensions = 2)")
    return ShuffledLabels(train_set, generator)


def poison_update(
    trained: Mapping[str, torch.Tensor],
    global_state: Mapping[str, torch.Tensor],
    fault: FaultConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The weights a poisoned site sends in place of `trained` (see the module docstring for each mode;
    `shuffled_labels` poisons the data, not the weights: they are sent as trained)."""
    if fault.mode == "shuffled_labels":
        return dict(trained)
    poisoned = {}
    for key, weights in trained.items():
        start = global_state.get(key)
        if not weights.is_floating_point() or start is None:
            poisoned[key] = weights
        elif fault.mode == "sign_flip":
            poisoned[key] = start - (weights - start)
        elif fault.mode == "scale":
            poisoned[key] = start + fault.scale * (weights - start)
        else:
            noise = torch.randn(weights.shape, generator=generator, dtype=torch.float32).to(weights.device)
            spread = weights.float().std() if weights.numel() > 1 else weights.new_tensor(1.0).float()
            poisoned[key] = (weights.float().mean() + spread * noise).to(weights.dtype)
    return poisoned


__all__ = ["ShuffledLabels", "poison_update", "shuffle_labels"]
