"""Source cases: where one labelled volume lives on disk and how to load and validate it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import nibabel as nib
import numpy as np

from fedgin.config import Modality
from fedgin.errors import ConfigError, DataError
from fedgin.labels import remap_labels

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)
#: Relative tolerance when comparing the affines of an image and its labels.
AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class MaskLabels:
    """One binary mask file per structure (TotalSegmentator); each mask paints its fedgin class."""

    masks: tuple[tuple[Path, int], ...]

    def files(self) -> list[Path]:
        return [path for path, _ in self.masks]


@dataclass(frozen=True)
class MappedLabels:
    """One integer label file whose values map onto fedgin classes (AMOS, nnU-Net)."""

    path: Path
    mapping: dict[int, int]

    def files(self) -> list[Path]:
        return [self.path]


LabelSpec = MaskLabels | MappedLabels


@dataclass
class LoadedCase:
    """A validated case in memory: the image (float32 3D NIfTI) and its fedgin label (uint8, same grid)."""

    image: nib.Nifti1Image
    label: np.ndarray


@dataclass(frozen=True)
class SourceCase:
    """One labelled volume of a data source, not yet read."""

    case_id: str
    source: str
    modality: Modality
    domain: str
    split: Split
    image: Path
    labels: LabelSpec
    #: The acquisition protocol (e.g. `ct_pv_120kvp_soft_3mm`) where the source records one, else "".
    protocol: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        """Cache-wide case id: the source prefix keeps ids unique across sources (s0001 in CT and MRI)."""
        return f"{self.source}-{self.case_id}"

    def files(self) -> list[Path]:
        """Every file this case is read from (for fingerprints)."""
        return [self.image, *self.labels.files()]

    def with_split(self, split: Split) -> SourceCase:
        return replace(self, split=split)

    def load(self) -> LoadedCase:
        """Read image and labels, validate them and map the labels onto the fedgin schema."""
        image_nifti, image_data = read_image(self.image)
        label = read_labels(self.labels, image_data.shape, image_nifti.affine)
        return LoadedCase(nib.Nifti1Image(image_data, image_nifti.affine), label)


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


def _squeeze_to_3d(path: Path, data: np.ndarray, what: str) -> np.ndarray:
    # A 4D file with a trailing singleton dimension (x, y, z, 1) is a 3D volume in disguise.
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        raise DataError(path, f"{what} is {data.ndim}D (shape {data.shape}), expected a 3D volume")
    if data.ndim > 3:
        raise DataError(path, f"{what} is {data.ndim}D (shape {data.shape}), expected a 3D volume")
    return data


def read_image(path: Path) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """Load an image volume as float32 and check it is 3D and finite."""
    nifti = load_nifti(path)
    data = _squeeze_to_3d(path, read_array(path, nifti, as_float=True), "image")
    finite = np.isfinite(data)
    if not finite.all():
        nan_count = int(np.isnan(data).sum())
        inf_count = int(data.size - finite.sum() - nan_count)
        raise DataError(path, f"image has non-finite voxels ({nan_count} NaN, {inf_count} Inf)")
    return nifti, data


def _check_same_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray, ref_shape, ref_affine) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise DataError(path, f"shape {tuple(shape)} differs from the image's {tuple(ref_shape)}")
    scale = max(1.0, float(np.abs(ref_affine[:3, :3]).max()))
    if not np.allclose(affine, ref_affine, rtol=AFFINE_TOLERANCE, atol=AFFINE_TOLERANCE * scale):
        raise DataError(
            path,
            "affine differs from the image's "
            f"(max difference {float(np.abs(affine - ref_affine).max()):.4g}); they must share a grid",
        )


def _read_label_file(path: Path, ref_shape: tuple[int, ...], ref_affine: np.ndarray) -> np.ndarray:
    nifti = load_nifti(path)
    data = _squeeze_to_3d(path, read_array(path, nifti, as_float=False), "label")
    _check_same_grid(path, data.shape, nifti.affine, ref_shape, ref_affine)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataError(path, "label has non-finite voxels (NaN or Inf)")
    return data


def read_labels(spec: LabelSpec, ref_shape: tuple[int, ...], ref_affine: np.ndarray) -> np.ndarray:
    """Read labels per `spec` on the image's grid and return the fedgin uint8 label volume."""
    if isinstance(spec, MaskLabels):
        label = np.zeros(ref_shape, np.uint8)
        for path, fedgin_class in spec.masks:
            mask = _read_label_file(path, ref_shape, ref_affine)
            values = np.unique(mask)
            if not np.isin(values, (0, 1)).all():
                shown = [float(v) if v != int(v) else int(v) for v in values[:10]]
                raise DataError(path, f"mask is not binary: values {shown}")
            label[mask > 0] = fedgin_class
        return label
    data = _read_label_file(spec.path, ref_shape, ref_affine)
    label, unknown = remap_labels(data, spec.mapping)
    if unknown:
        raise DataError(spec.path, f"label values outside the known map: {unknown[:20]}")
    return label


def hash_split(case_id: str) -> Split:
    """A deterministic 80/10/10 train/val/test split from a hash of the case id (stable across runs)."""
    bucket = int(hashlib.sha256(case_id.encode("utf-8")).hexdigest(), 16) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def check_split(value: str, where: Path, case_id: str) -> Split:
    split = value.strip().lower()
    if split not in SPLITS:
        raise DataError(
            where, f"case {case_id}: unknown split {value!r} (expected one of {', '.join(SPLITS)})"
        )
    return split  # type: ignore[return-value]


def domain_name(modality: Modality, sequence: str | None) -> str:
    """`mri_t2` from modality mri and sequence 'T2'; the plain modality when the sequence is unknown."""
    if not sequence or not sequence.strip():
        return modality
    tag = re.sub(r"[^a-z0-9]+", "_", sequence.strip().lower()).strip("_")
    if not tag or tag == modality:
        return modality
    return tag if tag.startswith(f"{modality}_") else f"{modality}_{tag}"


Discoverer = Callable[..., list[SourceCase]]
SOURCES: dict[str, Discoverer] = {}


def register(name: str) -> Callable[[Discoverer], Discoverer]:
    def decorate(function: Discoverer) -> Discoverer:
        SOURCES[name] = function
        return function

    return decorate


def discover(
    source: str,
    root: Path,
    label_map: dict[int, int] | None = None,
    modality: Modality | None = None,
    split_override: Split | None = None,
) -> list[SourceCase]:
    """All labelled cases of `source` under `root`, sorted by case id.

    `label_map` (source value -> fedgin class) is needed by `nnunet`; `modality` filters `amos` and sets the
    modality of `nnunet`; `split_override` puts every case in one split (e.g. AMOS as the test source).
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; known: {', '.join(sorted(SOURCES))}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data folder not found")
    if split_override is not None and split_override not in SPLITS:
        raise ConfigError(f"split override must be one of {', '.join(SPLITS)}, got {split_override!r}")
    cases = SOURCES[source](root, label_map=label_map, modality=modality)
    if not cases:
        raise DataError(root, f"no {source} cases found")
    if split_override is not None:
        cases = [case.with_split(split_override) for case in cases]
    return sorted(cases, key=lambda case: case.case_id)
