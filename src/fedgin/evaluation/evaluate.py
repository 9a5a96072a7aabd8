"""Evaluation runs: a checkpoint on cached test cases, or a folder of predictions against a folder of labels.

Both produce the same three files in `out_dir`, each written atomically:

- `per_case.csv`: one row per case x organ (SPEC section 6: per patient, never pooled slices), columns
  [method,] case_id, source, modality, domain, split, protocol, organ, dice, hd95, nsd, ref_voxels,
  pred_voxels, both_empty. HD95 is in mm; an undefined HD95 is written as `nan`. `protocol` is the
  acquisition protocol from the cache index, empty when the source records none (and for folders).
- `summary.csv`: mean / std (over patients) / n per (group_by, group, organ), for the groupings
  `all` (every case), `domain`, `modality` and `protocol` (only the cases with a protocol; no such rows
  when no case has one), with `n_cases`, `n_both_empty` and `n_hd95_undefined`
  (see `fedgin.evaluation.metrics.summarize`). Each group also has an organ row `mean`: per case the mean
  over the organs (HD95 over its defined values), then mean / std of that over the patients; its
  `n_both_empty` counts cases with no organ in prediction and reference, its `n_hd95_undefined` cases
  with no defined HD95 at all.
- `summary.json`: what was evaluated (checkpoint or folders, caches, split, tolerance), the empty-organ
  conventions, the counts and the summary rows (NaN written as null).

Empty-organ conventions (from `fedgin.evaluation.metrics`): an organ absent from both prediction and
reference scores Dice 1, NSD 1, HD95 0 and is flagged `both_empty` (it enters the means); an organ absent
from exactly one of them scores Dice 0, NSD 0 and an undefined HD95, which is left out of the HD95 means
and counted in `n_hd95_undefined`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedgin.errors import DataError
from fedgin.evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM, evaluate_case, summarize
from fedgin.evaluation.results import KEPT_DIR, KeptSlice, save_kept_slice
from fedgin.figures import most_foreground_slice
from fedgin.io_utils import atomic_write_json, atomic_write_text
from fedgin.labels import LABEL_NAMES, ORGANS
from fedgin.nifti import by_case_name, nifti_files, nifti_stem, read_label

if TYPE_CHECKING:
    from fedgin.cache import Cache, CacheEntry
    from fedgin.config import ModelConfig, RunConfig

__all__ = [
    "CASE_COLUMNS",
    "CONVENTIONS",
    "GROUPINGS",
    "MEAN_ORGAN",
    "METRIC_COLUMNS",
    "EvaluationResult",
    "evaluate_checkpoint",
    "evaluate_folders",
    "json_safe",
    "keep_best_slices",
    "model_predictor",
    "score_cached_cases",
    "summary_rows",
    "summary_table",
]

CASE_COLUMNS: tuple[str, ...] = ("case_id", "source", "modality", "domain", "split", "protocol")
METRIC_COLUMNS: tuple[str, ...] = ("organ", "dice", "hd95", "nsd", "ref_voxels", "pred_voxels", "both_empty")
#: The summary groupings: every case together, per domain, per modality, per acquisition protocol.
GROUPINGS: tuple[str, ...] = ("all", "domain", "modality", "protocol")
#: Groupings formed only from the cases with a non-empty value (an unknown protocol is no group).
_KNOWN_ONLY: tuple[str, ...] = ("protocol",)
#: The organ name of the per-case "mean over organs" rows in the summary.
MEAN_ORGAN = "mean"
HD_PERCENTILE = 95.0
UNKNOWN = "unknown"
CONVENTIONS: dict[str, str] = {
    "both_empty": "organ absent from prediction and reference: Dice 1, NSD 1, HD95 0 mm; counted in "
    "n_both_empty and included in the means",
    "one_empty": "organ absent from exactly one of them: Dice 0, NSD 0, HD95 undefined (NaN); counted in "
    "n_hd95_undefined and left out of the HD95 means",
    "surface": "surface voxels with face connectivity; distances in mm between voxel centres; HD95 is the "
    "max of the two directed 95th percentiles; NSD is the surface-voxel approximation",
    "std": "sample standard deviation over patients (ddof=1); NaN below 2 values",
    MEAN_ORGAN: "per case the mean over the organs (HD95 over the defined values), then mean and std "
    "over the patients",
}


@dataclass
class EvaluationResult:
    """Per-case rows, summary rows, where they were written, what was evaluated and the slices kept."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    per_case_csv: Path
    summary_csv: Path
    summary_json: Path
    n_cases: int
    nsd_tolerance_mm: float
    info: dict[str, Any] = field(default_factory=dict)
    kept_slices: list[Path] = field(default_factory=list)

    @property
    def n_both_empty(self) -> int:
        """Case x organ pairs with the organ absent from both prediction and reference."""
        return sum(bool(row["both_empty"]) for row in self.rows)

    @property
    def n_hd95_undefined(self) -> int:
        """Case x organ pairs with the organ absent from exactly one side (HD95 undefined)."""
        return sum(math.isnan(float(row["hd95"])) for row in self.rows)


# --------------------------------------------------------------------------------------------------------
# Shared: rows, summaries, files


def _case_rows(case: Mapping[str, Any], pred: np.ndarray, ref: np.ndarray, spacing, tolerance: float):
    metrics = evaluate_case(
        pred, ref, spacing, labels=LABEL_NAMES, nsd_tolerance_mm=tolerance, hd_percentile=HD_PERCENTILE
    )
    return [{**case, **organ.as_dict()} for organ in metrics]


def _mean_over_organs(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per case with organ `mean`: the mean of each metric over that case's organs."""
    by_case: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(row["case_id"], []).append(row)
    means = []
    for case_rows in by_case.values():
        hd = [float(r["hd95"]) for r in case_rows if not math.isnan(float(r["hd95"]))]
        first = case_rows[0]
        means.append(
            {
                **{key: first[key] for key in first if key not in METRIC_COLUMNS},
                "organ": MEAN_ORGAN,
                "dice": float(np.mean([float(r["dice"]) for r in case_rows])),
                "hd95": float(np.mean(hd)) if hd else math.nan,
                "nsd": float(np.mean([float(r["nsd"]) for r in case_rows])),
                "both_empty": all(bool(r["both_empty"]) for r in case_rows),
            }
        )
    return means


def _summary(rows: Sequence[Mapping[str, Any]], method: str | None) -> list[dict[str, Any]]:
    all_rows = [*rows, *_mean_over_organs(rows)]
    summary: list[dict[str, Any]] = []
    for grouping in GROUPINGS:
        if grouping == "all":
            keyed = [{**row, "all": "all"} for row in all_rows]
        elif grouping in _KNOWN_ONLY:
            keyed = [row for row in all_rows if row.get(grouping)]
        else:
            keyed = all_rows
        for entry in summarize(keyed, group_keys=(grouping,)):
            group = entry.pop(grouping)
            head = {"method": method} if method is not None else {}
            summary.append({**head, "group_by": grouping, "group": group, **entry})
    return summary


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def json_safe(value: Any) -> Any:
    """`value` with NaN/inf as None, paths as strings and numpy scalars as Python ones (for JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def _write_outputs(
    rows: list[dict[str, Any]],
    out_dir: Path,
    method: str | None,
    tolerance: float,
    info: dict[str, Any],
    kept: Sequence[KeptSlice] | None = None,
) -> EvaluationResult:
    """Write the evaluation's files (kept slices first, summary.json last); `kept` None leaves the folder's
    kept slices alone, a sequence replaces them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept_paths = [] if kept is None else _replace_kept(out_dir, kept)
    summary = _summary(rows, method)
    case_columns = (*(("method",) if method is not None else ()), *CASE_COLUMNS, *METRIC_COLUMNS)
    summary_columns: list[str] = []
    for entry in summary:
        summary_columns.extend(k for k in entry if k not in summary_columns)
    result = EvaluationResult(
        rows=rows,
        summary=summary,
        per_case_csv=out_dir / "per_case.csv",
        summary_csv=out_dir / "summary.csv",
        summary_json=out_dir / "summary.json",
        n_cases=len({row["case_id"] for row in rows}),
        nsd_tolerance_mm=tolerance,
        info=info,
        kept_slices=kept_paths,
    )
    atomic_write_text(result.per_case_csv, _csv_text(rows, case_columns))
    atomic_write_text(result.summary_csv, _csv_text(summary, summary_columns))
    document = {
        **info,
        "method": method,
        "n_cases": result.n_cases,
        "organs": list(ORGANS),
        "nsd_tolerance_mm": tolerance,
        "hd_percentile": HD_PERCENTILE,
        "n_both_empty": result.n_both_empty,
        "n_hd95_undefined": result.n_hd95_undefined,
        "conventions": CONVENTIONS,
        "files": {
            "per_case": result.per_case_csv.name,
            "summary": result.summary_csv.name,
            **({KEPT_DIR: [path.name for path in kept_paths]} if kept_paths else {}),
        },
        "summary": summary,
    }
    atomic_write_json(result.summary_json, json_safe(document))
    return result


def _replace_kept(out_dir: Path, kept: Sequence[KeptSlice]) -> list[Path]:
    """Write `kept`; the slices an earlier evaluation kept in this folder go (they were another model's)."""
    for stale in sorted((out_dir / KEPT_DIR).glob("*.npz")):
        stale.unlink()
    return [save_kept_slice(out_dir, one) for one in kept]


def _progress(enabled: bool) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, disable=not enabled, transient=False)


# --------------------------------------------------------------------------------------------------------
# A checkpoint on cached cases


def _select_cached(
    caches: Sequence[Path], split: str | None, out_dir: Path
) -> list[tuple[Cache, CacheEntry]]:
    """The cases of `split` (every split when None) in each cache folder, in order; DataError for no cache,
    a case id found in two caches, and when no case is selected."""
    from fedgin.cache import Cache

    if not caches:
        raise DataError(Path(out_dir), "no cache folder to evaluate on")
    opened = [Cache(path) for path in caches]
    selected = []
    seen: dict[str, Path] = {}
    for cache in opened:
        for entry in cache.cases(split=split):
            if entry.case_id in seen:
                other = seen[entry.case_id]
                raise DataError(cache.path, f"case {entry.case_id!r} also in {other}; pass each cache once")
            seen[entry.case_id] = cache.path
            selected.append((cache, entry))
    if not selected:
        splits = sorted({entry.split for cache in opened for entry in cache.cases()})
        raise DataError(
            caches[0],
            f"no cases with split {split!r} in {', '.join(str(c) for c in caches)} (splits there: {splits})",
        )
    return selected


def _load_case(cache: Cache, entry: CacheEntry) -> tuple[np.ndarray, np.ndarray]:
    """(image, reference) of a cached case, (z, y, x) each."""
    image = cache.load_image(entry)
    ref = np.asarray(cache.load_label(entry))
    if image.shape != ref.shape:
        raise DataError(
            cache.path / entry.label_file, f"label shape {ref.shape} differs from image {image.shape}"
        )
    return image, ref


def _checkpoint_predictor(
    checkpoint: Path, device: str | torch.device, amp: bool, batch_size: int
) -> tuple[Callable[[np.ndarray], np.ndarray], RunConfig, torch.device]:
    """(image volume -> label volume with the checkpoint's model, the checkpoint's run config, device)."""
    from fedgin.checkpoints import load_model
    from fedgin.model import resolve_device

    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    model, config = load_model(checkpoint, torch_device)
    return model_predictor(model, config.model, torch_device, amp, batch_size), config, torch_device


def model_predictor(
    model: torch.nn.Module, model_config: ModelConfig, device: torch.device, amp: bool, batch_size: int
) -> Callable[[np.ndarray], np.ndarray]:
    """Image volume -> label volume with `model` on `device`, as `fedgin evaluate` predicts."""
    from fedgin.evaluation.inference import predict_volume

    def predict(image: np.ndarray) -> np.ndarray:
        return predict_volume(
            model,
            image,
            device,
            dimensions=model_config.dimensions,
            batch_size=batch_size,
            amp=amp,
            roi_size=model_config.patch_size,
        )

    return predict


def _best_slice(entry: CacheEntry, image: np.ndarray, ref: np.ndarray, pred: np.ndarray) -> KeptSlice:
    """The case's axial slice with the most reference organ voxels: the same slice for every model."""
    z = most_foreground_slice(ref)
    return KeptSlice(entry.case_id, entry.domain, entry.modality, z, np.array(image[z]), ref[z], pred[z])


def score_cached_cases(
    predict: Callable[[np.ndarray], np.ndarray],
    selected: Sequence[tuple[Cache, CacheEntry]],
    *,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    method: str | None = None,
    keep_slices: Collection[str] = (),
    progress: bool = True,
    title: str = "evaluate",
) -> tuple[list[dict[str, Any]], list[KeptSlice]]:
    """Per-case x organ rows of `predict` (image volume -> label volume) on cached cases, and the kept
    slices of the cases in `keep_slices`: what `evaluate_checkpoint` and a site's cross-site evaluation
    (fedgin.federation.cross_site) both score."""
    rows: list[dict[str, Any]] = []
    kept: list[KeptSlice] = []
    with _progress(progress) as bar:
        task = bar.add_task(title, total=len(selected))
        for cache, entry in selected:
            image, ref = _load_case(cache, entry)
            pred = predict(image)
            spacing_zyx = tuple(float(s) for s in reversed(entry.spacing))
            case = {
                **({"method": method} if method is not None else {}),
                "case_id": entry.case_id,
                "source": entry.source,
                "modality": entry.modality,
                "domain": entry.domain,
                "split": entry.split,
                "protocol": entry.protocol,
            }
            rows.extend(_case_rows(case, pred, ref, spacing_zyx, nsd_tolerance_mm))
            if entry.case_id in keep_slices:
                kept.append(_best_slice(entry, image, ref, pred))
            bar.advance(task)
    return rows, kept


def summary_rows(rows: Sequence[Mapping[str, Any]], method: str | None = None) -> list[dict[str, Any]]:
    """The summary.csv rows of per-case rows (every grouping of GROUPINGS, organs and their mean)."""
    return _summary(rows, method)


def evaluate_checkpoint(
    checkpoint: Path,
    caches: Sequence[Path],
    out_dir: Path,
    split: str | None = "test",
    device: str | torch.device = "auto",
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    progress: bool = True,
    method: str | None = None,
    amp: bool = False,
    batch_size: int = 32,
    keep_slices: Collection[str] = (),
) -> EvaluationResult:
    """Predict every selected cached case with the checkpoint's model and score it per organ.

    Cases are those of `split` (every split when None) in each cache folder. Each case is predicted as a
    whole volume (2D models slice by slice, stacked back) and scored in the cache grid with its cached
    spacing, reordered to the arrays' (z, y, x) axes. Writes per_case.csv, summary.csv and summary.json
    into `out_dir` (see the module docstring). For the cases of `keep_slices` (case ids) it also keeps
    the slice with the most reference organ voxels (image, reference, prediction) in
    `out_dir/kept_slices/<case_id>.npz` (see `fedgin.evaluation.results`), so that figures need no model;
    slices an earlier evaluation kept there are removed. Raises DataError for an unusable checkpoint or
    cache, for a case id found in two caches, and when no case is selected.
    """
    checkpoint, caches = Path(checkpoint), [Path(c) for c in caches]
    selected = _select_cached(caches, split, out_dir)
    predict, config, torch_device = _checkpoint_predictor(checkpoint, device, amp, batch_size)
    rows, kept = score_cached_cases(
        predict,
        selected,
        nsd_tolerance_mm=nsd_tolerance_mm,
        method=method,
        keep_slices=keep_slices,
        progress=progress,
        title=f"evaluate {checkpoint.name}",
    )
    info = {
        "kind": "checkpoint",
        "checkpoint": str(checkpoint),
        "caches": [str(c) for c in caches],
        "split": split,
        "model_dimensions": config.model.dimensions,
        "device": str(torch_device),
        "grid": "cache (preprocessed) grid; spacing from the cache index, applied in (z, y, x) order",
    }
    return _write_outputs(rows, out_dir, method, nsd_tolerance_mm, info, kept)


def keep_best_slices(
    checkpoint: Path,
    caches: Sequence[Path],
    out_dir: Path,
    case_ids: Collection[str],
    split: str | None = "test",
    device: str | torch.device = "auto",
    amp: bool = False,
    batch_size: int = 32,
) -> list[Path]:
    """Keep the best slices of `case_ids` in `out_dir` as `evaluate_checkpoint(keep_slices=...)` does,
    predicting only those cases: for an evaluation written without them (by an earlier fedgin). Nothing
    is scored and no other file is touched; returns the files written."""
    checkpoint, caches = Path(checkpoint), [Path(c) for c in caches]
    selected = _select_cached(caches, split, out_dir)
    chosen = [(cache, entry) for cache, entry in selected if entry.case_id in case_ids]
    if not chosen:
        return []
    predict, _, _ = _checkpoint_predictor(checkpoint, device, amp, batch_size)
    written = []
    for cache, entry in chosen:
        image, ref = _load_case(cache, entry)
        written.append(save_kept_slice(out_dir, _best_slice(entry, image, ref, predict(image))))
    return written


# --------------------------------------------------------------------------------------------------------
# A folder of predictions against a folder of reference labels


def _read_label(path: Path):
    """(array, affine, zooms) of a NIfTI label file; DataError naming the file when it cannot be used."""
    nifti, data = read_label(path, dims=(2, 3))
    zooms = tuple(float(z) for z in nifti.header.get_zooms()[: data.ndim])
    if not all(math.isfinite(z) and z > 0 for z in zooms):
        raise DataError(path, f"voxel spacing {zooms} in the header is not positive")
    values = np.unique(data)
    unknown = [v for v in values.tolist() if int(v) not in LABEL_NAMES]  # whole numbers: read_label
    if unknown:
        shown = ", ".join(f"{v:g}" for v in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise DataError(
            path,
            f"label values {shown} are outside the fedgin schema 0..{max(LABEL_NAMES)} "
            f"({', '.join(f'{k}={v}' for k, v in LABEL_NAMES.items())})",
        )
    return data.astype(np.uint8), np.asarray(nifti.affine, dtype=float), zooms


def evaluate_folders(
    pred_dir: Path,
    ref_dir: Path,
    out_dir: Path,
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    progress: bool = True,
    method: str | None = None,
    modality: str | None = None,
    domain: str | None = None,
    affine_atol_mm: float = 1e-3,
) -> EvaluationResult:
    """Score every reference label file (`*.nii.gz`, `*.nii`) in `ref_dir` against the same-name file in
    `pred_dir`, like nnU-Net's folder evaluation; predictions without a reference are ignored (listed in
    summary.json).

    Labels must use the fedgin schema (0 background, 1..5 organs). Prediction and reference must have the
    same shape and affine (within `affine_atol_mm`); the spacing is the reference header's zooms, in the
    array's own axis order. Missing predictions are found before anything is read; an unreadable file, a
    grid mismatch or a label outside the schema raises a DataError naming the file when its case is
    reached, and no output file is written then. `modality` and `domain` label all cases (default "unknown").
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, what in ((ref_dir, "reference"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise DataError(folder, f"{what} folder not found")
    references = nifti_files(ref_dir)
    if not references:
        raise DataError(ref_dir, "no reference label files (*.nii.gz, *.nii) here")
    by_case_name(references)  # case.nii beside case.nii.gz: refused before anything is read
    missing = [pred_dir / ref.name for ref in references if not (pred_dir / ref.name).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(missing[0], f"prediction missing for reference {ref_dir / missing[0].name}{more}")
    reference_names = {ref.name for ref in references}
    extra = [p.name for p in nifti_files(pred_dir) if p.name not in reference_names]

    rows: list[dict[str, Any]] = []
    with _progress(progress) as bar:
        task = bar.add_task(f"evaluate {pred_dir.name}", total=len(references))
        for ref_path in references:
            pred_path = pred_dir / ref_path.name
            ref, ref_affine, spacing = _read_label(ref_path)
            pred, pred_affine, _ = _read_label(pred_path)
            if pred.shape != ref.shape:
                raise DataError(
                    pred_path, f"shape {pred.shape} differs from the reference {ref_path} shape {ref.shape}"
                )
            if not np.allclose(pred_affine, ref_affine, rtol=0.0, atol=affine_atol_mm):
                raise DataError(
                    pred_path,
                    f"affine differs from the reference {ref_path} (max difference "
                    f"{np.abs(pred_affine - ref_affine).max():.4g}); resample the prediction onto the "
                    "reference grid",
                )
            case = {
                **({"method": method} if method is not None else {}),
                "case_id": nifti_stem(ref_path),
                "source": "",
                "modality": modality or UNKNOWN,
                "domain": domain or UNKNOWN,
                "split": "",
                "protocol": "",
            }
            rows.extend(_case_rows(case, pred, ref, spacing, nsd_tolerance_mm))
            bar.advance(task)
    info = {
        "kind": "folders",
        "pred_dir": str(pred_dir),
        "ref_dir": str(ref_dir),
        "unmatched_predictions": extra,
        "grid": "reference grid; spacing from the reference header zooms, in array axis order",
    }
    return _write_outputs(rows, out_dir, method, nsd_tolerance_mm, info)


# --------------------------------------------------------------------------------------------------------
# A readable table


def _fmt(value: Any, digits: int) -> str:
    value = float(value)
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _pairs(count: int) -> str:
    return f"{count} case-organ pair" + ("" if count == 1 else "s")


def summary_table(result: EvaluationResult, by: str = "domain") -> Table:
    """Organs as rows and, per domain (or `by="modality"`/`"protocol"`/`"all"`), a Dice "mean ± std (n)"
    column and an HD95 mean column; the last row is the per-case mean over organs. The caption states the
    empty-organ convention and how many case x organ pairs it concerned."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS}, got {by!r}")
    entries = [e for e in result.summary if e["group_by"] == by]
    groups = list(dict.fromkeys(e["group"] for e in entries))
    cell = {(e["group"], e["organ"]): e for e in entries}
    what = Path(str(result.info.get("checkpoint") or result.info.get("pred_dir") or "evaluation"))
    split = result.info.get("split")
    table = Table(
        title=f"{what.parent.name}/{what.name}: {result.n_cases} cases"
        + (f" (split {split})" if split else "")
        + f", NSD at {result.nsd_tolerance_mm:g} mm",
        caption=(
            "Dice: mean ± std over patients (n); HD95: mean in mm. Organ absent from both prediction and "
            f"reference: Dice 1, HD95 0 ({_pairs(result.n_both_empty)}). Absent from one side: Dice 0, "
            f"HD95 undefined, left out of its mean ({_pairs(result.n_hd95_undefined)})."
        ),
    )
    table.add_column("organ")
    for group in groups:
        table.add_column(f"{group}\nDice", justify="right")
        table.add_column(f"{group}\nHD95 mm", justify="right")
    for organ in (*ORGANS, MEAN_ORGAN):
        if not any((group, organ) in cell for group in groups):
            continue
        values: list[str] = []
        for group in groups:
            e = cell.get((group, organ))
            if e is None:
                values += ["", ""]
                continue
            std = "" if math.isnan(float(e["dice_std"])) else f" ± {float(e['dice_std']):.3f}"
            values.append(f"{_fmt(e['dice_mean'], 3)}{std} ({e['dice_n']})")
            values.append(_fmt(e["hd95_mean"], 1))
        label = "mean over organs" if organ == MEAN_ORGAN else organ
        table.add_row(label, *values, end_section=organ == ORGANS[-1])
    return table
