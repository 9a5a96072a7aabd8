"""Per-patient segmentation metrics per organ (Dice, HD95, normalised surface Dice) and their summaries.

Conventions (SPEC section 6), applied per organ and case:

- Surfaces are surface voxels: foreground voxels with at least one background 6-neighbour (face
  connectivity; voxels on the volume border count as surface), as MONAI's `get_mask_edges` finds them.
  Distances are Euclidean in millimetres between surface voxel centres, from MONAI's
  `get_surface_distance` (a KD-tree over the surface voxels; float32 values).
- HD95 = max(P95(d(pred -> ref)), P95(d(ref -> pred))), the larger of the two directed 95th percentiles
  (linear interpolation), as MONAI's `compute_hausdorff_distance(percentile=95, directed=False)`. This is
  not medpy's `hd95`, which takes the 95th percentile of both directions' distances pooled into one set
  and so gives a value no larger than this one (lower when one direction has the long tail).
- NSD (Nikolov et al. 2021) = (#pred surface voxels within tolerance of the ref surface + #ref surface
  voxels within tolerance of the pred surface) / (#pred + #ref surface voxels), distance <= tolerance
  counts. This is the surface-voxel approximation (each surface voxel weighs 1, not its surface area), as in
  MONAI's `compute_surface_dice(use_subvoxels=False)`; default tolerance 2.0 mm.
- Organ absent from both prediction and reference: Dice 1.0, NSD 1.0, HD95 0.0, flagged `both_empty=True`
  (a correct "nothing there"); summaries count these cases in `n_both_empty` and can leave them out.
- Organ absent from exactly one of them: Dice 0.0, NSD 0.0, HD95 NaN (a distance to nothing is undefined);
  summaries average HD95 over the defined values only and report the NaN count as `n_hd95_undefined`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from monai.metrics.utils import get_mask_edges, get_surface_distance
from scipy import ndimage

from fedgin.labels import LABEL_NAMES

__all__ = [
    "DEFAULT_NSD_TOLERANCE_MM",
    "OrganMetrics",
    "dice",
    "evaluate_case",
    "hd95",
    "normalized_surface_dice",
    "summarize",
    "surface_distances",
    "write_csv",
]

DEFAULT_NSD_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class OrganMetrics:
    """The metrics of one organ in one case; see the module docstring for the empty-organ conventions."""

    organ: str
    dice: float
    hd95: float
    nsd: float
    ref_voxels: int
    pred_voxels: int
    both_empty: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _check_pair(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    if spacing is not None:
        if len(spacing) != pred.ndim:
            raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}D volume {pred.shape}")
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be positive and finite, got {tuple(spacing)}")


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty, 0.0 when exactly one is."""
    pred_mask, ref_mask = np.asarray(pred_mask, bool), np.asarray(ref_mask, bool)
    _check_pair(pred_mask, ref_mask)
    total = int(pred_mask.sum()) + int(ref_mask.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred_mask, ref_mask).sum()) / total


def _edge_distances(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], crop: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances of two non-empty boolean masks, with MONAI's edges and distances.

    `crop` crops both masks to the bounding box of their union plus one voxel first (MONAI's crop): it
    saves work and changes no distance. `evaluate_case` crops each organ itself and passes False.
    """
    pred_edges, ref_edges = get_mask_edges(pred_mask, ref_mask, crop=crop)
    sampling = tuple(float(s) for s in spacing)
    return (
        get_surface_distance(pred_edges, ref_edges, spacing=sampling),
        get_surface_distance(ref_edges, pred_edges, spacing=sampling),
    )


def surface_distances(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (each pred surface voxel -> ref surface, each ref -> pred surface).

    Both masks must be non-empty.
    """
    pred_mask, ref_mask = np.asarray(pred_mask, bool), np.asarray(ref_mask, bool)
    _check_pair(pred_mask, ref_mask, spacing)
    if not pred_mask.any() or not ref_mask.any():
        raise ValueError("surface distances need two non-empty masks")
    return _edge_distances(pred_mask, ref_mask, spacing, crop=True)


def _hd_from_distances(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray, percentile: float) -> float:
    """The larger of the two directed percentiles (interpolated in float64)."""
    return float(max(np.percentile(d.astype(np.float64), percentile) for d in (pred_to_ref, ref_to_pred)))


def _nsd_from_distances(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray, tolerance_mm: float) -> float:
    """Share of surface voxels within the tolerance, compared in the distances' precision (as MONAI does):
    1.6 mm apart at a 1.6 mm tolerance counts as within."""
    tolerance = pred_to_ref.dtype.type(tolerance_mm)
    within = int((pred_to_ref <= tolerance).sum()) + int((ref_to_pred <= tolerance).sum())
    return within / (pred_to_ref.size + ref_to_pred.size)


def hd95(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], percentile: float = 95.0
) -> float:
    """Symmetric percentile Hausdorff distance in mm: max of the two directed percentiles.

    0.0 when both masks are empty, NaN when exactly one is (see the module docstring).
    """
    pred_mask, ref_mask = np.asarray(pred_mask, bool), np.asarray(ref_mask, bool)
    _check_pair(pred_mask, ref_mask, spacing)
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {percentile}")
    has_pred, has_ref = bool(pred_mask.any()), bool(ref_mask.any())
    if not has_pred and not has_ref:
        return 0.0
    if not (has_pred and has_ref):
        return math.nan
    return _hd_from_distances(*surface_distances(pred_mask, ref_mask, spacing), percentile)


def normalized_surface_dice(
    pred_mask: np.ndarray,
    ref_mask: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice at `tolerance_mm` (surface-voxel approximation); 1.0 both empty, 0.0 one."""
    pred_mask, ref_mask = np.asarray(pred_mask, bool), np.asarray(ref_mask, bool)
    _check_pair(pred_mask, ref_mask, spacing)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"NSD tolerance must be a finite non-negative number of mm, got {tolerance_mm}")
    has_pred, has_ref = bool(pred_mask.any()), bool(ref_mask.any())
    if not has_pred and not has_ref:
        return 1.0
    if not (has_pred and has_ref):
        return 0.0
    return _nsd_from_distances(*surface_distances(pred_mask, ref_mask, spacing), tolerance_mm)


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[int, str] = LABEL_NAMES,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    hd_percentile: float = 95.0,
) -> list[OrganMetrics]:
    """Metrics per organ of one case, from integer label volumes in the same voxel grid.

    `spacing` is in mm, one value per axis of `pred` in the same axis order (any order works as long as they
    match). Label 0 (background) is skipped. Each organ is cropped once, to the bounding box of its
    prediction and reference, and its surface distances are computed once for both HD95 and NSD, so the cost
    scales with the organ, not the volume.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_pair(pred, ref, spacing)
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(ref.dtype, np.integer)):
        raise TypeError(f"label volumes must be integer arrays, got {pred.dtype} and {ref.dtype}")
    organ_labels = sorted(label for label in labels if label != 0)
    if not organ_labels:
        return []
    top = max(organ_labels)
    # One pass per volume for all organs' bounding boxes (labels above `top` are ignored).
    pred_boxes = ndimage.find_objects(np.where(pred <= top, pred, 0).astype(np.intp), max_label=top)
    ref_boxes = ndimage.find_objects(np.where(ref <= top, ref, 0).astype(np.intp), max_label=top)
    results: list[OrganMetrics] = []
    for label in organ_labels:
        pred_box, ref_box = pred_boxes[label - 1], ref_boxes[label - 1]
        if pred_box is None and ref_box is None:
            results.append(OrganMetrics(labels[label], 1.0, 0.0, 1.0, 0, 0, both_empty=True))
            continue
        boxes = [b for b in (pred_box, ref_box) if b is not None]
        # One voxel of margin (clipped at the volume border) so that the crop keeps the surface definition.
        union_box = tuple(
            slice(
                max(min(b[axis].start for b in boxes) - 1, 0), min(max(b[axis].stop for b in boxes) + 1, size)
            )
            for axis, size in enumerate(pred.shape)
        )
        pred_mask, ref_mask = pred[union_box] == label, ref[union_box] == label
        n_pred, n_ref = int(pred_mask.sum()), int(ref_mask.sum())
        if n_pred == 0 or n_ref == 0:
            results.append(OrganMetrics(labels[label], 0.0, math.nan, 0.0, n_ref, n_pred, both_empty=False))
            continue
        to_ref, to_pred = _edge_distances(pred_mask, ref_mask, spacing, crop=False)
        results.append(
            OrganMetrics(
                organ=labels[label],
                dice=dice(pred_mask, ref_mask),
                hd95=_hd_from_distances(to_ref, to_pred, hd_percentile),
                nsd=_nsd_from_distances(to_ref, to_pred, nsd_tolerance_mm),
                ref_voxels=n_ref,
                pred_voxels=n_pred,
                both_empty=False,
            )
        )
    return results


def _as_float(value: object) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)  # type: ignore[arg-type]


def _as_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


def summarize(
    per_case_rows: Iterable[Mapping[str, object]],
    group_keys: Sequence[str] = (),
    metrics: Sequence[str] = ("dice", "hd95", "nsd"),
    skip_both_empty: bool = False,
) -> list[dict[str, object]]:
    """Mean and std per (group keys..., organ) over per-case rows (e.g. `OrganMetrics.as_dict()` plus keys).

    Each row needs an "organ" field, the `group_keys` (such as "modality", "client", "method", "seed") and
    the `metrics`; values may be strings as read back from a CSV. Per group the output row has the group
    keys, "organ", "n_cases", "n_both_empty", "n_hd95_undefined" (NaN HD95, organ missing from exactly one
    side) and per metric `<m>_mean`, `<m>_std` (sample std, ddof=1; NaN below 2 values) and `<m>_n` (values
    that entered, NaN left out). Cases with `both_empty` enter the means with their conventional values
    (Dice 1, NSD 1, HD95 0) unless `skip_both_empty`. Groups keep first-seen order.
    """
    groups: dict[tuple[object, ...], list[Mapping[str, object]]] = {}
    for row in per_case_rows:
        missing = [key for key in (*group_keys, "organ") if key not in row]
        if missing:
            raise KeyError(f"per-case row lacks {missing}: {dict(row)}")
        groups.setdefault((*(row[k] for k in group_keys), row["organ"]), []).append(row)
    summary: list[dict[str, object]] = []
    for key, rows in groups.items():
        both_empty = [_as_bool(r.get("both_empty", False)) for r in rows]
        out: dict[str, object] = dict(zip((*group_keys, "organ"), key, strict=True))
        out["n_cases"] = len(rows)
        out["n_both_empty"] = sum(both_empty)
        hd_values = [_as_float(r["hd95"]) for r in rows if "hd95" in r]
        out["n_hd95_undefined"] = sum(math.isnan(v) for v in hd_values)
        kept = [r for r, empty in zip(rows, both_empty, strict=True) if not (skip_both_empty and empty)]
        for metric in metrics:
            values = np.array([_as_float(r[metric]) for r in kept], dtype=float)
            values = values[~np.isnan(values)]
            out[f"{metric}_mean"] = float(values.mean()) if values.size else math.nan
            out[f"{metric}_std"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
            out[f"{metric}_n"] = int(values.size)
        summary.append(out)
    return summary


def write_csv(rows: Sequence[Mapping[str, object]], path: Path) -> Path:
    """Write dict rows to a CSV (columns: union of keys in first-seen order); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
