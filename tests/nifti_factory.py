"""Tiny NIfTI data sets in the real source layouts (TotalSegmentator CT/MRI, AMOS, nnU-Net) for tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

SHAPE = (24, 20, 6)  # RAS voxels: x (R), y (A), z (S)
SPACING = (1.5, 2.0, 5.0)

#: Boxes (x, y, z ranges in the RAS array) of each TotalSegmentator structure of the phantom.
BOXES: dict[str, tuple[slice, slice, slice]] = {
    "liver": (slice(14, 22), slice(4, 14), slice(2, 6)),
    "kidney_left": (slice(2, 5), slice(2, 6), slice(1, 3)),
    "kidney_right": (slice(18, 21), slice(2, 6), slice(1, 3)),
    "spleen": (slice(2, 7), slice(8, 13), slice(3, 5)),
    "pancreas": (slice(8, 13), slice(10, 13), slice(2, 3)),
    "gallbladder": (slice(14, 16), slice(15, 17), slice(2, 4)),
}
FEDGIN_CLASS = {"liver": 1, "kidney_left": 2, "kidney_right": 2, "spleen": 3, "pancreas": 4, "gallbladder": 5}
AMOS_VALUE = {"liver": 6, "kidney_left": 3, "kidney_right": 2, "spleen": 1, "pancreas": 10, "gallbladder": 4}
#: An unlabelled distractor (AMOS "stomach", value 7), background in the fedgin schema.
STOMACH = (slice(8, 12), slice(14, 18), slice(3, 5))
CT_VALUES = {"liver": 60.0, "kidney_left": 150.0, "kidney_right": 150.0, "spleen": 50.0, "pancreas": 40.0}


@dataclass
class Phantom:
    """A phantom in RAS array order: image, fedgin label, per-structure masks and AMOS-style label."""

    image: np.ndarray
    label: np.ndarray
    masks: dict[str, np.ndarray]
    amos_label: np.ndarray
    affine: np.ndarray


def ras_affine(spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-20.0, 15.0, -40.0]
    return affine


def make_phantom(modality: str = "ct", seed: int = 0, shape=SHAPE, spacing=SPACING) -> Phantom:
    rng = np.random.default_rng(seed)
    body = -1000.0 if modality == "ct" else 5.0
    image = np.full(shape, body, dtype=np.float32)
    image[1:-1, 1:-1, :] = 0.0 if modality == "ct" else 100.0  # soft tissue inside a rim of air
    label = np.zeros(shape, np.uint8)
    amos = np.zeros(shape, np.uint8)
    masks = {}
    amos[STOMACH] = 7
    image[STOMACH] = 20.0 if modality == "ct" else 300.0
    for name, box in BOXES.items():
        mask = np.zeros(shape, np.uint8)
        mask[box] = 1
        masks[name] = mask
        label[box] = FEDGIN_CLASS[name]
        amos[box] = AMOS_VALUE[name]
        image[box] = CT_VALUES.get(name, 30.0) if modality == "ct" else 200.0 + 40 * FEDGIN_CLASS[name]
    image += rng.normal(0, 5.0, shape).astype(np.float32)
    return Phantom(image, label, masks, amos, ras_affine(spacing))


def reorient(data: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same volume stored in another voxel order (e.g. 'LPS', or 'ASL' for a sagittal-like layout)."""
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    return apply_orientation(data, transform), affine @ inv_ornt_aff(transform, data.shape)


def save(data: np.ndarray, affine: np.ndarray, path: Path, axcodes: str = "RAS") -> Path:
    data, affine = reorient(data, affine, axcodes)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def write_meta(root: Path, header: list[str], rows: list[list[str]], bom: bool = True) -> Path:
    text = ";".join(header) + "\n" + "".join(";".join(row) + "\n" for row in rows)
    path = root / "meta.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def write_totalseg(
    root: Path,
    ids: list[str],
    modality: str = "ct",
    splits: list[str] | None = None,
    axcodes: dict[str, str] | None = None,
    sequences: list[str] | None = None,
    with_split_column: bool = True,
    bom: bool = True,
) -> dict[str, Phantom]:
    """TotalSegmentator v2 layout: sXXXX/{ct,mri}.nii.gz + segmentations/<name>.nii.gz + meta.csv (';')."""
    phantoms = {}
    splits = splits or ["train"] * len(ids)
    for index, case_id in enumerate(ids):
        phantom = make_phantom(modality, seed=index)
        codes = (axcodes or {}).get(case_id, "RAS")
        save(phantom.image, phantom.affine, root / case_id / f"{modality}.nii.gz", codes)
        for name, mask in phantom.masks.items():
            save(mask, phantom.affine, root / case_id / "segmentations" / f"{name}.nii.gz", codes)
        phantoms[case_id] = phantom
    header = ["image_id", "age", "gender", "institute", "study_type"]
    rows = [[case_id, "60", "m", "A", "ct abdomen"] for case_id in ids]
    if with_split_column:
        header.append("split")
        rows = [[*row, split] for row, split in zip(rows, splits, strict=True)]
    if sequences is not None:
        header.append("sequence")
        rows = [[*row, sequence] for row, sequence in zip(rows, sequences, strict=True)]
    header.append("manufacturer")
    rows = [[*row, "Siemens"] for row in rows]
    write_meta(root, header, rows, bom=bom)
    return phantoms


def write_amos(root: Path, train_ids: list[int], val_ids: list[int] = (), test_ids: list[int] = ()) -> dict:
    """AMOS 2022 layout: imagesTr/labelsTr, imagesVa/labelsVa, imagesTs (unlabelled), dataset.json."""
    phantoms = {}
    for folder, ids in (("Tr", train_ids), ("Va", val_ids), ("Ts", test_ids)):
        for number in ids:
            name = f"amos_{number:04d}.nii.gz"
            phantom = make_phantom("ct" if number < 500 else "mri", seed=number)
            save(phantom.image, phantom.affine, root / f"images{folder}" / name, "LPS")
            if folder != "Ts":
                save(phantom.amos_label, phantom.affine, root / f"labels{folder}" / name, "LPS")
            phantoms[name.split(".")[0]] = phantom
    (root / "dataset.json").write_text(json.dumps({"name": "AMOS", "labels": {"0": "background"}}))
    return phantoms


def write_nnunet(
    root: Path,
    names: list[str],
    channel: str | None = "CT",
    values: dict[str, int] | None = None,
    test: list[str] = (),
) -> dict[str, Phantom]:
    """nnU-Net layout: imagesTr/X_0000.nii.gz + labelsTr/X.nii.gz (imagesTs/labelsTs for `test`).

    Label values per structure default to 10 * fedgin class (so a map like {10: 1, 20: 2, ...} is needed).
    """
    values = values or {name: 10 * cls for name, cls in FEDGIN_CLASS.items()}
    phantoms = {}
    for folder, group in (("Tr", names), ("Ts", test)):
        for index, name in enumerate(group):
            phantom = make_phantom("ct" if channel in (None, "CT") else "mri", seed=index)
            label = np.zeros(phantom.label.shape, np.uint8)
            for structure, mask in phantom.masks.items():
                label[mask > 0] = values[structure]
            save(phantom.image, phantom.affine, root / f"images{folder}" / f"{name}_0000.nii.gz", "ASL")
            save(label, phantom.affine, root / f"labels{folder}" / f"{name}.nii.gz", "ASL")
            phantoms[name] = phantom
    if channel is not None:
        (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": channel}, "labels": {}}))
    return phantoms


NNUNET_LABEL_MAP = {0: 0, 10: 1, 20: 2, 30: 3, 40: 4, 50: 5}
