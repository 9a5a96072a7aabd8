"""AMOS 2022 layout: imagesTr/ labelsTr/ imagesVa/ labelsVa/ (imagesTs/ has no labels), amos_NNNN.nii.gz."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fedgin.config import Modality
from fedgin.errors import DataError
from fedgin.labels import AMOS_TO_FEDGIN
from fedgin.sources.base import MappedLabels, SourceCase, Split, domain_name, register

#: AMOS ids below this are CT, the others MRI.
FIRST_MRI_ID = 500
_AMOS_NAME = re.compile(r"^amos_(\d+)\.nii(\.gz)?$")


def amos_modality(number: int) -> Modality:
    return "ct" if number < FIRST_MRI_ID else "mri"


def sequence_tags(root: Path) -> dict[str, str]:
    """Case id -> MRI sequence (t1/t2) where dataset.json records one, as the synthetic AMOS set does.

    Real AMOS does not say which MRI sequence a case is; its MRI cases then keep the domain "mri".
    """
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        tags = json.loads(path.read_text(encoding="utf-8")).get("synthetic_modality", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise DataError(path, "not a valid JSON object") from None
    return {case: tag.removeprefix("mri_") for case, tag in tags.items() if str(tag).startswith("mri_")}


@register("amos")
def discover_amos(
    root: Path, label_map: dict[int, int] | None = None, modality: Modality | None = None
) -> list[SourceCase]:
    """Labelled AMOS cases: Tr as train, Va as val (use split_override='test' when AMOS is the test set)."""
    mapping = label_map if label_map is not None else AMOS_TO_FEDGIN
    sequences = sequence_tags(root)
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
            case_id = image.name.split(".")[0]
            cases.append(
                SourceCase(
                    case_id=case_id,
                    source="amos",
                    modality=case_modality,
                    domain=domain_name(case_modality, sequences.get(case_id)),
                    split=split,
                    image=image,
                    labels=MappedLabels(root / labels / image.name, dict(mapping)),
                )
            )
    return cases
