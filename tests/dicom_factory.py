"""Small DICOM files written with pydicom for tests: classic one-file-per-slice series and enhanced
(multi-frame) CT files, with the geometry of a RAS+ affine over (x, y, z) voxel data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
STUDY_UID = "1.2.826.0.1.3680043.8.498.77"
#: nibabel's RAS+ and DICOM's LPS world axes differ in the sign of the first two.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _geometry(affine: np.ndarray) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """(ImageOrientationPatient, PixelSpacing, origin, slice step) of a RAS+ voxel-to-world affine."""
    lps = LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    orientation = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
    # PixelSpacing is (between rows, between columns) = (along y, along x).
    return orientation, [float(spacing[1]), float(spacing[0])], lps[:3, 3], lps[:3, 2]


def _base(data: np.ndarray, sop_class: str, uid: str, instance: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = f"{uid}.{instance}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"{uid}.{instance}"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = uid
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.PatientID = "phantom"
    ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    return ds


def _number(value: float) -> str:
    return f"{value:.6f}"


def write_slices(
    folder: Path,
    data: np.ndarray,
    affine: np.ndarray,
    uid: str = "1.2.826.0.1.3680043.8.498.2",
    positions: Sequence[Sequence[float]] | None = None,
) -> Path:
    """One classic CT file per slice along the third voxel axis (int16, rescale 1/0); `positions` replaces
    the ImagePositionPatient (LPS, mm) of each slice, e.g. to put two slices at the same place."""
    folder.mkdir(parents=True, exist_ok=True)
    orientation, pixel_spacing, origin, step = _geometry(affine)
    for k in range(data.shape[2]):
        ds = _base(data, CT_IMAGE, uid, k + 1)
        ds.ImageOrientationPatient = [_number(v) for v in orientation]
        position = origin + k * step if positions is None else np.asarray(positions[k], float)
        ds.ImagePositionPatient = [_number(v) for v in position]
        ds.PixelSpacing = [_number(v) for v in pixel_spacing]
        ds.SliceThickness = _number(float(np.linalg.norm(step)))
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T.astype(np.int16)).tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)
    return folder


def write_enhanced(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    uid: str = "1.2.826.0.1.3680043.8.498.3",
    per_frame_positions: bool = True,
    slope: float = 1.0,
    intercept: float = 0.0,
    reverse_frames: bool = False,
) -> Path:
    """One enhanced (multi-frame) CT file holding every slice as a frame, with the geometry in the
    functional groups; without `per_frame_positions` the frames' Plane Position Sequence is left out.
    The stored values are (data - intercept) / slope; `reverse_frames` stores the last slice first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    orientation, pixel_spacing, origin, step = _geometry(affine)
    ds = _base(data, ENHANCED_CT_IMAGE, uid, 1)
    ds.NumberOfFrames = int(data.shape[2])
    measures, plane, rescale, shared = Dataset(), Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [_number(v) for v in pixel_spacing]
    measures.SliceThickness = _number(float(np.linalg.norm(step)))
    plane.ImageOrientationPatient = [_number(v) for v in orientation]
    rescale.RescaleIntercept, rescale.RescaleSlope = _number(intercept), _number(slope)
    rescale.RescaleType = "HU"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([plane])
    shared.PixelValueTransformationSequence = DicomSequence([rescale])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    order = list(range(data.shape[2]))[:: -1 if reverse_frames else 1]
    for k in order:
        frame = Dataset()
        if per_frame_positions:
            position = Dataset()
            position.ImagePositionPatient = [_number(v) for v in origin + k * step]
            frame.PlanePositionSequence = DicomSequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    stored = np.round((data[:, :, order] - intercept) / slope).astype(np.int16)
    ds.PixelData = np.ascontiguousarray(stored.transpose(2, 1, 0)).tobytes()  # (frame, row, column)
    ds.save_as(path, enforce_file_format=True)
    return path
