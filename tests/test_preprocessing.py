"""Preprocessing: canonical orientation, in-plane resampling, intensity windows, crop/pad and the inverse."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from fedgin.config import PreprocessConfig
from fedgin.preprocessing import Geometry, preprocess, restore_label
from nifti_factory import make_phantom, reorient

KEEP_GRID = PreprocessConfig(spacing_mm=None, size=None)


def _image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "ASL", "SPR"])
def test_canonical_orientation_puts_axial_axis_first_of_the_cache(axcodes: str) -> None:
    phantom = make_phantom()
    # A marker at a known patient position: the most superior slice, right and anterior corner.
    phantom.label[22, 18, 5] = 5
    data, affine = reorient(phantom.image, phantom.affine, axcodes)
    label, _ = reorient(phantom.label, phantom.affine, axcodes)
    volume = preprocess(_image(data, affine), label, "ct", KEEP_GRID)
    z, height, width = volume.image.shape
    assert (z, height, width) == (6, 20, 24)  # (S, A, R) whatever the file's voxel order
    assert volume.label[5, 18, 22] == 5  # superior -> last slice, anterior -> high row, right -> high column
    np.testing.assert_array_equal(volume.label, phantom.label.transpose(2, 1, 0))
    assert volume.image.flags["C_CONTIGUOUS"] and volume.image.dtype == np.float32
    assert nib.aff2axcodes(np.array(volume.geometry.affine)) == ("R", "A", "S")
    np.testing.assert_allclose(volume.geometry.affine, phantom.affine)


def test_ct_window_and_zscore() -> None:
    ramp = np.linspace(-2000, 2000, 24 * 20 * 6, dtype=np.float32).reshape(24, 20, 6)
    image = _image(ramp, np.eye(4))
    raw = preprocess(image, None, "ct", PreprocessConfig(spacing_mm=None, size=None, zscore=False)).image
    assert raw.min() == pytest.approx(-125) and raw.max() == pytest.approx(275)
    normalised = preprocess(image, None, "ct", KEEP_GRID).image
    assert normalised.mean() == pytest.approx(0, abs=1e-4) and normalised.std() == pytest.approx(1, abs=1e-3)
    window = PreprocessConfig(spacing_mm=None, size=None, zscore=False, ct_window=(0, 100))
    assert preprocess(image, None, "ct", window).image.max() == pytest.approx(100)


def test_mri_percentile_clip() -> None:
    values = np.arange(24 * 20 * 6, dtype=np.float32).reshape(24, 20, 6)
    config = PreprocessConfig(spacing_mm=None, size=None, zscore=False, mri_percentiles=(10, 90))
    out = preprocess(_image(values, np.eye(4)), None, "mri", config).image
    assert out.min() == pytest.approx(np.percentile(values, 10))
    assert out.max() == pytest.approx(np.percentile(values, 90))


def test_inplane_resampling_keeps_slices() -> None:
    phantom = make_phantom()  # spacing 1.5 x 2.0 x 5.0
    config = PreprocessConfig(spacing_mm=1.0, size=None)
    volume = preprocess(_image(phantom.image, phantom.affine), phantom.label, "ct", config)
    assert volume.image.shape == (6, 40, 36)
    assert volume.geometry.spacing == pytest.approx((1.0, 1.0, 5.0))
    assert set(np.unique(volume.label)) == set(np.unique(phantom.label))  # nearest: no new values


def test_crop_and_pad() -> None:
    phantom = make_phantom()
    image = _image(phantom.image, phantom.affine)
    padded = preprocess(image, phantom.label, "ct", PreprocessConfig(spacing_mm=None, size=32))
    assert padded.image.shape == (6, 32, 32) and padded.geometry.offsets == (4, 6)
    assert (padded.image[:, :6, :] == padded.image.min()).all()  # pad with the normalised minimum
    assert (padded.label[:, :6, :] == 0).all()
    np.testing.assert_array_equal(padded.label[:, 6:26, 4:28], phantom.label.transpose(2, 1, 0))
    cropped = preprocess(image, phantom.label, "ct", PreprocessConfig(spacing_mm=None, size=16))
    assert cropped.image.shape == (6, 16, 16) and cropped.geometry.offsets == (-4, -2)
    np.testing.assert_array_equal(cropped.label, phantom.label.transpose(2, 1, 0)[:, 2:18, 4:20])


@pytest.mark.parametrize("axcodes", ["LPS", "ASL"])
def test_restore_is_exact_when_spacing_matches(axcodes: str) -> None:
    phantom = make_phantom(spacing=(2.0, 2.0, 5.0))
    data, affine = reorient(phantom.image, phantom.affine, axcodes)
    label, _ = reorient(phantom.label, phantom.affine, axcodes)
    volume = preprocess(_image(data, affine), label, "ct", PreprocessConfig(spacing_mm=2.0, size=32))
    np.testing.assert_array_equal(restore_label(volume.label, volume.geometry), label)


def test_restore_round_trip_with_anisotropic_resampling() -> None:
    phantom = make_phantom()  # 1.5 x 2.0 mm in-plane
    data, affine = reorient(phantom.image, phantom.affine, "LPS")
    label, _ = reorient(phantom.label, phantom.affine, "LPS")
    volume = preprocess(_image(data, affine), label, "ct", PreprocessConfig(spacing_mm=1.2, size=48))
    geometry = Geometry.from_json(volume.geometry.to_json())
    restored = restore_label(volume.label, geometry)
    assert restored.shape == label.shape
    assert (restored == label).mean() > 0.97  # only boundary voxels may move
    for value in range(1, 6):
        assert (restored == value).sum() == pytest.approx((label == value).sum(), rel=0.25)


def test_restore_rejects_wrong_shape() -> None:
    phantom = make_phantom()
    volume = preprocess(_image(phantom.image, phantom.affine), phantom.label, "ct", KEEP_GRID)
    with pytest.raises(ValueError, match="cached shape"):
        restore_label(volume.label[:3], volume.geometry)
