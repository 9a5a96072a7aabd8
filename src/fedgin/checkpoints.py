"""Reading fedgin checkpoints: weights plus the run configuration that built them.

A checkpoint is data, never code: it is read with `torch.load(weights_only=True)`, which rebuilds only
tensors and plain containers and refuses every other pickled global, so a crafted file cannot run anything.
fedgin writes checkpoints that hold nothing else (the RNG state as tensors, the config as JSON-able values).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedgin.config import RunConfig
from fedgin.errors import DataError
from fedgin.io_utils import atomic_write
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


def save_torch_file(path: str | Path, payload: Any) -> None:
    """`torch.save` into `path` atomically: a failed write (a full disk) leaves the previous file intact and
    no temporary file behind, and raises an OSError naming `path`.

    torch.save reports a failed write only as a RuntimeError of its zip writer ("unexpected pos ..."),
    without the errno; so the file is serialized in memory and written by Python, whose OSError says why.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Read a fedgin checkpoint safely, with an error that names the file when it is not one."""
    checkpoint = load_torch_file(path, device)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise DataError(path, "not a fedgin checkpoint (no model weights or config)")
    return checkpoint


def nonfinite_weights(state: Mapping[str, torch.Tensor], limit: int = 3) -> str | None:
    """The tensors of `state` holding NaN or Inf, e.g. `model.0.conv.weight: 12 NaN; ... (5 layers)`, or
    None when every weight is finite."""
    found = []
    for name, value in state.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(value).sum())
        inf = value.numel() - int(finite.sum()) - nan
        found.append(f"{name}: " + ", ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n))
    if not found:
        return None
    more = f" ({len(found)} layers)" if len(found) > limit else ""
    return "; ".join(found[:limit]) + ("; ..." if len(found) > limit else "") + more


def require_finite_weights(path: str | Path, state: Mapping[str, torch.Tensor]) -> None:
    """DataError naming the file when a model's weights are not all finite: such a model predicts
    nothing useful (an empty segmentation, Dice 0), so it is never exported, evaluated or predicted with."""
    problem = nonfinite_weights(state)
    if problem is not None:
        raise DataError(
            path,
            f"the model's weights are not all finite ({problem}); the run that wrote it diverged, so it "
            "cannot be used (train again with a lower learning rate, or use an earlier checkpoint)",
        )


def load_weights(path: str | Path, model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """`model.load_state_dict(state)` with a one-line DataError naming the file when the weights do not
    fit the model (another architecture or model size: a state_dict size mismatch)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise DataError(path, f"weights do not fit the configured model ({_first_mismatch(error)})") from None
    return model


def _first_mismatch(error: RuntimeError) -> str:
    """The first line of load_state_dict's report that names a tensor (its first line names none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    details = [line for line in lines[1:] if "size mismatch" in line or "key(s)" in line]
    line = (details or lines or [type(error).__name__])[0]
    return line.rstrip(".")


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, RunConfig]:
    """The network of a checkpoint, in eval mode on `device`, with the configuration it was trained with.

    A checkpoint whose weights are not all finite is refused (DataError), as are weights of another model.
    """
    checkpoint = load_checkpoint(path, device)
    config = RunConfig.model_validate(checkpoint["config"])
    require_finite_weights(path, checkpoint["model"])
    model = load_weights(path, build_unet(config.model).to(device), checkpoint["model"])
    return model.eval(), config
