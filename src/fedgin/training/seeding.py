"""Deterministic seeds derived from (run seed, purpose, counter), so any step can be replayed or resumed."""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a run seed and labels (purpose, step, client name), stable across processes."""
    words = [part if isinstance(part, int) else zlib.crc32(part.encode()) for part in parts]
    state = np.random.SeedSequence([abs(word) for word in words]).generate_state(2, np.uint32)
    return int(state.view(np.uint64)[0]) >> 1


def torch_generator(*parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*parts))
    return generator


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; in deterministic mode also ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """The global generators' states as tensors and plain values, so checkpoints load with weights_only.

    numpy's state would pickle as an ndarray (a global the safe loader refuses), so its key travels as an
    int64 tensor and Python's as a tuple of ints.
    """
    name, key, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(word) for word in internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
