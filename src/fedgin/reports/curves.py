"""Learning curves as PNG: training loss and validation Dice per domain against steps or rounds."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from fedgin.io_utils import atomic_path
from fedgin.labels import ORGANS


def read_curve(path: Path) -> list[dict[str, float]]:
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_curve(Path(csv_path))
    columns = list(rows[0]) if rows else []
    loss_key = "train_loss" if "train_loss" in columns else "loss"
    organ_suffixes = tuple(f"_{organ}" for organ in ORGANS)
    domains = [c for c in columns if c.startswith("val_dice_") and not c.endswith(organ_suffixes)]
    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
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
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return out_png
