"""Every figure fedgin draws: organ outlines, display windows, slice choice, overlays, learning curves, the
study's plots and the data previews.

matplotlib is imported on first use (the CLI starts without it), and every figure gets an Agg canvas of its
own: no pyplot, no global backend state, nothing to close. Each PNG is written atomically by `_save`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedgin.io_utils import atomic_path
from fedgin.labels import LABEL_NAMES, ORGANS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Outline colour per fedgin organ class (previews of data and predictions).
ORGAN_COLOURS: dict[int, str] = {1: "#e6550d", 2: "#31a354", 3: "#3182bd", 4: "#f2d50f", 5: "#e377c2"}
#: Outline colours for label values beyond the fedgin schema (a model exported with more classes).
EXTRA_COLOURS: tuple[str, ...] = ("#8c564b", "#17becf", "#bcbd22", "#7f7f7f", "#9467bd")


def _figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas of its own (matplotlib imported here, on first use)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, out: str | Path, dpi: float | None = None) -> Path:
    """Write `figure` to `out` in one step (a reader never sees half a file), in the format of its suffix."""
    out = Path(out)
    with atomic_path(out) as tmp:
        figure.savefig(
            tmp, dpi="figure" if dpi is None else dpi, format=out.suffix.removeprefix(".") or "png"
        )
    return out


# -- slices, windows, outlines ---------------------------------------------------------------------------
def display_window(image: np.ndarray, modality: str) -> tuple[float, float]:
    """Grey-level window: the abdominal CT window, or the 1-99.5 percentiles for MRI."""
    if modality == "ct":
        return -160.0, 240.0
    low, high = np.percentile(image, [1.0, 99.5])
    return float(low), float(high)


def spread_slices(labels: np.ndarray, count: int) -> list[int]:
    """`count` axial indices (last axis) spread over the organs' z extent (inner part, where most organs
    show)."""
    z = np.flatnonzero(labels.any(axis=(0, 1)))
    if len(z) == 0:
        return list(np.linspace(0, labels.shape[2] - 1, count).round().astype(int))
    return [int(v) for v in np.linspace(z[0], z[-1], count + 2)[1:-1].round()]


def most_organs_slice(labels: np.ndarray) -> int:
    """The axial index (last axis) where the most organ classes show (ties: the most organ voxels)."""
    present = np.stack([(labels == organ).any(axis=(0, 1)) for organ in ORGAN_COLOURS]).sum(axis=0)
    voxels = (labels > 0).sum(axis=(0, 1))
    return int(np.lexsort((voxels, present))[-1])


def most_foreground_slice(labels: np.ndarray) -> int:
    """The axial index (first axis, as in the caches' (z, y, x) arrays) with the most organ voxels."""
    return int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(1)))


def draw_outlines(axis: Axes, labels: np.ndarray, colours: Mapping[int, Any], linewidth: float) -> None:
    """Outline each label value of `colours` found in `labels`, a 2D array as `imshow` shows it.

    `contour` puts labels[0, 0] at (0, 0), the centre of imshow's first pixel (whatever imshow's origin),
    so each outline runs halfway between the pixels of an organ and those outside it. (contour's own
    origin="lower" would put it at (0.5, 0.5) and shift every outline half a pixel.)
    """
    for value, colour in colours.items():
        mask = labels == value
        if mask.any():
            axis.contour(mask, levels=[0.5], colors=[colour], linewidths=linewidth)


def draw_axial(
    axis: Axes,
    image: np.ndarray,
    labels: np.ndarray,
    window: tuple[float, float],
    colours: Mapping[int, Any],
    linewidth: float = 0.8,
    marker: tuple[float, float] = (2, 7),
    **imshow: Any,
) -> None:
    """An axial (x, y) slice of a RAS+ volume in radiological display (the patient's right on the viewer's
    left, anterior up) with its organs outlined and an "R" on the patient's right; `marker` is the R's
    (offset in pixels, font size) and `imshow` adds options such as aspect or interpolation.

    The slice's x is flipped so high x (the patient's right) shows on the left, then transposed so rows
    are y; origin "lower" puts anterior up.
    """
    axis.imshow(image[::-1].T, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", **imshow)
    draw_outlines(axis, labels[::-1].T, colours, linewidth)
    axis.set_xticks([])
    axis.set_yticks([])
    offset, size = marker
    axis.text(offset, offset, "R", color="yellow", fontsize=size, va="bottom")


def _organ_legend(
    figure: Figure, colours: Mapping[int, str], names: Mapping[int, str], fontsize: int
) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([0], [0], color=colour, lw=2) for colour in colours.values()]
    figure.legend(handles, [names[value] for value in colours], loc="lower center", ncol=len(handles),
                  fontsize=fontsize, frameon=False)  # fmt: skip


# -- data previews --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxialTile:
    """One tile of a preview: an axial (x, y) slice of a RAS+ image and its labels, the window to show the
    image in (chosen over the whole volume) and a title."""

    image: np.ndarray
    labels: np.ndarray
    window: tuple[float, float]
    title: str


def save_synth_montage(out_png: str | Path, rows: Sequence[Sequence[AxialTile]]) -> Path:
    """A montage of synthetic subjects: one row of slices per (subject, modality), organs outlined."""
    columns = max(len(row) for row in rows)
    figure = _figure(2.4 * columns, 2.5 * len(rows) + 0.6)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row, tiles in enumerate(rows):
        for column, tile in enumerate(tiles):
            axis = axes[row, column]
            draw_axial(axis, tile.image, tile.labels, tile.window, ORGAN_COLOURS)
            axis.set_title(tile.title, fontsize=7)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    _organ_legend(figure, ORGAN_COLOURS, LABEL_NAMES, 9)
    return _save(figure, out_png, dpi=90)


def save_protocol_montage(out_png: str | Path, tiles: Sequence[AxialTile], columns: int) -> Path:
    """A montage with one tile per protocol, `columns` tiles a row, organs outlined."""
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    width, height = tiles[0].labels.shape
    aspect = height / max(width, 1)  # tile height / width
    figure = _figure(2.5 * columns, rows * (2.5 * aspect + 0.45) + 0.4)
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat[len(tiles) :]:
        axis.set_axis_off()
    for axis, tile in zip(axes.flat, tiles, strict=False):
        draw_axial(axis, tile.image, tile.labels, tile.window, ORGAN_COLOURS)
        axis.set_title(tile.title, fontsize=6)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    _organ_legend(figure, ORGAN_COLOURS, LABEL_NAMES, 9)
    return _save(figure, out_png, dpi=90)


def save_gin_grid(
    panels: Mapping[str, Sequence[np.ndarray]], out_png: str | Path, titles: Sequence[str] | None = None
) -> Path:
    """One row per modality name: the original (H, W) slice, then its GIN draws (or the panels `titles`
    names, e.g. IPA's mask and views).

    Every panel is shown with its own min-max grey scale, because GIN changes the intensity range.
    """
    columns = max(len(row) for row in panels.values())
    figure = _figure(2.0 * columns, 2.1 * len(panels))
    axes = figure.subplots(len(panels), columns, squeeze=False)
    for row, (name, images) in enumerate(panels.items()):
        for column, image in enumerate(images):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(name)
            title = titles[column] if titles else "original" if column == 0 else f"GIN {column}"
            axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, out_png)


def _label_colour(value: int) -> str:
    return ORGAN_COLOURS.get(value, EXTRA_COLOURS[value % len(EXTRA_COLOURS)])


def save_prediction_preview(
    out_png: str | Path,
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
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(affine)
    image_ras = apply_orientation(np.asarray(image, dtype=np.float32), ornt)
    label_ras = apply_orientation(np.asarray(label), ornt)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing_ras = spacing[np.argsort(ornt[:, 0])]  # voxel sizes in RAS axis order
    window = display_window(image_ras, modality)
    levels = spread_slices(label_ras, max(1, min(slices, label_ras.shape[2])))
    colours = {value: _label_colour(value) for value in labels if value > 0 and (label_ras == value).any()}

    figure = _figure(2.6 * len(levels), 3.1)
    axes = figure.subplots(1, len(levels), squeeze=False)[0]
    for axis, z in zip(axes, levels, strict=True):
        draw_axial(
            axis, image_ras[:, :, z], label_ras[:, :, z], window, colours, linewidth=0.9, marker=(1, 8),
            aspect=float(spacing_ras[1] / spacing_ras[0]), interpolation="nearest",
        )  # fmt: skip
        axis.set_title(f"z={z}", fontsize=8)
    if colours:
        _organ_legend(figure, colours, labels, 8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0.07 if colours else 0, 1, 0.94))
    return _save(figure, out_png)


# -- learning curves ------------------------------------------------------------------------------------
def read_curve(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.csv or rounds.csv as numbers (nan where a cell is empty)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            values = {}
            for key, value in row.items():
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):
                    values[key] = math.nan
            rows.append(values)
    return rows


def plot_learning_curve(csv_path: str | Path, out_png: str | Path, x: str = "step", title: str = "") -> Path:
    """Two panels from a metrics.csv or rounds.csv: training loss (and the learning rate, where recorded),
    and validation Dice per domain."""
    rows = read_curve(Path(csv_path))
    columns = list(rows[0]) if rows else []
    loss_key = "train_loss" if "train_loss" in columns else "loss"
    organ_suffixes = tuple(f"_{organ}" for organ in ORGANS)
    domains = [c for c in columns if c.startswith("val_dice_") and not c.endswith(organ_suffixes)]
    figure = _figure(10, 3.6)
    loss_axis, dice_axis = figure.subplots(1, 2)
    loss_points = [(row[x], row[loss_key]) for row in rows if not math.isnan(row.get(loss_key, math.nan))]
    if loss_points:
        loss_axis.plot(*zip(*loss_points, strict=True), color="black")
    loss_axis.set(xlabel=x, ylabel="training loss", title="loss")
    lr_points = [(row[x], row["lr"]) for row in rows if not math.isnan(row.get("lr", math.nan))]
    if lr_points:  # the schedule beside the loss it shapes
        lr_axis = loss_axis.twinx()
        lr_axis.plot(*zip(*lr_points, strict=True), color="tab:gray", linestyle="--", linewidth=1)
        lr_axis.set_ylabel("learning rate (dashed)", color="tab:gray")
        lr_axis.set_ylim(bottom=0)
        lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for column in domains:
        points = [(row[x], row[column]) for row in rows if not math.isnan(row[column])]
        if points:
            dice_axis.plot(
                *zip(*points, strict=True), marker="o", markersize=3, label=column.removeprefix("val_dice_")
            )
    dice_axis.set(xlabel=x, ylabel="mean Dice over organs", title="validation", ylim=(0, 1))
    if domains:
        dice_axis.legend(loc="lower right", fontsize=8)
    for axis in (loss_axis, dice_axis):
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, out_png)


# -- the study's figures --------------------------------------------------------------------------------
#: Resolution of the study report's figures.
STUDY_DPI = 110


def _tab10():
    from matplotlib import colormaps

    return colormaps["tab10"]


def plot_dice_per_organ(
    stats: Mapping, labels: Sequence[str], point: str, tests: Sequence[str], out: Path
) -> Path:
    """Grouped bars: Dice per organ and method, error bars = std over seeds, one panel per test modality.

    `stats` maps (point, method label, test, organ) to (mean, std, n seeds).
    """
    from fedgin.evaluation.results import MEAN_ROW

    panels = [test for test in tests if test in ("CT", "MRI")] or list(tests)
    organs = [*ORGANS, MEAN_ROW]
    figure = _figure(7 * len(panels), 4.2)
    axes = figure.subplots(1, len(panels), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(labels))
    colors = _tab10()
    for ax, test in zip(axes[0], panels, strict=True):
        for index, label in enumerate(labels):
            values = [stats.get((point, label, test, organ), (math.nan, math.nan, 0)) for organ in organs]
            means = [v[0] for v in values]
            errors = [0.0 if math.isnan(v[1]) else v[1] for v in values]
            x = np.arange(len(organs)) + (index - (len(labels) - 1) / 2) * width
            ax.bar(x, means, width, yerr=errors, capsize=2, label=label, color=colors(index % 10))
        ax.set_xticks(np.arange(len(organs)), [o if o != MEAN_ROW else "mean" for o in organs], rotation=20)
        ax.set_ylim(0, 1)
        ax.set_title(f"test: {test}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice (mean over patients; ± std over seeds)")
    handles, names = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, names, fontsize=8, loc="lower center", ncol=min(len(labels), 5))
    rows_of_legend = math.ceil(len(labels) / 5)
    figure.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    return _save(figure, out, STUDY_DPI)


def plot_dice_vs_ratio(
    stats: Mapping,
    labels: Sequence[str],
    points: Sequence[str],
    test: str,
    out: Path,
    side_by_side: Sequence[str] = (),
) -> Path:
    """Limited scenario: test Dice (mean over organs) against the MRI:CT ratio, one line per method; with
    `side_by_side` (two or more of the labels, the federations) a second panel has their bars next to
    each other at every ratio, ± std over seeds."""
    from fedgin.evaluation.results import MEAN_ROW

    bars = len(side_by_side) > 1
    figure = _figure(12.5 if bars else 6.5, 4.2)
    ax, *rest = figure.subplots(1, 2 if bars else 1, squeeze=False)[0]
    if bars:
        right = rest[0]
        width = 0.8 / len(side_by_side)
        for index, label in enumerate(side_by_side):
            values = [stats.get((point, label, test, MEAN_ROW), (math.nan, math.nan, 0)) for point in points]
            offsets = [x - 0.4 + width * (index + 0.5) for x in range(len(points))]
            errors = [0.0 if math.isnan(v[1]) else v[1] for v in values]
            right.bar(offsets, [v[0] for v in values], width, yerr=errors, capsize=2, label=label)
        right.set_xticks(range(len(points)), points)
        right.set_xlabel("MRI : CT training cases")
        right.set_ylabel(f"{test} test Dice (mean over organs)")
        right.set_title("the federations side by side")
        right.grid(alpha=0.3, axis="y")
        right.set_ylim(0, right.get_ylim()[1] * 1.3)  # room for the legend above the bars
        right.legend(fontsize=8, ncols=2, loc="upper left")
    for label in labels:
        values = [stats.get((point, label, test, MEAN_ROW), (math.nan, math.nan, 0)) for point in points]
        means = [v[0] for v in values]
        errors = [0.0 if math.isnan(v[1]) else v[1] for v in values]
        ax.errorbar(range(len(points)), means, yerr=errors, marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(points)), points)
    ax.set_xlabel("MRI : CT training cases")
    ax.set_ylabel(f"{test} test Dice (mean over organs)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, out, STUDY_DPI)


@dataclass(frozen=True)
class ValidationCurve:
    """One run's validation scores against rounds (pooled runs: steps over the validation interval)."""

    label: str
    x: list[float]
    scores: list[float]
    federated: bool


def plot_validation_curves(curves: Sequence[ValidationCurve], title: str, out: Path) -> Path:
    """Validation score per round of several runs: federations solid, pooled runs dashed."""
    figure = _figure(6.5, 4.2)
    ax = figure.subplots()
    for curve in curves:
        ax.plot(curve.x, curve.scores, marker="." if len(curve.x) < 30 else None,
                linestyle="-" if curve.federated else "--", label=curve.label)  # fmt: skip
    ax.set_xlabel("round (pooled runs: the same number of steps)")
    ax.set_ylabel("validation score (mean Dice over modalities)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    figure.tight_layout()
    return _save(figure, out, STUDY_DPI)


@dataclass(frozen=True)
class OverlayRow:
    """One test case of an overlay figure: its (H, W) image slice and the labelled slices drawn on it
    (title, labels), reference first."""

    name: str
    image: np.ndarray
    panels: list[tuple[str, np.ndarray]]


def plot_overlays(rows: Sequence[OverlayRow], out: Path) -> Path:
    """Test slices with the reference and predictions outlined: one row per case, one column per panel."""
    columns = max(len(row.panels) for row in rows)
    figure = _figure(2.6 * columns, 2.6 * len(rows))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    tab10 = _tab10()
    colours = {index: tab10(index - 1) for index in range(1, len(ORGANS) + 1)}
    for row, case in enumerate(rows):
        for column, (title, labels) in enumerate(case.panels):
            ax = axes[row][column]
            ax.imshow(case.image, cmap="gray", origin="lower")
            draw_outlines(ax, labels, colours, linewidth=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if column == 0:
                ax.set_ylabel(case.name, fontsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[index], label=organ) for index, organ in enumerate(ORGANS, 1)]
    figure.legend(handles=handles, loc="lower center", ncol=len(ORGANS), fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(figure, out, STUDY_DPI)


def plot_cross_site(rows: Sequence[Mapping[str, Any]], out: Path) -> Path:
    """Heat map of a cross-site evaluation (fedgin.federation.cross_site): one row per model, one column
    per site and domain of its held-out cases, cells the Dice averaged over organs (mean over patients)."""
    cells = {
        (str(row["model"]), f"{row['site']}\n{row['group']}"): row["dice_mean"]
        for row in rows
        if row["group_by"] == "domain" and row["organ"] == "mean"
    }
    models = list(dict.fromkeys(model for model, _ in cells))
    columns = list(dict.fromkeys(column for _, column in cells))
    values = np.array(
        [
            [float(cells.get((m, c)) if cells.get((m, c)) is not None else math.nan) for c in columns]
            for m in models
        ]
    ).reshape(len(models), len(columns))
    figure = _figure(1.6 + 1.15 * max(1, len(columns)), 1.2 + 0.45 * max(1, len(models)))
    ax = figure.subplots()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if not math.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if value > 0.6 else "white")  # fmt: skip
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    ax.set_xlabel("site and domain of the held-out cases")
    ax.set_title("Cross-site Dice (mean over organs)", fontsize=10)
    figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    figure.tight_layout()
    return _save(figure, out, STUDY_DPI)
