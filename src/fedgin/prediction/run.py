"""`fedgin predict`: NIfTI files or a DICOM series in, label NIfTI files in each input's own geometry out."""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedgin.config import Modality
from fedgin.errors import ConfigError, DataError
from fedgin.io_utils import atomic_write, atomic_write_json, atomic_write_text
from fedgin.prediction.dicom import DicomSeries, find_series, read_series, select_series
from fedgin.prediction.model_file import PredictionModel, load_prediction_model

ModalityChoice = Literal["ct", "mri", "auto"]
MODALITY_CHOICES: tuple[str, ...] = ("ct", "mri", "auto")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
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
#: auto modality: CT when at least CT_MIN_AIR_FRACTION of the voxels are air (below CT_AIR_HU) and the
#: 0.5 / 99.5 percentiles lie in CT_RANGE_HU (Hounsfield units, including -3024 outside the scan field).
CT_AIR_HU = -500.0
CT_MIN_AIR_FRACTION = 0.01
CT_RANGE_HU = (-3100.0, 3100.0)
#: Intensity statistics for the auto modality use at most this many voxels (an even subsample).
MODALITY_SAMPLE = 1_000_000
PREVIEW_SLICES = 4
#: An input whose (sampled) voxels are whole numbers with at most this many distinct values is taken for a
#: label map (e.g. a TotalSegmentator mask) and refused unless forced; a scan has far more grey values.
LABEL_MAP_MAX_VALUES = 16


# --------------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class PredictInput:
    """One volume to segment: a NIfTI file or one DICOM series; `name` becomes its output file name."""

    name: str
    path: Path
    kind: Literal["nifti", "dicom"]
    series: DicomSeries | None = None


@dataclass
class LoadedInput:
    """An input in memory: float32 (x, y, z) voxels and affine, the NIfTI header to copy, the DICOM tag."""

    image: nib.Nifti1Image
    header: nib.Nifti1Header | nib.Nifti2Header | None
    dicom_modality: str = ""


def nifti_stem(path: Path) -> str | None:
    """`case` for case.nii.gz or case.nii; None for a file that is not named as NIfTI."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.lower().endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def find_inputs(path: str | Path, series: str | None = None) -> list[PredictInput]:
    """The volumes `path` stands for: a NIfTI file, the NIfTI files directly in a folder, or a DICOM series.

    Raises DataError for a missing path, a file that is not NIfTI, a folder with neither, and a DICOM folder
    with several series and no `series` UID (the message lists them).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "input not found")
    if path.is_file():
        if series is not None:
            raise ConfigError(f"--series chooses a series in a DICOM folder; {path} is a file")
        if nifti_stem(path) is None:
            if _is_dicom_file(path):
                raise DataError(path, "is a single DICOM file; give the folder that holds the whole series")
            raise DataError(
                path,
                "not a NIfTI file (.nii, .nii.gz); fedgin predict reads NIfTI files or DICOM series folders",
            )
        return [PredictInput(nifti_stem(path) or path.name, path, "nifti")]
    if not path.is_dir():
        raise DataError(path, "neither a file nor a folder")
    niftis = sorted(p for p in path.iterdir() if p.is_file() and nifti_stem(p) is not None)
    if niftis and series is None:
        names: dict[str, Path] = {}
        for file in niftis:
            stem = nifti_stem(file) or file.name
            if stem in names:
                raise DataError(file, f"same case name as {names[stem]} (outputs would collide); keep one")
            names[stem] = file
        return [PredictInput(stem, file, "nifti") for stem, file in names.items()]
    found = find_series(path)
    if not found:
        subfolders = any(child.is_dir() for child in path.iterdir())
        hint = " (series are read from the folder itself, not from its subfolders)" if subfolders else ""
        raise DataError(path, f"no NIfTI files (*.nii, *.nii.gz) or DICOM series here{hint}")
    chosen = select_series(path, found, series)
    name = path.resolve().name or "dicom"
    if series is not None and len(found) > 1:
        name = f"{name}_{chosen.number or chosen.uid.rsplit('.', 1)[-1]}"
    return [PredictInput(name, path, "dicom", chosen)]


def _squeezed_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(v) for v in shape)
    while len(shape) > 3 and shape[-1] == 1:  # (x, y, z, 1) is a 3D volume
        shape = shape[:-1]
    return shape


def check_volume_shape(path: Path, shape: Sequence[int]) -> None:
    """DataError unless `shape` is a 3D volume with more than one voxel along every axis."""
    shape = _squeezed_shape(shape)
    if len(shape) != 3:
        raise DataError(path, f"image is {len(shape)}D (shape {shape}); fedgin predict needs a 3D volume")
    if min(shape) < 2:
        raise DataError(path, f"image is a single 2D slice (shape {shape}); fedgin predict needs a 3D volume")


def check_input(item: PredictInput, force: bool = False) -> None:
    """The cheap checks (header, shape, affine) that can run on every input before any prediction.

    Unless `force`, a NIfTI file whose header declares it a label map (intent "label", as fedgin's own
    predictions do) is refused here; the voxels are checked by `check_looks_like_image` when read.
    """
    if item.kind == "dicom":
        return  # series selection is checked by find_inputs; the voxels are checked when read
    from fedgin.sources.base import load_nifti

    nifti = load_nifti(item.path)
    if not isinstance(nifti, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(item.path, f"not a NIfTI image (nibabel reads it as {type(nifti).__name__})")
    check_volume_shape(item.path, nifti.shape)
    if abs(float(np.linalg.det(np.asarray(nifti.affine)[:3, :3]))) < 1e-12:
        raise DataError(item.path, "the header's affine is singular (zero voxel size?)")
    if not force and nifti.header.get_intent()[0] == "label":
        raise DataError(
            item.path,
            "is a label map, not an image (its header's intent is 'label'); give the scan itself, "
            "or pass --force to segment it anyway",
        )


def voxel_sample(data: np.ndarray) -> np.ndarray:
    """An even subsample of at most about MODALITY_SAMPLE voxels, for intensity statistics."""
    flat = np.asarray(data).reshape(-1)
    return flat[:: max(1, flat.size // MODALITY_SAMPLE)]


def check_looks_like_image(path: Path, data: np.ndarray) -> None:
    """DataError when the voxels look like a label map rather than a scan: whole numbers taking at most
    LABEL_MAP_MAX_VALUES distinct values (an even sample of at most MODALITY_SAMPLE voxels is examined)."""
    sample = voxel_sample(data)
    if np.issubdtype(sample.dtype, np.floating) and not np.array_equal(sample, np.round(sample)):
        return
    values = np.unique(sample)
    if len(values) > LABEL_MAP_MAX_VALUES:
        return
    shown = ", ".join(f"{value:g}" for value in values[:8]) + (", ..." if len(values) > 8 else "")
    raise DataError(
        path,
        f"looks like a label map, not an image (its voxels take only {len(values)} whole-number "
        f"value{'s' if len(values) != 1 else ''}: {shown}); give the scan itself, or pass --force to "
        "segment it anyway",
    )


def load_input(item: PredictInput) -> LoadedInput:
    """Read the voxels (float32, finite, 3D) and geometry of one input; DataError naming it otherwise."""
    if item.kind == "dicom":
        assert item.series is not None
        volume = read_series(item.series)
        data = np.asarray(volume.image.dataobj)
        if not np.isfinite(data).all():
            raise DataError(item.path, f"DICOM series {item.series.uid} has non-finite voxels")
        return LoadedInput(volume.image, None, volume.modality)
    from fedgin.sources.base import read_image

    nifti, data = read_image(item.path)  # DataError for truncated data, NaN/Inf voxels, non-3D images
    check_volume_shape(item.path, data.shape)
    # The same in-memory image as `fedgin prepare` builds (SourceCase.load), so preprocessing matches.
    return LoadedInput(nib.Nifti1Image(data, nifti.affine), nifti.header.copy())


# --------------------------------------------------------------------------------------------------------
# Modality


def looks_like_ct(data: np.ndarray) -> tuple[bool, str]:
    """Whether intensities are Hounsfield units (air around -1000), and the numbers that decided it."""
    sample = voxel_sample(data)
    air = float((sample < CT_AIR_HU).mean())
    low, high = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    is_ct = air >= CT_MIN_AIR_FRACTION and CT_RANGE_HU[0] <= low and high <= CT_RANGE_HU[1]
    evidence = f"{air:.1%} of voxels below {CT_AIR_HU:.0f}, 0.5-99.5 percentiles {low:.0f} to {high:.0f}"
    return is_ct, evidence


def choose_modality(requested: str, data: np.ndarray, dicom_modality: str = "") -> tuple[Modality, str]:
    """(ct or mri, why): the --modality given, else the DICOM Modality tag, else the intensities."""
    if requested not in MODALITY_CHOICES:
        raise ConfigError(f"--modality must be ct, mri or auto, got {requested!r}")
    is_ct, evidence = looks_like_ct(data)
    from_tag: Modality | None = {"CT": "ct", "MR": "mri"}.get(dicom_modality.upper())  # type: ignore[assignment]
    if requested != "auto":
        notes = []
        if from_tag is not None and from_tag != requested:
            notes.append(f"the DICOM Modality tag says {dicom_modality}")
        if from_tag is None and is_ct != (requested == "ct"):
            notes.append(f"the intensities look like {'CT' if is_ct else 'MRI'}: {evidence}")
        return requested, "given with --modality" + (f" (but {'; '.join(notes)})" if notes else "")  # type: ignore[return-value]
    if from_tag is not None:
        return from_tag, f"auto: DICOM Modality tag {dicom_modality}"
    tag_note = f"DICOM Modality tag {dicom_modality!r} is neither CT nor MR; " if dicom_modality else ""
    if is_ct:
        return "ct", f"auto: {tag_note}Hounsfield range ({evidence})"
    return "mri", f"auto: {tag_note}not Hounsfield units ({evidence})"


# --------------------------------------------------------------------------------------------------------
# Outputs


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
    `<case>.nii.gz`, `<case>.json` and `<case>_preview.png` per input and one `volumes.csv`.
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
        cases = tuple(
            CaseOutputs(
                output / f"{item.name}.nii.gz",
                output / f"{item.name}.json",
                output / f"{item.name}_preview.png" if preview else None,
            )
            for item in inputs
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


def _write_nifti(path: Path, image: nib.Nifti1Image) -> None:
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1, mtime=0)  # labels compress well even at 1
    atomic_write(path, lambda handle: handle.write(payload))


# --------------------------------------------------------------------------------------------------------
# Prediction


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


def predict_label(
    model: PredictionModel,
    image: nib.Nifti1Image,
    modality: Modality,
    device: torch.device,
    amp: bool = False,
    batch_size: int = 32,
) -> np.ndarray:
    """Segment an in-memory image: uint8 labels on exactly the image's voxel grid (shape and order).

    Preprocessing is the model's own (reorient, resample in-plane, normalise, crop/pad); the prediction is
    mapped back with nearest-neighbour resampling by `restore_label`.
    """
    from fedgin.evaluation.inference import predict_volume
    from fedgin.preprocessing import preprocess, restore_label

    volume = preprocess(image, None, modality, model.preprocess)
    cached = predict_volume(
        model.network,
        volume.image,
        device,
        dimensions=model.model_config.dimensions,
        batch_size=batch_size,
        amp=amp,
        roi_size=model.model_config.patch_size,
    )
    label = restore_label(cached, volume.geometry)
    if label.shape != tuple(image.shape[:3]):  # restore_label's contract; a mismatch is a fedgin bug
        raise RuntimeError(f"restored label shape {label.shape} differs from the image's {image.shape}")
    return label


def organ_volumes(label: np.ndarray, affine: np.ndarray, labels: dict[int, str]) -> tuple[dict, dict, float]:
    """(voxels per organ, millilitres per organ, millilitres per voxel) of a label volume."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0
    counts = np.bincount(label.reshape(-1), minlength=max(labels) + 1)
    voxels = {name: int(counts[index]) for index, name in labels.items() if index > 0}
    return voxels, {name: count * voxel_ml for name, count in voxels.items()}, voxel_ml


def _volumes_csv(cases: Sequence[CaseResult], labels: dict[int, str]) -> str:
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


def _case_info(
    case: CaseResult, model: PredictionModel, device: torch.device, affine: np.ndarray
) -> dict[str, Any]:
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


def _resolve_device(name: str) -> torch.device:
    from fedgin.model import resolve_device

    try:
        return resolve_device(name)
    except (ConfigError, RuntimeError) as error:  # torch.device("gpu") is a RuntimeError
        problem = str(error).split(": ", 1)[-1] if isinstance(error, ConfigError) else "unknown device"
        raise ConfigError(f"--device {name}: {problem} (use auto, cpu or cuda[:N])") from None


def run_prediction(
    input_path: str | Path,
    output: str | Path,
    model: str | Path | PredictionModel,
    modality: str = "auto",
    series: str | None = None,
    preview: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    amp: bool | None = None,
    batch_size: int = 32,
    progress: bool = True,
    console: Console | None = None,
    force: bool = False,
) -> PredictionReport:
    """Segment every input volume and write labels (input geometry), JSON sidecars, volumes CSV, previews.

    Everything that can be checked without reading voxels is checked first (inputs, series, outputs,
    model); outputs are staged and moved into place only after every case succeeded, so an error (e.g. a
    truncated file halfway through a folder) leaves nothing behind. The model is loaded once for all files.
    An input that looks like a label map rather than a scan is refused unless `force`.
    """
    if modality not in MODALITY_CHOICES:
        raise ConfigError(f"--modality must be ct, mri or auto, got {modality!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    inputs = find_inputs(input_path, series)
    for item in inputs:
        check_input(item, force=force)
    plan = plan_outputs(inputs, Path(output), preview, overwrite)
    torch_device = device if isinstance(device, torch.device) else _resolve_device(device)
    use_amp = torch_device.type == "cuda" if amp is None else amp
    if isinstance(model, PredictionModel):  # already loaded (e.g. by a caller segmenting many folders)
        loaded_model = model
        loaded_model.network.to(torch_device)
    else:
        loaded_model = load_prediction_model(model, torch_device)
    say = console.print if console is not None else (lambda *args, **kwargs: None)
    say(
        escape(
            f"model {loaded_model.describe()} on {torch_device}{' with mixed precision' if use_amp else ''}; "
            f"preprocessing from {loaded_model.preprocess_source}"
        ),
        highlight=False,
        soft_wrap=True,
    )
    for note in loaded_model.notes:
        say(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)

    staging = StagedOutputs(plan.directory)
    results: list[CaseResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
            task = bar.add_task("predict", total=len(inputs))
            for item, outputs in zip(inputs, plan.cases, strict=True):
                bar.update(task, description=f"predict {item.name}")
                started = time.perf_counter()
                source = load_input(item)
                data = np.asarray(source.image.dataobj)
                if not force:
                    check_looks_like_image(item.path, data)
                chosen, reason = choose_modality(modality, data, source.dicom_modality)
                if console is not None:
                    bar.console.print(
                        escape(f"{item.name}: {chosen.upper()} ({reason})"), highlight=False, soft_wrap=True
                    )
                label = predict_label(loaded_model, source.image, chosen, torch_device, use_amp, batch_size)
                affine = np.asarray(source.image.affine)
                voxels, volumes, voxel_ml = organ_volumes(label, affine, loaded_model.labels)
                case = CaseResult(
                    name=item.name,
                    input=item.path,
                    outputs=outputs,
                    modality=chosen,
                    modality_reason=reason,
                    shape=tuple(int(v) for v in label.shape),
                    voxel_volume_ml=voxel_ml,
                    voxels=voxels,
                    volumes_ml=volumes,
                    seconds=time.perf_counter() - started,
                    series_uid=item.series.uid if item.series is not None else None,
                )
                _write_nifti(staging.path(outputs.label), label_image(label, source, loaded_model.labels))
                atomic_write_json(
                    staging.path(outputs.info_json), _case_info(case, loaded_model, torch_device, affine)
                )
                if outputs.preview is not None:
                    from fedgin.prediction.preview import save_prediction_preview

                    save_prediction_preview(
                        staging.path(outputs.preview), data, label, affine, chosen, loaded_model.labels,
                        f"{item.name} ({chosen.upper()})", PREVIEW_SLICES,
                    )  # fmt: skip
                results.append(case)
                bar.advance(task)
        atomic_write_text(staging.path(plan.volumes_csv), _volumes_csv(results, loaded_model.labels))
        staging.commit()
    finally:
        staging.discard()
    return PredictionReport(results, plan.volumes_csv, loaded_model, str(torch_device))
