"""Overlay PNG of a prediction: a few axial slices of the input with the predicted organ outlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from nibabel.orientations import apply_orientation, io_orientation

from fedgin.io_utils import atomic_path
from fedgin.synth.preview import ORGAN_COLOURS, display_window, preview_slices

#: Outline colours for label values beyond the fedgin schema (a model exported with more classes).
EXTRA_COLOURS: tuple[str, ...] = ("#8c564b", "#17becf", "#bcbd22", "#7f7f7f", "#9467bd")


def _colour(index: int) -> str:
    return ORGAN_COLOURS.get(index, EXTRA_COLOURS[index % len(EXTRA_COLOURS)])


def save_prediction_preview(
    out_png: Path,
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    modality: str,
    labels: dict[int, str],
    title: str,
    slices: int = 4,
) -> Path:
    """Write `slices` axial slices through the predicted organs, outlines per class and a legend.

    The volume is shown in RAS+ orientation from the affine, whatever its voxel order on disk, in the
    radiological convention: the patient's right on the image's left, anterior up.
    """
    ornt = io_orientation(affine)
    image_ras = apply_orientation(np.asarray(image, dtype=np.float32), ornt)
    label_ras = apply_orientation(np.asarray(label), ornt)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing_ras = spacing[np.argsort(ornt[:, 0])]  # voxel sizes in RAS axis order
    low, high = display_window(image_ras, modality)
    levels = preview_slices(label_ras, max(1, min(slices, label_ras.shape[2])))
    present = [index for index in labels if index > 0 and (label_ras == index).any()]

    figure = Figure(figsize=(2.6 * len(levels), 3.1), dpi=100)
    FigureCanvasAgg(figure)  # an Agg canvas of its own: no global pyplot state
    axes = figure.subplots(1, len(levels), squeeze=False)[0]
    for axis, z in zip(axes, levels, strict=True):
        # Rows are A (origin lower: anterior up); columns run R to L, so the patient's right is on the left.
        axis.imshow(
            image_ras[::-1, :, z].T,
            cmap="gray",
            vmin=low,
            vmax=high,
            origin="lower",
            aspect=float(spacing_ras[1] / spacing_ras[0]),
            interpolation="nearest",
        )
        for index in present:
            mask = np.equal(label_ras[::-1, :, z].T, index)
            if mask.any():
                # origin=None: mask[0, 0] sits at (0, 0), the centre of imshow's first pixel (origin="lower"
                # would put it at (0.5, 0.5) and shift every outline half a pixel up and to the right).
                axis.contour(mask, levels=[0.5], colors=_colour(index), linewidths=0.9)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"z={z}", fontsize=8)
        axis.text(1, 1, "R", color="yellow", fontsize=8, va="bottom")
    handles = [Line2D([0], [0], color=_colour(index), lw=2) for index in present]
    if handles:
        figure.legend(handles, [labels[index] for index in present], loc="lower center", ncol=len(handles),
                      fontsize=8, frameon=False)  # fmt: skip
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0.07 if handles else 0, 1, 0.94))
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png")
    return out_png
