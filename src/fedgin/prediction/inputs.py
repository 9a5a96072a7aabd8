"""What `fedgin predict` reads: NIfTI files or one DICOM series per input, checked, loaded, and its modality.

The cheap checks (`check_input`: header, shape, affine, label-map intent) run on every input before any
prediction; the voxels are read one input at a time by `load_input`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from pydicom.misc import is_dicom

from fedgin.case_ids import case_id_problem, plain_name_message
from fedgin.config import Modality
from fedgin.errors import ConfigError, DataError
from fedgin.nifti import by_case_name, check_volume_shape, load_nifti, nifti_files, nifti_stem, read_image
from fedgin.prediction.dicom import DicomSeries, find_series, read_series, select_series

MODALITY_CHOICES: tuple[str, ...] = ("ct", "mri", "auto")
#: auto modality: CT when at least CT_MIN_AIR_FRACTION of the voxels are air (below CT_AIR_HU) and the
#: 0.5 / 99.5 percentiles lie in CT_RANGE_HU (Hounsfield units, including -3024 outside the scan field).
CT_AIR_HU = -500.0
CT_MIN_AIR_FRACTION = 0.01
CT_RANGE_HU = (-3100.0, 3100.0)
#: Intensity statistics for the auto modality use at most this many voxels (an even subsample).
MODALITY_SAMPLE = 1_000_000
#: An input whose (sampled) voxels are whole numbers with at most this many distinct values is taken for a
#: label map (e.g. a TotalSegmentator mask) and refused unless forced; a scan has far more grey values.
LABEL_MAP_MAX_VALUES = 16


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


def _is_dicom_file(path: Path) -> bool:
    try:
        return is_dicom(path)
    except OSError:  # unreadable: then it is reported as "not a NIfTI file"
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
        stem = nifti_stem(path)
        if stem is None:
            if _is_dicom_file(path):
                raise DataError(path, "is a single DICOM file; give the folder that holds the whole series")
            raise DataError(
                path,
                "not a NIfTI file (.nii, .nii.gz); fedgin predict reads NIfTI files or DICOM series folders",
            )
        return [PredictInput(stem, path, "nifti")]
    if not path.is_dir():
        raise DataError(path, "neither a file nor a folder")
    niftis = nifti_files(path)
    if niftis and series is None:
        names = by_case_name(niftis, "outputs would collide")
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


def output_name(item: PredictInput) -> str:
    """The input's name, for outputs written into a folder (`<name>.nii.gz`, `<name>.json`): DataError naming
    the input unless the name is a plain name, as a case id of a data set must be."""
    problem = case_id_problem(item.name)
    if problem is not None:
        message = plain_name_message("its case name", item.name, problem)
        raise DataError(item.path, f"{message}; rename it, or give one output file with -o NAME.nii.gz")
    return item.name


def check_input(item: PredictInput, force: bool = False) -> None:
    """The cheap checks (header, shape, affine) that can run on every input before any prediction.

    Unless `force`, a NIfTI file whose header declares it a label map (intent "label", as fedgin's own
    predictions do) is refused here; the voxels are checked by `check_looks_like_image` when read.
    """
    if item.kind == "dicom":
        return  # series selection is checked by find_inputs; the voxels are checked when read
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
    nifti, data = read_image(item.path)  # DataError for truncated data, NaN/Inf voxels, non-3D images
    check_volume_shape(item.path, data.shape)
    # The same in-memory image as `fedgin prepare` builds (SourceCase.load), so preprocessing matches.
    return LoadedInput(nib.Nifti1Image(data, nifti.affine), nifti.header.copy())


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
