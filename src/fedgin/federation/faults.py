"""Fault injection: one site of a simulated federation sends poisoned weights (tests and robustness studies).

With `[federation.fault] site = "x", mode = ...` the site `x` trains as usual and then replies, instead of its
trained weights w (global weights g, update u = w - g):

- `sign_flip`: g - u, the update reversed;
- `scale`: g + scale * u (default x100), a boosted update;
- `random`: Gaussian noise with each tensor's own mean and standard deviation, the update thrown away.

Only floating-point tensors are changed (integer buffers stay as trained). The noise is drawn from a generator
seeded by (run seed, site, round), so a poisoned federation is as reproducible as a clean one.
The setting travels in the run's settings the server sends: only the federation that asks for it is
harmed, and no site's data or weights leave it because of it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedgin.config import FaultConfig


def poison_update(
    trained: Mapping[str, torch.Tensor],
    global_state: Mapping[str, torch.Tensor],
    fault: FaultConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The weights a poisoned site sends in place of `trained` (see the module docstring for each mode)."""
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


__all__ = ["poison_update"]
