"""A PNG grid of GIN draws per modality, to eyeball that GIN remaps intensities and keeps anatomy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedgin.augment.gin import RandGIN


def save_gin_preview(
    images: dict[str, np.ndarray], out_png: Path, draws: int = 5, seed: int = 0, shared_network: bool = False
) -> Path:
    """Write a grid: one row per modality name, the original (H, W) slice then `draws` GIN draws of it.

    Every panel is shown with its own min-max grey scale, because GIN changes the intensity range.
    Returns the path written.
    """
    if not images:
        raise ValueError("save_gin_preview needs at least one image")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    gin = RandGIN(prob=1.0, shared_network=shared_network)
    gin.set_random_state(seed=seed)
    n_cols = draws + 1
    fig = Figure(figsize=(2.0 * n_cols, 2.1 * len(images)), dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas attached directly: no global pyplot backend state is touched
    axes = fig.subplots(len(images), n_cols, squeeze=False)
    for row, (name, image) in enumerate(images.items()):
        if image.ndim != 2:
            raise ValueError(f"preview image {name!r} must be 2D (H, W), got shape {image.shape}")
        original = torch.as_tensor(np.asarray(image, dtype=np.float32))
        # One batch of `draws` copies: each copy gets its own random network in a single GIN call.
        augmented = gin(original.expand(draws, 1, *original.shape).contiguous())
        panels = [original.numpy()] + [augmented[i, 0].numpy() for i in range(draws)]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
            ax.set_title("original" if col == 0 else f"GIN {col}", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
