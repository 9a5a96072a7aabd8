"""PNG montage of synthetic subjects: axial slices per modality with coloured organ outlines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedgin.config import SynthConfig
from fedgin.io_utils import atomic_path
from fedgin.labels import LABEL_NAMES

#: Outline colour per fedgin organ class.
ORGAN_COLOURS: dict[int, str] = {1: "#e6550d", 2: "#31a354", 3: "#3182bd", 4: "#f2d50f", 5: "#e377c2"}


def display_window(image: np.ndarray, modality: str) -> tuple[float, float]:
    """Grey-level window: the abdominal CT window, or the 1-99.5 percentiles for MRI."""
    if modality == "ct":
        return -160.0, 240.0
    low, high = np.percentile(image, [1.0, 99.5])
    return float(low), float(high)


def preview_slices(labels: np.ndarray, count: int) -> list[int]:
    """`count` axial indices spread over the organs' z extent (inner part, where most organs show)."""
    z = np.flatnonzero(labels.any(axis=(0, 1)))
    if len(z) == 0:
        return list(np.linspace(0, labels.shape[2] - 1, count).round().astype(int))
    return [int(v) for v in np.linspace(z[0], z[-1], count + 2)[1:-1].round()]


def save_preview(
    out_png: Path,
    config: SynthConfig,
    modalities: Sequence[str] | None = None,
    subjects: int = 3,
    slices: int = 4,
) -> Path:
    """Save a montage: one row per (subject, modality), `slices` axial slices, organ contours and a legend.

    Radiological display: the patient's right on the image's left, anterior up.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from fedgin.synth import subject_anatomy, subject_image

    modalities = list(modalities or config.modalities)
    subjects = max(1, min(subjects, config.subjects))
    rows = subjects * len(modalities)
    figure, axes = plt.subplots(rows, slices, figsize=(2.4 * slices, 2.5 * rows + 0.6), squeeze=False)
    for subject in range(subjects):
        anatomy = subject_anatomy(config, subject)
        labels = anatomy.labels()
        levels = preview_slices(labels, slices)
        for m, modality in enumerate(modalities):
            image = subject_image(config, subject, modality, anatomy)  # type: ignore[arg-type]
            low, high = display_window(image, modality)
            for column, z in enumerate(levels):
                axis = axes[subject * len(modalities) + m, column]
                # array is (x, y): transpose to rows = y, origin lower puts anterior up, low x (right) left
                axis.imshow(image[:, :, z].T, cmap="gray", vmin=low, vmax=high, origin="lower")
                for organ, colour in ORGAN_COLOURS.items():
                    mask = labels[:, :, z] == organ
                    if mask.any():
                        axis.contour(mask.T, levels=[0.5], colors=colour, linewidths=0.8, origin="lower")
                axis.set_xticks([])
                axis.set_yticks([])
                axis.set_title(f"s{subject} {modality} z={z}", fontsize=8)
                axis.text(2, 2, "R", color="yellow", fontsize=7, va="bottom")
    handles = [Line2D([0], [0], color=colour, lw=2) for colour in ORGAN_COLOURS.values()]
    names = [LABEL_NAMES[organ] for organ in ORGAN_COLOURS]
    figure.legend(handles, names, loc="lower center", ncol=len(names), fontsize=9, frameon=False)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
    return out_png
