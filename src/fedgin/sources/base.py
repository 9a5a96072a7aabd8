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
from fedgin.nifti import read_image, read_label

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)


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


def read_labels(spec: LabelSpec, ref_shape: tuple[int, ...], ref_affine: np.ndarray) -> np.ndarray:
    """Read labels per `spec` on the image's grid and return the fedgin uint8 label volume."""
    if isinstance(spec, MaskLabels):
        label = np.zeros(ref_shape, np.uint8)
        for path, fedgin_class in spec.masks:
            _, mask = read_label(path, (ref_shape, ref_affine))
            values = np.unique(mask)
            if not np.isin(values, (0, 1)).all():
                raise DataError(path, f"mask is not binary: values {[int(v) for v in values[:10]]}")
            label[mask > 0] = fedgin_class
        return label
    _, data = read_label(spec.path, (ref_shape, ref_affine))
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
    Every case id is a plain name (checked by each source where it reads the id), no id names two cases,
    and every file is below `root` (see `check_below_root`).
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; known: {', '.join(sorted(SOURCES))}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data folder not found")
    # A setting the source does not use is refused, not dropped (a TotalSegmentator CT cache is all CT).
    if label_map is not None and source != "nnunet":
        raise ConfigError(f"a label map applies to the nnunet source only, not {source}")
    if modality is not None and source not in ("nnunet", "amos"):
        raise ConfigError(f"a modality applies to the nnunet and amos sources only, not {source}")
    if split_override is not None and split_override not in SPLITS:
        raise ConfigError(f"split override must be one of {', '.join(SPLITS)}, got {split_override!r}")
    cases = SOURCES[source](root, label_map=label_map, modality=modality)
    if not cases:
        raise DataError(root, f"no {source} cases found")
    check_unique_ids(cases)
    check_below_root(cases, root)
    if split_override is not None:
        cases = [case.with_split(split_override) for case in cases]
    return sorted(cases, key=lambda case: case.case_id)


def check_unique_ids(cases: list[SourceCase]) -> None:
    """DataError naming both files when two cases share an id (amos_0001 in imagesTr and imagesVa, or as
    .nii and .nii.gz): one would silently replace the other in the cache."""
    first: dict[str, SourceCase] = {}
    for case in cases:
        if case.case_id in first:
            other = first[case.case_id].image
            raise DataError(case.image, f"case id {case.case_id!r} also names {other}; keep one of them")
        first[case.case_id] = case


def check_below_root(cases: list[SourceCase], root: Path) -> None:
    """DataError for a case file that is not inside the data folder `root`: a source is read only below it.

    Paths are compared resolved (symlinks followed, `..` folded), so a symlink inside the root that points
    outside it, a file's or a whole folder's, is refused too: give the folder it points to as the root
    instead. A symlinked root itself is fine. A file that does not exist is judged by its path (loading it
    then fails with "file not found").
    """
    resolved_root = root.resolve()
    for case in cases:
        for path in case.files():
            try:
                resolved = path.resolve()
            except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop (Python 3.11)
                raise DataError(path, f"case {case.case_id}: cannot be resolved ({error})") from None
            if not resolved.is_relative_to(resolved_root):
                raise DataError(
                    path,
                    f"case {case.case_id}: resolves to {resolved}, outside the data folder {resolved_root}; "
                    "fedgin reads a data set only below its root",
                )
