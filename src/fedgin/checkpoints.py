"""Reading fedgin checkpoints: weights plus the run configuration that built them.

A checkpoint is data, never code: it is read with `torch.load(weights_only=True)`, which rebuilds only
tensors and plain containers and refuses every other pickled global, so a crafted file cannot run anything.
fedgin writes checkpoints that hold nothing else (the RNG state as tensors, the config as JSON-able values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedgin.config import RunConfig
from fedgin.errors import DataError
from fedgin.model import build_unet

#: Format tag fedgin writes into training and federation checkpoints.
CHECKPOINT_FORMAT = "fedgin-checkpoint/2"


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a pickle would import, read without executing it (empty when none or unreadable)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a torch file at all: the caller reports that instead
        return []


def load_torch_file(path: str | Path, device: torch.device | str = "cpu", *, what: str = "checkpoint") -> Any:
    """`torch.load(weights_only=True)` with a one-line DataError when the file is not plain tensors.

    A file that needs more than the safe loader allows (a pickled object, a function, a numpy array) is
    refused and the globals it names are listed: it may be an attack, or a checkpoint of an older fedgin
    that stored numpy state, and in neither case is it unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged or foreign file
        names = _unsafe_globals(path)
        if not names:
            raise DataError(path, f"not a readable {what} ({type(error).__name__})") from None
    listing = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise DataError(
        path,
        f"refused: it holds objects beyond tensors and plain values ({listing}), which could run code when "
        "loaded, and fedgin never unpickles those (fedgin 0.1 checkpoints stored numpy RNG state that way "
        "and cannot be read safely: train again, or export the model with fedgin 0.1)",
    )


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Read a fedgin checkpoint safely, with an error that names the file when it is not one."""
    checkpoint = load_torch_file(path, device)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise DataError(path, "not a fedgin checkpoint (no model weights or config)")
    return checkpoint


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, RunConfig]:
    """The network of a checkpoint, in eval mode on `device`, with the configuration it was trained with."""
    checkpoint = load_checkpoint(path, device)
    config = RunConfig.model_validate(checkpoint["config"])
    model = build_unet(config.model).to(device)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise DataError(
            path, f"weights do not fit the configured model ({str(error).splitlines()[0]})"
        ) from None
    return model.eval(), config
