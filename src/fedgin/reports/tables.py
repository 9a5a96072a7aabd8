"""Markdown tables that compare methods per organ and test domain, from evaluation summary.csv files."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedgin.errors import DataError
from fedgin.labels import ORGANS

#: The organ row `fedgin evaluate` adds: each case's mean over organs, then mean +- std over patients.
MEAN_ROW = "mean"


def read_summary(path: str | Path, group_by: str = "domain") -> dict[tuple[str, str], dict[str, float]]:
    """(group, organ) -> {metric_mean, metric_std, n_cases, ...} from one summary.csv."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "evaluation summary not found (run `fedgin evaluate` first)")
    table: dict[tuple[str, str], dict[str, float]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("group_by") != group_by:
                continue
            values = {}
            for key, value in row.items():
                if key in ("method", "group_by", "group", "organ"):
                    continue
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):
                    values[key] = math.nan
            table[(row["group"], row["organ"])] = values
    return table


def format_cell(mean: float, std: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def comparison_table(
    summaries: Mapping[str, str | Path],
    metric: str = "dice",
    group_by: str = "domain",
    groups: Sequence[str] | None = None,
    digits: int = 3,
) -> str:
    """A Markdown table: one row per organ (and the mean over organs), one column per (group, method)."""
    tables = {method: read_summary(path, group_by) for method, path in summaries.items()}
    if groups is None:
        groups = sorted({group for table in tables.values() for group, _ in table})
    header = ["organ"] + [f"{group}: {method}" for group in groups for method in tables]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for organ in (*ORGANS, MEAN_ROW):
        cells = ["**mean over organs**" if organ == MEAN_ROW else organ]
        for group in groups:
            for table in tables.values():
                values = table.get((group, organ), {})
                cells.append(
                    format_cell(
                        values.get(f"{metric}_mean", math.nan), values.get(f"{metric}_std", math.nan), digits
                    )
                )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
