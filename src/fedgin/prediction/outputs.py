"""What `fedgin predict` writes: where every output goes, staging until all cases succeeded, and the files.

Per input a label NIfTI in the input's own geometry, a JSON sidecar (labels, modality, model, provenance)
and an optional preview; per run one volumes CSV.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from rich.table import Table

from fedgin.config import Modality
from fedgin.errors import DataError
from fedgin.nifti import nifti_stem
from fedgin.prediction.inputs import LoadedInput, PredictInput, output_name
from fedgin.prediction.model_file import PredictionModel

#: Format tag of the JSON written next to every predicted label file.
PREDICTION_FORMAT = "fedgin-prediction/1"
VOLUME_COLUMNS: tuple[str, ...] = (
    "case",
    "input",
    "output",
    "modality",
    "organ",
    "label",
    "voxels",
    "volume_ml",
)


@dataclass(frozen=True)
class CaseOutputs:
    label: Path
    info_json: Path
    preview: Path | None


@dataclass(frozen=True)
class OutputPlan:
    """Every file a prediction run will write, known before anything is read or written."""

    cases: tuple[CaseOutputs, ...]
    volumes_csv: Path
    directory: Path

    def files(self) -> list[Path]:
        paths = []
        for case in self.cases:
            paths.extend(p for p in (case.label, case.info_json, case.preview) if p is not None)
        return [*paths, self.volumes_csv]


def plan_outputs(inputs: Sequence[PredictInput], output: Path, preview: bool, overwrite: bool) -> OutputPlan:
    """Where each output goes; DataError for an output that exists (unless `overwrite`) or is an input.

    An OUTPUT named *.nii.gz / *.nii is the label file of the one input, with `<stem>.json`,
    `<stem>_volumes.csv` and `<stem>_preview.png` beside it; any other OUTPUT is a folder that receives
    `<case>.nii.gz`, `<case>.json` and `<case>_preview.png` per input and one `volumes.csv` (DataError
    for an input whose name is not a plain name, see `output_name`).
    """
    output = Path(output)
    stem = nifti_stem(output)
    if stem is not None:
        if len(inputs) != 1:
            raise DataError(
                output,
                f"the input holds {len(inputs)} volumes; give a folder as output, not a single NIfTI file",
            )
        if output.is_dir():
            raise DataError(output, "is a folder; a NIfTI output name must be a file")
        parent = output.parent
        cases = (
            CaseOutputs(output, parent / f"{stem}.json", parent / f"{stem}_preview.png" if preview else None),
        )
        plan = OutputPlan(cases, parent / f"{stem}_volumes.csv", parent)
    else:
        if output.exists() and not output.is_dir():
            raise DataError(output, "exists and is not a folder (name a .nii.gz file, or a folder)")
        names = [output_name(item) for item in inputs]
        cases = tuple(
            CaseOutputs(
                output / f"{name}.nii.gz",
                output / f"{name}.json",
                output / f"{name}_preview.png" if preview else None,
            )
            for name in names
        )
        plan = OutputPlan(cases, output / "volumes.csv", output)
    sources = {item.path.resolve() for item in inputs}
    for item in inputs:
        if item.series is not None:
            sources.update(Path(file).resolve() for file in item.series.files)
    existing = []
    for path in plan.files():
        if path.exists() and path.resolve() in sources:
            raise DataError(path, "is one of the inputs; choose another output")
        if path.exists():
            existing.append(path)
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more output files)" if len(existing) > 1 else ""
        raise DataError(existing[0], f"already exists{more}; pass --overwrite to replace")
    return plan


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


class StagedOutputs:
    """Outputs are written (atomically) into a hidden folder beside their destination and moved into place
    only when every case succeeded: a failure in the fifth of ten files leaves no output at all."""

    def __init__(self, directory: Path) -> None:
        anchor = _nearest_existing(directory)
        try:
            self.root = Path(tempfile.mkdtemp(prefix=".fedgin-predict-", dir=anchor))
        except OSError as error:
            raise DataError(anchor, f"cannot write output here ({error.strerror or error})") from None
        self.moves: list[tuple[Path, Path]] = []

    def path(self, target: Path) -> Path:
        staged = self.root / f"{len(self.moves):05d}-{target.name}"
        self.moves.append((staged, target))
        return staged

    def commit(self) -> None:
        for staged, target in self.moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
        self.moves.clear()

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def label_image(label: np.ndarray, source: LoadedInput, labels: dict[int, str]) -> nib.Nifti1Image:
    """The label volume as NIfTI with the input's affine, and for NIfTI inputs a copy of its header."""
    affine = np.asarray(source.image.affine)
    if source.header is not None:
        header = source.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(None, None)  # labels are stored as they are, never scaled
        header["cal_min"], header["cal_max"] = 0, max(labels)
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        image = image_class(label, affine, header=header)
    else:  # DICOM: scanner coordinates, in mm
        image = nib.Nifti1Image(label, affine)
        image.header.set_xyzt_units("mm", "sec")
        image.header.set_qform(affine, code=1)
        image.header.set_sform(affine, code=1)
    image.header.set_intent("label")
    image.header["descrip"] = b"fedgin labels"
    return image


@dataclass
class CaseResult:
    """One segmented input: where it came from and went, the modality chosen and the organ volumes."""

    name: str
    input: Path
    outputs: CaseOutputs
    modality: Modality
    modality_reason: str
    shape: tuple[int, ...]
    voxel_volume_ml: float
    voxels: dict[str, int]
    volumes_ml: dict[str, float]
    seconds: float
    series_uid: str | None = None


@dataclass
class PredictionReport:
    """A finished run: every case, the volumes CSV and the model and device used."""

    cases: list[CaseResult]
    volumes_csv: Path
    model: PredictionModel
    device: str


def organ_volumes(label: np.ndarray, affine: np.ndarray, labels: dict[int, str]) -> tuple[dict, dict, float]:
    """(voxels per organ, millilitres per organ, millilitres per voxel) of a label volume."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0
    counts = np.bincount(label.reshape(-1), minlength=max(labels) + 1)
    voxels = {name: int(counts[index]) for index, name in labels.items() if index > 0}
    return voxels, {name: count * voxel_ml for name, count in voxels.items()}, voxel_ml


def volumes_csv(cases: Sequence[CaseResult], labels: dict[int, str]) -> str:
    """The volumes CSV text: one row per case and organ (VOLUME_COLUMNS)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(VOLUME_COLUMNS)
    index_of = {name: index for index, name in labels.items()}
    for case in cases:
        for organ, voxels in case.voxels.items():
            writer.writerow(
                [case.name, case.input, case.outputs.label, case.modality, organ, index_of[organ], voxels,
                 f"{case.volumes_ml[organ]:.3f}"]
            )  # fmt: skip
    return buffer.getvalue()


def volumes_table(report: PredictionReport) -> Table:
    """A rich table: one row per case, the organ volumes in millilitres."""
    organs = [name for index, name in report.model.labels.items() if index > 0]
    table = Table(title="Predicted organ volumes (mL)", title_justify="left")
    table.add_column("case")
    table.add_column("modality")
    for organ in organs:
        table.add_column(organ, justify="right")
    for case in report.cases:
        table.add_row(case.name, case.modality, *(f"{case.volumes_ml[organ]:.1f}" for organ in organs))
    return table


def case_info(
    case: CaseResult, model: PredictionModel, device: torch.device, affine: np.ndarray
) -> dict[str, Any]:
    """The JSON sidecar of one predicted label file: labels, geometry, volumes, model and provenance."""
    import fedgin

    return {
        "format": PREDICTION_FORMAT,
        "labels": {str(index): name for index, name in model.labels.items()},
        "input": str(case.input),
        "series_uid": case.series_uid,
        "modality": case.modality,
        "modality_reason": case.modality_reason,
        "shape": list(case.shape),
        "affine": np.asarray(affine, dtype=float).tolist(),
        "voxel_volume_ml": case.voxel_volume_ml,
        "volumes_ml": case.volumes_ml,
        "voxels": case.voxels,
        "model": {
            "file": str(model.path),
            "kind": model.kind,
            "model_config": model.model_config.model_dump(mode="json"),
            "provenance": model.provenance,
        },
        "preprocess": model.preprocess.model_dump(mode="json"),
        "preprocess_source": model.preprocess_source,
        "device": str(device),
        "seconds": round(case.seconds, 3),
        "fedgin_version": fedgin.__version__,
    }
