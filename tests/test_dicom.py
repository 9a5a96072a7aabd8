"""DICOM inputs of `fedgin predict` written with pydicom: slices sharing a position, enhanced (multi-frame)
files with and without per-frame positions, and single files told apart from other files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dicom_factory import LPS_TO_RAS, write_enhanced, write_slices
from fedgin.errors import DataError
from fedgin.prediction.dicom import find_series, read_series
from fedgin.prediction.inputs import find_inputs, load_input

SHAPE = (12, 10, 5)


def oblique_affine() -> np.ndarray:
    """An oblique, anisotropic RAS+ affine (0.8 x 0.9 x 2.5 mm voxels, turned a few degrees)."""
    affine = np.eye(4)
    rotation = Rotation.from_rotvec([0.05, -0.1, 0.08]).as_matrix()
    affine[:3, :3] = rotation @ np.diag([-0.8, -0.9, 2.5])
    affine[:3, 3] = [10.0, 20.0, -30.0]
    return affine


def ct_values(seed: int = 0) -> np.ndarray:
    """Even Hounsfield-like values, so that a rescale slope of 2 stores them exactly."""
    return 2 * np.random.default_rng(seed).integers(-512, 512, SHAPE).astype(np.int16)


def only_series(folder: Path):
    (series,) = find_series(folder)
    return series


def assert_one_line(error: pytest.ExceptionInfo, folder: Path, problem: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{folder}: ") and problem in message, message


@pytest.mark.parametrize("n_slices", [2, 3])
def test_slices_at_one_position_are_refused_however_few(tmp_path: Path, n_slices: int) -> None:
    """Two files at one place are two acquisitions, not a volume with a made-up 1 mm spacing (a series of
    only those two files was read as one)."""
    affine = oblique_affine()
    lps = LPS_TO_RAS @ affine
    positions = [lps[:3, 3], *(lps[:3, 3] + k * lps[:3, 2] for k in range(n_slices - 1))]
    folder = write_slices(tmp_path / "dup", ct_values()[:, :, :n_slices], affine, positions=positions)
    with pytest.raises(DataError) as caught:
        read_series(only_series(folder))
    assert_one_line(caught, folder, "two slices share a position")


def test_two_slices_keep_their_real_spacing(tmp_path: Path) -> None:
    affine = oblique_affine()
    folder = write_slices(tmp_path / "two", ct_values()[:, :, :2], affine)
    volume = read_series(only_series(folder))
    assert volume.image.shape == (*SHAPE[:2], 2)
    np.testing.assert_allclose(volume.image.affine, affine, atol=1e-5)  # 2.5 mm apart, not 1 mm


@pytest.mark.parametrize("reverse_frames", [False, True])
def test_enhanced_ct_reads_as_the_volume_its_classic_twin_gives(tmp_path: Path, reverse_frames: bool) -> None:
    """An enhanced CT file (frames placed by Plane Position, stored as (HU + 1024) / 2) reads as the same
    voxels at the same places as the same scan written one file per slice, whatever the frame order."""
    data, affine = ct_values(), oblique_affine()
    classic = read_series(only_series(write_slices(tmp_path / "classic", data, affine)))
    folder = tmp_path / "enhanced"
    write_enhanced(
        folder / "ct.dcm", data, affine, slope=2.0, intercept=-1024.0, reverse_frames=reverse_frames
    )
    (item,) = find_inputs(folder)
    loaded = load_input(item)
    assert loaded.dicom_modality == "CT" and loaded.image.shape == SHAPE
    voxels = np.asarray(loaded.image.dataobj)
    assert voxels.dtype == np.float32 and np.array_equal(voxels, data.astype(np.float32))
    assert np.array_equal(voxels, np.asarray(classic.image.dataobj))
    np.testing.assert_allclose(loaded.image.affine, affine, atol=1e-5)
    np.testing.assert_allclose(loaded.image.affine, classic.image.affine, atol=1e-5)


def test_enhanced_file_without_frame_positions_says_what_is_missing(tmp_path: Path) -> None:
    folder = tmp_path / "enhanced"
    write_enhanced(folder / "ct.dcm", ct_values(), oblique_affine(), per_frame_positions=False)
    with pytest.raises(DataError) as caught:
        read_series(only_series(folder))
    assert_one_line(caught, folder, "enhanced (multi-frame) file without per-frame positions")
    assert "Plane Position Sequence > Image Position Patient" in str(caught.value)
    assert "single 2D slice" not in str(caught.value)


def test_a_single_dicom_file_is_recognised_by_its_preamble(tmp_path: Path) -> None:
    folder = write_slices(tmp_path / "series", ct_values()[:, :, :2], oblique_affine())
    one_file = next(folder.iterdir())
    with pytest.raises(DataError, match=re.escape(f"{one_file}: is a single DICOM file; give the folder")):
        find_inputs(one_file)
    not_dicom = tmp_path / "scan.dcm"
    not_dicom.write_bytes(b"\0" * 128 + b"DICX" + b"\0" * 64)
    with pytest.raises(DataError, match="not a NIfTI file"):
        find_inputs(not_dicom)
