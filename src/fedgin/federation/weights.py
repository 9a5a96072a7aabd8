"""Model weights as Flower ArrayRecords: conversion, FedBN's local keys, screening of client updates."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from torch import nn

#: Normalisation layers whose affine weights and running statistics FedBN keeps on the site.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
)


def norm_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the normalisation layers (weights, biases, running statistics)."""
    keys: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            prefix = f"{name}." if name else ""
            keys.update(prefix + key for key in module.state_dict())
    return keys


#: The `federation.update_dtype` names as torch dtypes.
WIRE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}


def to_record(
    state: Mapping[str, torch.Tensor], exclude: set[str] | None = None, dtype: str = "float32"
) -> ArrayRecord:
    """A state dict (minus `exclude`) as an ArrayRecord, keys in the state dict's order.

    `dtype` ("float32" or "float16", `federation.update_dtype`) is the type floating-point tensors travel
    in; integer buffers (batch norm's num_batches_tracked) are sent as they are.
    """
    exclude = exclude or set()
    wire = WIRE_DTYPES[dtype]

    def on_wire(value: torch.Tensor) -> torch.Tensor:
        value = value.detach().cpu()
        return value.to(wire) if value.dtype.is_floating_point and wire != torch.float32 else value

    return ArrayRecord(
        {
            key: Array(on_wire(value).contiguous().numpy())
            for key, value in state.items()
            if key not in exclude
        }
    )


def to_float32(record: ArrayRecord) -> ArrayRecord:
    """The record with float16 arrays cast to float32 (before averaging: FedAvg sums in the arrays' dtype)."""
    if not any(record[key].dtype == "float16" for key in record):
        return record
    return ArrayRecord(
        {
            key: Array(array.numpy().astype(np.float32)) if array.dtype == "float16" else array
            for key, array in record.items()
        }
    )


def to_state_dict(record: ArrayRecord, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The record's arrays as tensors with the dtypes of `like` (FedAvg returns int buffers as floats)."""
    state = {}
    for key, array in record.items():
        value = torch.from_numpy(np.array(array.numpy(), copy=True))
        reference = like.get(key)
        if reference is not None and value.dtype != reference.dtype:
            value = value.round() if not reference.dtype.is_floating_point else value
            value = value.to(reference.dtype)
        state[key] = value
    return state


def merge(base: ArrayRecord, update: ArrayRecord) -> ArrayRecord:
    """`base` with the arrays of `update` replacing those of the same key (FedBN's partial updates)."""
    merged = ArrayRecord({key: base[key] for key in base})
    for key in update:
        merged[key] = update[key]
    return merged


def screen(update: ArrayRecord, reference: ArrayRecord, expected_keys: set[str]) -> str | None:
    """Why a client's update cannot be aggregated (wrong keys, shapes or non-finite values), or None."""
    keys = set(update.keys())
    if keys != expected_keys:
        missing, extra = sorted(expected_keys - keys), sorted(keys - expected_keys)
        return f"wrong keys (missing {missing[:3]}, unexpected {extra[:3]})"
    for key in update:
        array = update[key]
        if tuple(array.shape) != tuple(reference[key].shape):
            return f"wrong shape for {key}: {tuple(array.shape)} instead of {tuple(reference[key].shape)}"
        values = array.numpy()
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            return f"non-finite weights in {key}"
    return None


def update_norm(update: ArrayRecord, reference: ArrayRecord) -> float:
    """L2 norm of update - reference over the floating-point arrays (the size of a site's step: what DP
    clipping bounds and what a poisoned site inflates)."""
    total = 0.0
    for key in update:
        values = update[key].numpy()
        if values.dtype.kind == "f":
            total += float(
                np.square(values.astype(np.float64) - reference[key].numpy().astype(np.float64)).sum()
            )
    return float(np.sqrt(total))


def content_bytes(content: RecordDict) -> int:
    """Payload bytes of a message's records (arrays, metrics, config), as Flower counts them."""
    return sum(record.count_bytes() for record in content.values())
