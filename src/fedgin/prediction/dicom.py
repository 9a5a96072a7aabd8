"""DICOM series folders: find the series (SimpleITK/GDCM), read one as a RAS+ nibabel image.

Classic series (one file per slice) are read with SimpleITK; an enhanced (multi-frame) CT or MR file, whose
geometry lives in its functional groups, with pydicom.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from fedgin.errors import DataError

#: DICOM tags as SimpleITK/GDCM names them.
TAG_MODALITY = "0008|0060"
TAG_SERIES_DESCRIPTION = "0008|103e"
TAG_SERIES_NUMBER = "0020|0011"
TAG_IMAGE_POSITION = "0020|0032"
#: Slice positions may differ from the median slice step by this fraction before the series is refused.
SLICE_SPACING_TOLERANCE = 0.01
#: SimpleITK's axes are LPS; nibabel's are RAS: the first two world axes change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class DicomSeries:
    """One series in a folder: its SeriesInstanceUID, its files (in slice order) and what its header says."""

    folder: Path
    uid: str
    files: tuple[str, ...]
    description: str
    modality: str
    number: str

    def describe(self) -> str:
        """One line for messages: UID, description, series number, modality and file count."""
        parts = [f"--series {self.uid}"]
        if self.description:
            parts.append(f"'{self.description}'")
        if self.number:
            parts.append(f"series number {self.number}")
        if self.modality:
            parts.append(self.modality)
        parts.append(f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}")
        return " ".join(parts[:1]) + " (" + ", ".join(parts[1:]) + ")"


@dataclass
class DicomVolume:
    """A read series: float32 (x, y, z) voxels with their RAS+ affine, and the Modality tag (CT, MR, ...)."""

    image: nib.Nifti1Image
    modality: str
    series: DicomSeries


@contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK prints warnings (e.g. on odd headers) to stderr itself; fedgin reports problems as DataErrors."""
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _header_tags(path: str) -> dict[str, str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    keys = (TAG_MODALITY, TAG_SERIES_DESCRIPTION, TAG_SERIES_NUMBER)
    return {key: reader.GetMetaData(key).strip() for key in keys if reader.HasMetaDataKey(key)}


def find_series(folder: Path) -> list[DicomSeries]:
    """Every DICOM series directly in `folder` (not its subfolders), in GDCM's order; [] when none."""
    import SimpleITK as sitk

    with _quiet_itk():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        series = []
        for uid in uids:
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            tags = _header_tags(files[0]) if files else {}
            series.append(
                DicomSeries(
                    folder=folder,
                    uid=uid,
                    files=files,
                    description=tags.get(TAG_SERIES_DESCRIPTION, ""),
                    modality=tags.get(TAG_MODALITY, ""),
                    number=tags.get(TAG_SERIES_NUMBER, ""),
                )
            )
    return series


def select_series(folder: Path, series: list[DicomSeries], uid: str | None) -> DicomSeries:
    """The one series to read: the only one, or the one `uid` names; otherwise a DataError listing them."""
    listing = "; ".join(item.describe() for item in series)
    if uid is not None:
        for item in series:
            if item.uid == uid:
                return item
        raise DataError(folder, f"no DICOM series with SeriesInstanceUID {uid} here; found {listing}")
    if len(series) > 1:
        raise DataError(folder, f"holds {len(series)} DICOM series; choose one with --series UID: {listing}")
    return series[0]


def lps_to_ras_affine(spacing, origin, direction) -> np.ndarray:
    """The RAS+ voxel-to-world affine of an ITK image (spacing, origin, row-major 3x3 direction, all LPS)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    lps[:3, 3] = np.asarray(origin, dtype=float)
    return LPS_TO_RAS @ lps


def _slice_positions(series: DicomSeries, reader, normal: np.ndarray) -> list[float] | None:
    """Each file's position along the slice normal (mm); None when a file does not say where it lies."""
    positions = []
    for index in range(len(series.files)):
        if not reader.HasMetaDataKey(index, TAG_IMAGE_POSITION):
            return None  # odd files: nothing to compare, trust the reader
        try:
            point = [float(v) for v in reader.GetMetaData(index, TAG_IMAGE_POSITION).split("\\")]
        except ValueError:
            return None
        positions.append(float(np.dot(point, normal)))
    return positions


def _check_slice_spacing(series: DicomSeries, positions: list[float]) -> None:
    """Unevenly spaced slices (a missing file, two acquisitions in one series) would make the affine lie,
    and two slices at one position (even the only two) would get a made-up spacing."""
    if len(positions) < 2:
        return
    steps = np.abs(np.diff(positions))
    median = float(np.median(steps))
    if median <= 0 or float(steps.min()) <= 1e-6:
        raise DataError(
            series.folder,
            f"DICOM series {series.uid}: two slices share a position (several acquisitions in one series?)",
        )
    if float(np.abs(steps - median).max()) > SLICE_SPACING_TOLERANCE * median:
        raise DataError(
            series.folder,
            f"DICOM series {series.uid}: slices are unevenly spaced ({steps.min():.3g} to {steps.max():.3g} "
            "mm apart; a missing slice?)",
        )


def read_series(series: DicomSeries) -> DicomVolume:
    """Read a series with SimpleITK (an enhanced multi-frame file with pydicom, see `_read_enhanced`) and
    convert it to a float32 nibabel image with the RAS+ affine.

    ITK arrays are (z, y, x) in LPS; the voxel data are transposed to (x, y, z) and the affine's first two
    world axes negated, so the nibabel image describes the same voxels at the same places.
    """
    import SimpleITK as sitk

    frames = _frame_count(series.files[0])
    if frames > 1:
        if len(series.files) > 1:
            raise DataError(
                series.folder,
                f"DICOM series {series.uid} is split over {len(series.files)} multi-frame files; fedgin "
                "reads an enhanced (multi-frame) series from a single file",
            )
        return _read_enhanced(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    reader.MetaDataDictionaryArrayUpdateOn()
    with _quiet_itk():
        try:
            image = reader.Execute()
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise DataError(series.folder, f"DICOM series {series.uid} is unreadable ({first})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            series.folder,
            f"DICOM series {series.uid} has {image.GetNumberOfComponentsPerPixel()} colour components per "
            "voxel; expected greyscale CT or MRI",
        )
    size = tuple(int(v) for v in image.GetSize())
    if image.GetDimension() != 3 or min(size) < 2:
        raise DataError(
            series.folder,
            f"DICOM series {series.uid} is a single 2D slice (size {size}); fedgin predict needs a 3D volume",
        )
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    positions = _slice_positions(series, reader, direction[:, 2])
    if positions is not None:
        _check_slice_spacing(series, positions)
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    affine = lps_to_ras_affine(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    modality = series.modality
    if not modality and reader.HasMetaDataKey(0, TAG_MODALITY):
        modality = reader.GetMetaData(0, TAG_MODALITY).strip()
    return DicomVolume(nib.Nifti1Image(data, affine), modality.upper(), series)


def _frame_count(path: str) -> int:
    """NumberOfFrames of a DICOM file's header (1 when absent or unreadable: the classic reader decides)."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        return int(header.get("NumberOfFrames") or 1)
    except Exception:  # pydicom raises many types for odd headers; SimpleITK reports those files
        return 1


#: What places an enhanced file's frames in space: (what to call it, functional group, attribute).
_FRAME_GEOMETRY = (
    ("per-frame positions (Plane Position Sequence > Image Position Patient)", "PlanePositionSequence",
     "ImagePositionPatient"),
    ("orientation (Plane Orientation Sequence > Image Orientation Patient)", "PlaneOrientationSequence",
     "ImageOrientationPatient"),
    ("pixel spacing (Pixel Measures Sequence > Pixel Spacing)", "PixelMeasuresSequence", "PixelSpacing"),
)  # fmt: skip


def _functional_values(ds, sequence: str, keyword: str, default=None) -> list:
    """Per frame, `keyword` of the first item of `sequence` in that frame's functional groups, else in the
    shared ones, else `default`."""
    shared_groups = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    values = []
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        value = default
        for group in (frame, shared):
            items = group.get(sequence) if group is not None else None
            if items and keyword in items[0]:
                value = items[0][keyword].value
                break
        values.append(value)
    return values


def _read_enhanced(series: DicomSeries) -> DicomVolume:
    """An enhanced (multi-frame) file as a volume: frames placed by their Plane Position, oriented by the
    Plane Orientation and scaled by the Pixel Measures of the functional groups, sorted along the normal."""
    import pydicom

    try:
        ds = pydicom.dcmread(series.files[0])
    except Exception as error:
        raise DataError(series.folder, f"DICOM series {series.uid} is unreadable ({error})") from None
    what = f"DICOM series {series.uid} is an enhanced (multi-frame) file"
    n_frames = int(ds.NumberOfFrames)
    n_groups = len(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if n_groups != n_frames:
        raise DataError(
            series.folder,
            f"{what} of {n_frames} frames with {n_groups} Per-frame Functional Groups items; each frame "
            "needs its own Plane Position to be placed in space",
        )
    found = {name: _functional_values(ds, sequence, keyword) for name, sequence, keyword in _FRAME_GEOMETRY}
    missing = [name for name, values in found.items() if any(value is None for value in values)]
    if missing:
        raise DataError(series.folder, f"{what} without {' and '.join(missing)}; its frames cannot be placed")
    positions, orientations, spacings = (np.asarray(values, dtype=float) for values in found.values())
    if not (np.allclose(orientations, orientations[0], atol=1e-4) and np.allclose(spacings, spacings[0])):
        raise DataError(series.folder, f"{what} whose frames differ in orientation or pixel spacing")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(
            series.folder,
            f"DICOM series {series.uid} has {ds.SamplesPerPixel} colour components per voxel; expected "
            "greyscale CT or MRI",
        )
    size = (int(ds.Columns), int(ds.Rows), n_frames)
    if min(size) < 2:
        raise DataError(
            series.folder,
            f"DICOM series {series.uid} is a single 2D slice (size {size}); fedgin predict needs a 3D volume",
        )
    row_direction, column_direction = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row_direction, column_direction)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    _check_slice_spacing(series, along[order].tolist())
    try:
        stored = np.asarray(ds.pixel_array, dtype=np.float64)  # (frame, row, column)
    except Exception as error:  # e.g. a compression pydicom has no decoder for
        raise DataError(series.folder, f"{what} whose pixel data are unreadable ({error})") from None
    transform = "PixelValueTransformationSequence"
    slope = np.asarray(_functional_values(ds, transform, "RescaleSlope", ds.get("RescaleSlope", 1.0)), float)
    intercept = np.asarray(
        _functional_values(ds, transform, "RescaleIntercept", ds.get("RescaleIntercept", 0.0)), float
    )
    frames = stored * slope[:, None, None] + intercept[:, None, None]
    data = frames[order].transpose(2, 1, 0).astype(np.float32)  # (x, y, z), as SimpleITK's arrays become
    step = float(along[order[-1]] - along[order[0]]) / (n_frames - 1)
    row_spacing, column_spacing = spacings[0]
    direction = np.column_stack([row_direction, column_direction, normal])
    affine = lps_to_ras_affine((column_spacing, row_spacing, step), positions[order[0]], direction)
    modality = series.modality or str(ds.get("Modality", "")).strip()
    return DicomVolume(nib.Nifti1Image(data, affine), modality.upper(), series)
