"""NIfTI files as fedgin reads and writes them: case names, loading with one-line errors, 3D checks, labels.

Sources (`fedgin prepare`), prediction and evaluation all read their files through these helpers, so a
truncated gzip, a 2D image or a label on another grid is reported the same way everywhere: a DataError
naming the file.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from fedgin.errors import DataError
from fedgin.io_utils import atomic_write

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: Relative tolerance when comparing the affines of an image and its labels.
AFFINE_TOLERANCE = 1e-3


def nifti_stem(path: Path) -> str | None:
    """`case` for case.nii.gz or case.nii (any letter case); None for a file not named as NIfTI."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.lower().endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def nifti_files(folder: Path) -> list[Path]:
    """The files directly in `folder` named as NIfTI, sorted (subfolders are not searched)."""
    return sorted(path for path in folder.iterdir() if path.is_file() and nifti_stem(path) is not None)


def by_case_name(files: Iterable[Path], why: str = "") -> dict[str, Path]:
    """NIfTI files keyed by case name; DataError when two share one (case.nii and case.nii.gz).

    `why` says what the clash would break (e.g. "outputs would collide").
    """
    names: dict[str, Path] = {}
    for path in files:
        stem = nifti_stem(path) or path.name
        if stem in names:
            reason = f" ({why})" if why else ""
            raise DataError(path, f"same case name as {names[stem]}{reason}; keep one of them")
        names[stem] = path
    return names


def load_nifti(path: Path) -> nib.spatialimages.SpatialImage:
    """Open a NIfTI header; DataError naming the file when it is missing, empty or unreadable."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    try:
        return nib.load(path)
    except Exception as error:  # nibabel raises many types for corrupt headers
        raise DataError(path, f"unreadable NIfTI ({type(error).__name__}: {error})") from None


def read_array(path: Path, nifti: nib.spatialimages.SpatialImage, as_float: bool) -> np.ndarray:
    """The voxel data of an opened NIfTI; DataError naming the file when the data cannot be read."""
    # Data are read lazily: a truncated gzip only shows up here, as zlib.error, EOFError, OSError, ...
    try:
        if as_float:
            return nifti.get_fdata(dtype=np.float32)
        return np.asanyarray(nifti.dataobj)
    except Exception:
        raise DataError(path, "unreadable (truncated or corrupt gzip?)") from None


def squeezed_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """`shape` without trailing singleton axes beyond the third: (x, y, z, 1) is a 3D volume in disguise."""
    shape = tuple(int(v) for v in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def squeeze_volume(path: Path, data: np.ndarray, what: str, dims: tuple[int, ...] = (3,)) -> np.ndarray:
    """`data` with trailing singleton axes dropped; DataError unless it then has one of `dims` axes."""
    shape = squeezed_shape(data.shape)
    if len(shape) not in dims:
        expected = " or ".join(f"{n}D" for n in dims)
        raise DataError(path, f"{what} is {len(shape)}D (shape {shape}), expected a {expected} volume")
    return data.reshape(shape)


def check_volume_shape(path: Path, shape: Sequence[int]) -> None:
    """DataError unless `shape` is a 3D volume with more than one voxel along every axis (what a model
    segments: a single slice has no third dimension to speak of)."""
    shape = squeezed_shape(shape)
    if len(shape) != 3:
        raise DataError(path, f"image is {len(shape)}D (shape {shape}); fedgin predict needs a 3D volume")
    if min(shape) < 2:
        raise DataError(path, f"image is a single 2D slice (shape {shape}); fedgin predict needs a 3D volume")


def read_image(path: Path) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """Load an image volume as float32 and check it is 3D and finite."""
    nifti = load_nifti(path)
    data = squeeze_volume(path, read_array(path, nifti, as_float=True), "image")
    finite = np.isfinite(data)
    if not finite.all():
        nan_count = int(np.isnan(data).sum())
        inf_count = int(data.size - finite.sum() - nan_count)
        raise DataError(path, f"image has non-finite voxels ({nan_count} NaN, {inf_count} Inf)")
    return nifti, data


def check_same_grid(
    path: Path, shape: Sequence[int], affine: np.ndarray, ref_shape: Sequence[int], ref_affine: np.ndarray
) -> None:
    """DataError unless the file at `path` has the image's shape and (within AFFINE_TOLERANCE) affine."""
    if tuple(shape) != tuple(ref_shape):
        raise DataError(path, f"shape {tuple(shape)} differs from the image's {tuple(ref_shape)}")
    scale = max(1.0, float(np.abs(ref_affine[:3, :3]).max()))
    if not np.allclose(affine, ref_affine, rtol=AFFINE_TOLERANCE, atol=AFFINE_TOLERANCE * scale):
        raise DataError(
            path,
            "affine differs from the image's "
            f"(max difference {float(np.abs(affine - ref_affine).max()):.4g}); they must share a grid",
        )


def read_label(
    path: Path,
    image_grid: tuple[Sequence[int], np.ndarray] | None = None,
    dims: tuple[int, ...] = (3,),
) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """The opened NIfTI and voxels (stored dtype) of a label file; DataError naming the file when it does
    not have `dims` axes, is not on `image_grid` (shape, affine) when given, or holds values that are not
    whole numbers (NaN, Inf, 1.5: labels are classes, never intensities)."""
    nifti = load_nifti(path)
    data = squeeze_volume(path, read_array(path, nifti, as_float=False), "label", dims)
    if image_grid is not None:
        check_same_grid(path, data.shape, nifti.affine, *image_grid)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise DataError(path, "label has non-finite voxels (NaN or Inf)")
        fractional = data[data != np.round(data)]
        if fractional.size:
            raise DataError(path, f"label has values that are not whole numbers ({fractional.flat[0]:g})")
    return nifti, data


def write_nifti(path: Path, image: nib.Nifti1Image | nib.Nifti2Image) -> None:
    """Write `image` atomically, gzipped when `path` ends in .gz (level 1 and no time stamp: labels compress
    well at 1, and the same labels give the same bytes)."""
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    atomic_write(path, lambda handle: handle.write(payload))
