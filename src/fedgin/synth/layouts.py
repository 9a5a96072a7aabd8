"""Write synthetic subjects as NIfTI in the TotalSegmentator and AMOS 2022 layouts."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from fedgin.errors import ConfigError
from fedgin.folders import check_fillable
from fedgin.io_utils import atomic_write, atomic_write_json, atomic_write_text
from fedgin.labels import AMOS_LABEL_NAMES, TOTALSEG_MASKS
from fedgin.synth.anatomy import Structure

Layout = Literal["totalseg", "amos"]
#: AMOS numbering: CT cases from 1, MRI cases from 500 (as in the real data set).
AMOS_FIRST_CT_ID = 1
AMOS_FIRST_MRI_ID = 500
#: TotalSegmentator mask name -> the structure code painted by the anatomy model.
TOTALSEG_STRUCTURES: dict[str, Structure] = {
    "liver": Structure.LIVER,
    "kidney_left": Structure.KIDNEY_LEFT,
    "kidney_right": Structure.KIDNEY_RIGHT,
    "spleen": Structure.SPLEEN,
    "pancreas": Structure.PANCREAS,
    "gallbladder": Structure.GALLBLADDER,
}


@dataclass(frozen=True)
class CasePlan:
    """One volume to write: which subject, rendered how, under which id and in which split."""

    case_id: str
    subject: int
    modality: str
    split: str
    protocol: str = ""


def affine_for(spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """RAS+ affine with the voxel spacing on the diagonal and the volume centred on the origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True)]
    return affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Save gzipped NIfTI atomically; gzip without a timestamp so equal data gives equal bytes."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    payload = gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)
    atomic_write(path, lambda handle: handle.write(payload))


def image_data(image: np.ndarray, modality: str) -> np.ndarray:
    """On-disk representation: CT as int16 HU, MRI as uint16 scanner units (as scanners store them)."""
    if modality == "ct":
        return np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16)


def split_counts(subjects: int, fractions: Sequence[float], minimums: Sequence[int]) -> list[int]:
    """Subjects per split (the first split takes the rest), honouring per-split minimums where possible."""
    counts = [0] + [
        max(minimum, round(subjects * f)) for f, minimum in zip(fractions[1:], minimums[1:], strict=True)
    ]
    while sum(counts[1:]) > subjects - max(minimums[0], 1 if subjects else 0):
        largest = max(range(1, len(counts)), key=lambda i: counts[i])
        counts[largest] -= 1
    counts[0] = subjects - sum(counts[1:])
    return counts


def assign_splits(
    subjects: int, names: Sequence[str], counts: Sequence[int], rng: np.random.Generator
) -> list[str]:
    """A split name per subject index, shuffled deterministically."""
    labels = [name for name, count in zip(names, counts, strict=True) for _ in range(count)]
    return [labels[i] for i in rng.permutation(subjects)]


def totalseg_splits(subjects: int, rng: np.random.Generator) -> list[str]:
    """About 70/15/15 train/val/test; at least one train case, and one val case from 3 subjects on."""
    counts = split_counts(subjects, (0.7, 0.15, 0.15), (1, 1 if subjects >= 3 else 0, 0))
    return assign_splits(subjects, ("train", "val", "test"), counts, rng)


def amos_splits(subjects: int, rng: np.random.Generator) -> list[str]:
    """About 70/30 Tr/Va; at least one Tr case, and one Va case from 2 subjects on."""
    counts = split_counts(subjects, (0.7, 0.3), (1, 1 if subjects >= 2 else 0))
    return assign_splits(subjects, ("train", "val"), counts, rng)


def plan_totalseg(subjects: int, modalities: Sequence[str], rng: np.random.Generator) -> list[CasePlan]:
    """Cases s0000, s0001, ...: every subject once per modality; one data set holds CT or MRI, not both.

    Several MRI sequences make a mixed-sequence MRI data set (as the real TotalSegmentator MRI is); the
    renders of one subject share its split, so no anatomy crosses from train to val or test.
    """
    kinds = {"ct" if m == "ct" else "mri" for m in modalities}
    if len(kinds) > 1:
        raise ConfigError(
            f"the totalseg layout holds one image kind (ct.nii.gz or mri.nii.gz per case), got modalities "
            f"{list(modalities)}; write CT and MRI into separate folders (or use the amos layout)"
        )
    splits = totalseg_splits(subjects, rng)
    plans = []
    for subject in range(subjects):
        for modality in modalities:
            plans.append(CasePlan(f"s{len(plans):04d}", subject, modality, splits[subject]))
    return plans


def plan_amos(subjects: int, modalities: Sequence[str], rng: np.random.Generator) -> list[CasePlan]:
    """Cases amos_NNNN: CT numbered from 1 (below 500), MRI from 500; Tr/Va split per subject."""
    ct_cases = subjects * sum(m == "ct" for m in modalities)
    if ct_cases >= AMOS_FIRST_MRI_ID - AMOS_FIRST_CT_ID:
        raise ConfigError(f"the amos layout numbers CT cases 1-499; {ct_cases} CT cases do not fit")
    mri_cases = subjects * sum(m != "ct" for m in modalities)
    if AMOS_FIRST_MRI_ID + mri_cases > 10000:
        raise ConfigError(f"the amos layout numbers MRI cases 500-9999; {mri_cases} MRI cases do not fit")
    splits = amos_splits(subjects, rng)
    next_id = {"ct": AMOS_FIRST_CT_ID, "mri": AMOS_FIRST_MRI_ID}
    plans = []
    for modality in modalities:
        kind = "ct" if modality == "ct" else "mri"
        for subject in range(subjects):
            plans.append(CasePlan(f"amos_{next_id[kind]:04d}", subject, modality, splits[subject]))
            next_id[kind] += 1
    return plans


def write_totalseg_case(
    out: Path, plan: CasePlan, image: np.ndarray, structure: np.ndarray, affine: np.ndarray
) -> None:
    folder = out / plan.case_id
    name = "ct.nii.gz" if plan.modality == "ct" else "mri.nii.gz"
    write_nifti(folder / name, image_data(image, plan.modality), affine)
    for mask_name in TOTALSEG_MASKS:
        mask = (structure == TOTALSEG_STRUCTURES[mask_name]).astype(np.uint8)
        write_nifti(folder / "segmentations" / f"{mask_name}.nii.gz", mask, affine)


def write_totalseg_meta(out: Path, plans: Sequence[CasePlan], rng: np.random.Generator) -> None:
    """meta.csv, `;`-separated like the real one, with `sequence` (t1/t2, MRI) and `protocol` columns."""
    lines = ["image_id;split;modality;sequence;protocol;age;gender;institute"]
    for plan in plans:
        sequence = "" if plan.modality == "ct" else plan.modality.removeprefix("mri_")
        kind = "ct" if plan.modality == "ct" else "mri"
        age, gender = int(rng.integers(20, 90)), str(rng.choice(["m", "f"]))
        lines.append(
            f"{plan.case_id};{plan.split};{kind};{sequence};{plan.protocol};{age};{gender};synthetic"
        )
    atomic_write_text(out / "meta.csv", "\n".join(lines) + "\n")


def amos_folders(split: str) -> tuple[str, str]:
    return ("imagesTr", "labelsTr") if split == "train" else ("imagesVa", "labelsVa")


def write_amos_case(
    out: Path, plan: CasePlan, image: np.ndarray, structure: np.ndarray, affine: np.ndarray
) -> None:
    images, labels = amos_folders(plan.split)
    write_nifti(out / images / f"{plan.case_id}.nii.gz", image_data(image, plan.modality), affine)
    write_nifti(out / labels / f"{plan.case_id}.nii.gz", structure.astype(np.uint8), affine)


def write_amos_dataset_json(out: Path, plans: Sequence[CasePlan], seed: int) -> None:
    """dataset.json in the shape of AMOS 2022's, plus the synthetic modality of every case."""

    def entry(plan: CasePlan) -> dict[str, str]:
        images, labels = amos_folders(plan.split)
        return {"image": f"./{images}/{plan.case_id}.nii.gz", "label": f"./{labels}/{plan.case_id}.nii.gz"}

    kinds = sorted({"CT" if p.modality == "ct" else "MRI" for p in plans})
    training = [entry(p) for p in plans if p.split == "train"]
    validation = [entry(p) for p in plans if p.split == "val"]
    atomic_write_json(
        out / "dataset.json",
        {
            "name": "AMOS (fedgin synthetic)",
            "description": f"Synthetic abdomen from fedgin's generator, seed {seed}",
            "tensorImageSize": "3D",
            "reference": "fedgin embedded synthetic data set",
            "licence": "CC-BY-4.0",
            "release": "1.0",
            "modality": {str(i): kind for i, kind in enumerate(kinds)},
            "labels": {str(value): name for value, name in AMOS_LABEL_NAMES.items()},
            "numTraining": len(training),
            "numValidation": len(validation),
            "numTest": 0,
            "training": training,
            "validation": validation,
            "test": [],
            "synthetic_modality": {p.case_id: p.modality for p in plans},
            "synthetic_protocol": {p.case_id: p.protocol for p in plans},
        },
    )


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty existing folder unless `overwrite` (then files are replaced, others kept); never
    the root, home or working folder (or above it), nor a folder fedgin made as something else."""
    check_fillable(out, "data")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output path exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out}: output folder is not empty; choose an empty folder or allow overwriting "
            "(--overwrite, overwrite=True)"
        )
