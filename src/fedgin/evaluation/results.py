"""What an evaluation wrote, read back: its summary.csv as Markdown tables that compare methods per organ and
test domain, and the best slices it kept per case (image, reference, prediction) for overlay figures.

Reading these needs no model: reports are built from the files alone.
"""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedgin.case_ids import require_plain
from fedgin.errors import DataError
from fedgin.io_utils import atomic_write
from fedgin.labels import ORGANS

#: The organ row `fedgin evaluate` adds: each case's mean over organs, then mean +- std over patients.
MEAN_ROW = "mean"
#: The folder of an evaluation's output folder that holds the kept slices, one `<case_id>.npz` each.
KEPT_DIR = "kept_slices"


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


@dataclass(frozen=True)
class KeptSlice:
    """The axial slice of one test case with the most reference organ voxels: image, reference and
    prediction, (H, W) each, in the cache grid."""

    case_id: str
    domain: str
    modality: str
    z: int
    image: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray


def kept_slice_path(out_dir: str | Path, case_id: str) -> Path:
    """Where an evaluation into `out_dir` keeps the slice of case `case_id` (a cache's id, checked when
    the index was read; ValueError for one that is not a plain name)."""
    return Path(out_dir) / KEPT_DIR / f"{require_plain(case_id)}.npz"


def save_kept_slice(out_dir: str | Path, kept: KeptSlice) -> Path:
    """Write one kept slice atomically (plain arrays: it loads without pickle)."""
    path = kept_slice_path(out_dir, kept.case_id)
    arrays = {
        "case_id": np.array(kept.case_id),
        "domain": np.array(kept.domain),
        "modality": np.array(kept.modality),
        "z": np.array(kept.z),
        "image": np.asarray(kept.image, dtype=np.float32),
        "reference": np.asarray(kept.reference, dtype=np.uint8),
        "prediction": np.asarray(kept.prediction, dtype=np.uint8),
    }
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))
    return path


def read_kept_slice(path: str | Path) -> KeptSlice:
    """A slice kept by `save_kept_slice`; DataError naming the file when it cannot be read."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return KeptSlice(
                case_id=str(data["case_id"]),
                domain=str(data["domain"]),
                modality=str(data["modality"]),
                z=int(data["z"]),
                image=data["image"],
                reference=data["reference"],
                prediction=data["prediction"],
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(path, f"kept slice unreadable ({error})") from None
