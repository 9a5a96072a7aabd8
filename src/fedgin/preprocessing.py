"""Volume preprocessing (RAS+, in-plane resampling, intensity normalisation, crop/pad) and its inverse."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform
from scipy.ndimage import zoom

from fedgin.config import Modality, PreprocessConfig

#: Added to the standard deviation in the z-score, so a constant volume does not divide by zero.
ZSCORE_EPS = 1e-8
_IDENTITY_ORNT = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


@dataclass
class Geometry:
    """Everything needed to map a cached (Z, H, W) volume back onto the original image grid.

    Cached arrays are (z, y, x) of the RAS+ volume: `cached[z, y, x] == resampled[x - off_x, y - off_y, z]`.
    """

    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    original_spacing: tuple[float, float, float]
    ornt: list[list[float]]  # nibabel orientation: original voxel axes -> canonical axes
    canonical_shape: tuple[int, int, int]
    resampled_shape: tuple[int, int]  # in-plane (x, y) shape after resampling, before crop/pad
    offsets: tuple[int, int]  # where resampled index 0 lands in the cached slice (negative: cropped)
    cached_shape: tuple[int, int, int]  # (Z, H, W)
    spacing: tuple[float, float, float]  # (x, y, z) mm of the cached volume
    affine: list[list[float]]  # voxel (x, y, z) of the cached volume -> scanner mm (RAS+)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Geometry:
        return cls(
            original_shape=tuple(data["original_shape"]),
            original_affine=[list(map(float, row)) for row in data["original_affine"]],
            original_spacing=tuple(data["original_spacing"]),
            ornt=[list(map(float, row)) for row in data["ornt"]],
            canonical_shape=tuple(data["canonical_shape"]),
            resampled_shape=tuple(data["resampled_shape"]),
            offsets=tuple(data["offsets"]),
            cached_shape=tuple(data["cached_shape"]),
            spacing=tuple(data["spacing"]),
            affine=[list(map(float, row)) for row in data["affine"]],
        )


@dataclass
class PreprocessedVolume:
    """A preprocessed volume: image float32 (Z, H, W) so image[z] is contiguous, label uint8 or None."""

    image: np.ndarray
    label: np.ndarray | None
    geometry: Geometry


def _resample_inplane(data: np.ndarray, shape_xy: tuple[int, int], order: int) -> np.ndarray:
    """Resample axes 0 and 1 to `shape_xy`; grid_mode aligns voxel edges, so field of view is kept."""
    if tuple(data.shape[:2]) == tuple(shape_xy):
        return data  # no interpolation at all: exact when the spacing already matches
    factors = (shape_xy[0] / data.shape[0], shape_xy[1] / data.shape[1], 1.0)
    return zoom(data, factors, order=order, mode="nearest", grid_mode=True)


def _crop_or_pad(
    data: np.ndarray, offsets: tuple[int, int], size_xy: tuple[int, int], fill: float
) -> np.ndarray:
    """Place `data` (x, y, z) at `offsets` in a `size_xy` plane, cropping what falls outside."""
    out = np.full((size_xy[0], size_xy[1], data.shape[2]), fill, dtype=data.dtype)
    src, dst = [], []
    for axis in (0, 1):
        start = max(0, offsets[axis])
        stop = min(size_xy[axis], offsets[axis] + data.shape[axis])
        dst.append(slice(start, stop))
        src.append(slice(start - offsets[axis], stop - offsets[axis]))
    out[dst[0], dst[1]] = data[src[0], src[1]]
    return out


def normalise_intensity(data: np.ndarray, modality: Modality, config: PreprocessConfig) -> np.ndarray:
    """CT: clip to the HU window; MRI: clip to percentiles; then a per-volume z-score if configured."""
    if modality == "ct":
        low, high = config.ct_window
    else:
        low, high = np.percentile(data, config.mri_percentiles)
    data = np.clip(data, low, high).astype(np.float32, copy=False)
    if config.zscore:
        data = (data - data.mean(dtype=np.float64)) / (data.std(dtype=np.float64) + ZSCORE_EPS)
    return data.astype(np.float32, copy=False)


def preprocess(
    image: nib.Nifti1Image,
    label: np.ndarray | None,
    modality: Modality,
    config: PreprocessConfig,
) -> PreprocessedVolume:
    """Reorient to RAS+, resample in-plane, normalise intensities and crop/pad to config.size."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {data.shape}")
    if label is not None and label.shape != data.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {data.shape}")
    affine = np.asarray(image.affine, dtype=float)
    original_spacing = tuple(float(v) for v in nib.affines.voxel_sizes(affine))

    # Canonical orientation: the array axes become R, A, S, so the axial (S) axis is last whatever the
    # acquisition plane was; the orientation comes from the header, not from assumptions about the file.
    ornt = io_orientation(affine) if config.canonical else _IDENTITY_ORNT
    data = apply_orientation(data, ornt)
    canonical_affine = affine @ inv_ornt_aff(ornt, image.shape[:3])
    if label is not None:
        label = apply_orientation(label, ornt).astype(np.uint8)
    canonical_shape = data.shape
    canonical_spacing = nib.affines.voxel_sizes(canonical_affine)

    # In-plane resampling only; the slice spacing is left alone (2D model on axial slices).
    if config.spacing_mm is None:
        resampled_xy = (canonical_shape[0], canonical_shape[1])
    else:
        resampled_xy = tuple(
            max(1, round(canonical_shape[axis] * canonical_spacing[axis] / config.spacing_mm))
            for axis in (0, 1)
        )
    data = _resample_inplane(data, resampled_xy, order=1)
    if label is not None:
        label = _resample_inplane(label, resampled_xy, order=0)
    # Resampled voxel i covers the old voxels around (i + 0.5) * scale - 0.5 (grid_mode).
    scale = [canonical_shape[axis] / resampled_xy[axis] for axis in (0, 1)] + [1.0]
    resample_affine = np.diag([*scale, 1.0])
    resample_affine[:3, 3] = [(s - 1) / 2 for s in scale]

    data = normalise_intensity(data, modality, config)

    size_xy = resampled_xy if config.size is None else (config.size, config.size)
    offsets = tuple(int((size_xy[axis] - resampled_xy[axis]) // 2) for axis in (0, 1))
    # Pad with the volume's minimum after normalisation (air), labels with background.
    data = _crop_or_pad(data, offsets, size_xy, fill=float(data.min()))
    if label is not None:
        label = _crop_or_pad(label, offsets, size_xy, fill=0)
    shift = np.eye(4)
    shift[:2, 3] = [-offsets[0], -offsets[1]]
    cached_affine = canonical_affine @ resample_affine @ shift

    image_zhw = np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32)
    label_zhw = None if label is None else np.ascontiguousarray(label.transpose(2, 1, 0), dtype=np.uint8)
    geometry = Geometry(
        original_shape=tuple(int(v) for v in image.shape[:3]),
        original_affine=affine.tolist(),
        original_spacing=original_spacing,
        ornt=np.asarray(ornt, dtype=float).tolist(),
        canonical_shape=tuple(int(v) for v in canonical_shape),
        resampled_shape=tuple(int(v) for v in resampled_xy),
        offsets=offsets,
        cached_shape=tuple(int(v) for v in image_zhw.shape),
        spacing=tuple(float(v) for v in nib.affines.voxel_sizes(cached_affine)),
        affine=cached_affine.tolist(),
    )
    return PreprocessedVolume(image=image_zhw, label=label_zhw, geometry=geometry)


def restore_label(label_zhw: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Map a cached-grid label (Z, H, W) back to the original voxel grid and order (uint8, nearest)."""
    if tuple(label_zhw.shape) != tuple(geometry.cached_shape):
        raise ValueError(
            f"label shape {label_zhw.shape} differs from the cached shape {geometry.cached_shape}"
        )
    label = np.asarray(label_zhw).transpose(2, 1, 0)  # back to (x, y, z)
    # Undo crop/pad: the resampled plane sits at `offsets` in the cached plane.
    negative = (-geometry.offsets[0], -geometry.offsets[1])
    label = _crop_or_pad(label, negative, geometry.resampled_shape, fill=0)
    label = _resample_inplane(label, geometry.canonical_shape[:2], order=0)
    back = ornt_transform(_IDENTITY_ORNT, np.asarray(geometry.ornt))  # canonical axes -> original axes
    label = apply_orientation(label, back)
    return np.ascontiguousarray(label, dtype=np.uint8)
