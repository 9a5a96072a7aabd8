"""The segmentation network: a MONAI U-Net built from the model configuration."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceFocalLoss
from monai.networks.nets import UNet
from torch import nn

from fedgin.config import ModelConfig, TrainConfig, check_device_name
from fedgin.errors import ConfigError
from fedgin.labels import NUM_CLASSES


def build_unet(config: ModelConfig, in_channels: int = 1, out_channels: int = NUM_CLASSES) -> UNet:
    """A 2D or 3D MONAI U-Net with `out_channels` logits (6: background and five organs)."""
    if len(config.strides) != len(config.channels) - 1:
        raise ConfigError(
            f"model: strides needs one entry fewer than channels "
            f"(got {len(config.channels)} channels, {len(config.strides)} strides)"
        )
    # Affine instance norm: per-sample statistics, so FedAvg averages only weights, never running stats.
    norm = ("instance", {"affine": True}) if config.norm == "instance" else "batch"
    return UNet(
        spatial_dims=config.dimensions,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
        norm=norm,
        dropout=config.dropout,
    )


def build_loss(name: str) -> nn.Module:
    """Dice + cross-entropy (default) or the authors' 0.5 focal + 0.5 soft Dice, on logits."""
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_dice=1.0, lambda_ce=1.0)
    if name == "focal_dice":
        return DiceFocalLoss(
            to_onehot_y=True, softmax=True, batch=True, lambda_dice=0.5, lambda_focal=0.5, gamma=2.0
        )
    raise ConfigError(f"train.loss: unknown loss {name!r} (dice_ce or focal_dice)")


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when a GPU is present, else the CPU; ConfigError (one line) for a name that is not a
    device (config.DEVICE_NAME) or a device this machine does not have."""
    try:
        check_device_name(name)
    except ValueError as error:
        raise ConfigError(f"train.device: {error}") from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name} asked for, but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device: {name} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device: {name} asked for, but no MPS (Apple GPU) device is available")
    return device


def resolve_amp(setting: bool | None, device: torch.device) -> bool:
    """Mixed precision: as `train.amp` says, or (unset) on CUDA only, where it pays."""
    return setting if setting is not None else device.type == "cuda"


def resolve_device_and_amp(train: TrainConfig) -> tuple[torch.device, bool]:
    """The device and mixed-precision setting of a run's `[train]` table, in one place for every caller."""
    device = resolve_device(train.device)
    return device, resolve_amp(train.amp, device)
