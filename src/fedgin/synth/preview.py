"""PNG montages of synthetic subjects: axial slices per modality or per protocol, with organ outlines."""

from __future__ import annotations

import textwrap
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


def most_organs_slice(labels: np.ndarray) -> int:
    """The axial index where the most organ classes show (ties: the most organ voxels)."""
    present = np.stack([(labels == organ).any(axis=(0, 1)) for organ in ORGAN_COLOURS]).sum(axis=0)
    voxels = (labels > 0).sum(axis=(0, 1))
    return int(np.lexsort((voxels, present))[-1])


def body_box(tissue: np.ndarray, margin: int = 3) -> tuple[slice, slice]:
    """In-plane (x, y) slices around everything that is not air, over all z."""
    body = tissue.any(axis=2)
    if not body.any():
        return slice(None), slice(None)
    xs, ys = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    return (
        slice(max(xs[0] - margin, 0), xs[-1] + margin + 1),
        slice(max(ys[0] - margin, 0), ys[-1] + margin + 1),
    )


def draw_slice(axis, image: np.ndarray, labels: np.ndarray, z: int, window: tuple[float, float]) -> None:
    """One axial slice in radiological display (the patient's right on the viewer's left, anterior up).

    The arrays are RAS+ (x to the patient's right): x is flipped so high x shows on the left, then
    transposed so rows are y; origin "lower" puts anterior up.
    """
    axis.imshow(image[::-1, :, z].T, cmap="gray", vmin=window[0], vmax=window[1], origin="lower")
    for organ, colour in ORGAN_COLOURS.items():
        mask = labels[::-1, :, z] == organ
        if mask.any():
            axis.contour(mask.T, levels=[0.5], colors=colour, linewidths=0.8)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.text(2, 2, "R", color="yellow", fontsize=7, va="bottom")


def _legend_and_save(figure, out_png: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    handles = [Line2D([0], [0], color=colour, lw=2) for colour in ORGAN_COLOURS.values()]
    names = [LABEL_NAMES[organ] for organ in ORGAN_COLOURS]
    figure.legend(handles, names, loc="lower center", ncol=len(names), fontsize=9, frameon=False)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
    return out_png


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_preview(
    out_png: Path,
    config: SynthConfig,
    modalities: Sequence[str] | None = None,
    subjects: int = 3,
    slices: int = 4,
) -> Path:
    """Save a montage: one row per (subject, modality), `slices` axial slices, organ contours and a legend.

    Each subject is shown under the protocol its mix draws for it.
    """
    from fedgin.synth import subject_anatomy, subject_image, subject_protocol

    plt = _pyplot()
    modalities = list(modalities or config.modalities)
    subjects = max(1, min(subjects, config.subjects))
    rows = subjects * len(modalities)
    figure, axes = plt.subplots(rows, slices, figsize=(2.4 * slices, 2.5 * rows + 0.6), squeeze=False)
    for subject in range(subjects):
        anatomy = subject_anatomy(config, subject)
        labels = anatomy.labels()
        levels = preview_slices(labels, slices)
        for m, modality in enumerate(modalities):
            protocol = subject_protocol(config, subject, modality)
            image = subject_image(config, subject, modality, anatomy, protocol)  # type: ignore[arg-type]
            window = display_window(image, modality)
            for column, z in enumerate(levels):
                axis = axes[subject * len(modalities) + m, column]
                draw_slice(axis, image, labels, z, window)
                axis.set_title(f"s{subject} {protocol} z={z}", fontsize=7)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return _legend_and_save(figure, out_png)


def save_protocol_preview(
    out_png: Path, config: SynthConfig, protocols: Sequence[str], subject: int = 0, columns: int = 6
) -> Path:
    """Save a montage with one tile per protocol: subject `subject`'s same slice under each protocol.

    `protocols` are names of shipped protocols or of the config's custom ones; the anatomy is the same in
    every tile, so what differs is what the scanners do.
    """
    from fedgin.synth import subject_anatomy, subject_image
    from fedgin.synth.protocols import PROTOCOLS, describe, family_of

    plt = _pyplot()
    custom = {} if config.protocols is None or isinstance(config.protocols, str) else config.protocols.custom
    library = {**PROTOCOLS, **custom}
    anatomy = subject_anatomy(config, subject)
    box_x, box_y = body_box(anatomy.tissue)
    labels = anatomy.labels()[box_x, box_y]
    z = most_organs_slice(labels)
    columns = max(1, min(columns, len(protocols)))
    rows = -(-len(protocols) // columns)
    aspect = labels.shape[1] / max(labels.shape[0], 1)  # tile height / width
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.5 * columns, rows * (2.5 * aspect + 0.45) + 0.4), squeeze=False
    )
    for axis in axes.flat[len(protocols) :]:
        axis.set_axis_off()
    for axis, name in zip(axes.flat, protocols, strict=False):
        protocol = library[name]
        modality = family_of(protocol)
        image = subject_image(config, subject, modality, anatomy, protocol)[box_x, box_y]  # type: ignore[arg-type]
        draw_slice(axis, image, labels, z, display_window(image, modality))
        axis.set_title("\n".join([name, *textwrap.wrap(describe(protocol), 38)]), fontsize=6)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return _legend_and_save(figure, out_png)
