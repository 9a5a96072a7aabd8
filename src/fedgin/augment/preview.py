"""GIN draws (or GIN-IPA's mask and views) per modality for a PNG grid (drawn by `fedgin.figures`), to eyeball
that GIN remaps intensities and keeps anatomy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedgin.augment.gin import RandGIN, apply_gin
from fedgin.augment.ipa import RandIPA, blend_mask
from fedgin.figures import save_gin_grid


def _slices(images: dict[str, np.ndarray], caller: str) -> dict[str, torch.Tensor]:
    """Each preview image as a float32 (H, W) tensor; refused unless there is one and each is 2D."""
    if not images:
        raise ValueError(f"{caller} needs at least one image")
    for name, image in images.items():
        if image.ndim != 2:
            raise ValueError(f"preview image {name!r} must be 2D (H, W), got shape {image.shape}")
    return {name: torch.as_tensor(np.asarray(image, dtype=np.float32)) for name, image in images.items()}


def save_gin_preview(
    images: dict[str, np.ndarray], out_png: Path, draws: int = 5, seed: int = 0, shared_network: bool = False
) -> Path:
    """Write a grid: one row per modality name, the original (H, W) slice then `draws` GIN draws of it.

    Every panel is shown with its own min-max grey scale, because GIN changes the intensity range.
    Returns the path written.
    """
    slices = _slices(images, "save_gin_preview")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    gin = RandGIN(prob=1.0, shared_network=shared_network)
    gin.set_random_state(seed=seed)
    panels = {}
    for name, original in slices.items():
        # One batch of `draws` copies: each copy gets its own random network in a single GIN call.
        augmented = gin(original.expand(draws, 1, *original.shape).contiguous())
        panels[name] = [original.numpy()] + [augmented[i, 0].numpy() for i in range(draws)]
    return save_gin_grid(panels, out_png)


#: The panels of an IPA preview row.
IPA_PANELS = (
    "original",
    "GIN 1",
    "GIN 2",
    "mask m",
    "m GIN 1 + (1-m) GIN 2",
    "(1-m) GIN 1 + m GIN 2",
    "GIN 3",
)


def save_ipa_preview(images: dict[str, np.ndarray], out_png: Path, seed: int = 0) -> Path:
    """Write a grid: per modality name, the (H, W) slice, its two blended GIN draws, the mask, the two
    blends and the plain third view (`IPA_PANELS`)."""
    slices = _slices(images, "save_ipa_preview")
    ipa = RandIPA(RandGIN(prob=1.0))
    ipa.set_random_state(seed=seed)
    panels = {}
    for name, original in slices.items():
        batch = original.reshape(1, 1, *original.shape)
        views = ipa(batch)
        params = ipa.last_params
        assert params is not None
        first, second = (apply_gin(batch, gin) for gin in params.gins[:2])
        mask = blend_mask(params, batch.shape[2:])
        row = [original, first, second, mask, views.blended, views.complement, views.plain]
        panels[name] = [panel.reshape(original.shape).numpy() for panel in row]
    return save_gin_grid(panels, out_png, titles=IPA_PANELS)
