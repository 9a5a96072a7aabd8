"""Reading fedgin checkpoints: weights plus the run configuration that built them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedgin.config import RunConfig
from fedgin.errors import DataError
from fedgin.model import build_unet


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Read a fedgin checkpoint, with an error that names the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise DataError(path, f"not a readable checkpoint ({type(error).__name__})") from None
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
