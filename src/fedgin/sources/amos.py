"""AMOS 2022 layout: imagesTr/ labelsTr/ imagesVa/ labelsVa/ (imagesTs/ has no labels), amos_NNNN.nii.gz."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fedgin.case_ids import check_case_id
from fedgin.config import Modality
from fedgin.errors import DataError
from fedgin.labels import AMOS_TO_FEDGIN
from fedgin.sources.base import MappedLabels, SourceCase, Split, domain_name, register

#: AMOS ids below this are CT, the others MRI.
FIRST_MRI_ID = 500
_AMOS_NAME = re.compile(r"^amos_(\d+)\.nii(\.gz)?$")


def amos_modality(number: int) -> Modality:
    return "ct" if number < FIRST_MRI_ID else "mri"


def read_dataset_json(root: Path) -> dict:
    """dataset.json as a dict ({} when there is none); a one-line DataError when it is not a JSON object."""
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(path, "not a valid JSON object") from None
    if not isinstance(data, dict):
        raise DataError(path, "not a valid JSON object")
    return data


def _case_tags(root: Path, meta: dict, key: str) -> dict[str, str]:
    """The case id -> tag object `key` of dataset.json ({} when absent; null tags are left out).

    DataError naming the key for a case id that is not a plain name: such a file is not AMOS's.
    """
    path = root / "dataset.json"
    tags = meta.get(key)
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise DataError(path, f"{key!r} is not an object of case id -> tag")
    return {
        check_case_id(str(case), path, f"{key}: case id"): str(tag).strip()
        for case, tag in tags.items()
        if tag is not None
    }


def sequence_tags(root: Path, meta: dict | None = None) -> dict[str, str]:
    """Case id -> MRI sequence (t1/t2) where dataset.json records one, as the synthetic AMOS set does.

    Real AMOS does not say which MRI sequence a case is; its MRI cases then keep the domain "mri".
    `meta` is dataset.json as read by `read_dataset_json` (read here when not given).
    """
    meta = read_dataset_json(root) if meta is None else meta
    tags = _case_tags(root, meta, "synthetic_modality")
    return {case: tag.removeprefix("mri_") for case, tag in tags.items() if tag.startswith("mri_")}


def protocol_tags(root: Path, meta: dict | None = None) -> dict[str, str]:
    """Case id -> acquisition protocol from dataset.json `synthetic_protocol` (the synthetic AMOS set).

    Real AMOS records none: its cases then have the protocol "".
    """
    meta = read_dataset_json(root) if meta is None else meta
    return {case: tag for case, tag in _case_tags(root, meta, "synthetic_protocol").items() if tag}


@register("amos")
def discover_amos(
    root: Path, label_map: dict[int, int] | None = None, modality: Modality | None = None
) -> list[SourceCase]:
    """Labelled AMOS cases: Tr as train, Va as val (use split_override='test' when AMOS is the test set).

    The cases are the files named amos_NNNN in the image folders; dataset.json's file lists are not read.
    """
    mapping = label_map if label_map is not None else AMOS_TO_FEDGIN
    meta = read_dataset_json(root)  # read once for both tag maps
    sequences, protocols = sequence_tags(root, meta), protocol_tags(root, meta)
    cases = []
    folders: tuple[tuple[str, str, Split], ...] = (
        ("imagesTr", "labelsTr", "train"),
        ("imagesVa", "labelsVa", "val"),
    )
    for images, labels, split in folders:
        if not (root / images).is_dir():
            continue
        for image in sorted((root / images).iterdir()):
            match = _AMOS_NAME.match(image.name)
            if match is None:
                continue
            case_modality = amos_modality(int(match.group(1)))
            if modality is not None and case_modality != modality:
                continue
            case_id = check_case_id(image.name.split(".")[0], image)  # plain by the name pattern already
            cases.append(
                SourceCase(
                    case_id=case_id,
                    source="amos",
                    modality=case_modality,
                    domain=domain_name(case_modality, sequences.get(case_id)),
                    split=split,
                    image=image,
                    labels=MappedLabels(root / labels / image.name, dict(mapping)),
                    protocol=protocols.get(case_id, ""),
                )
            )
    return cases
