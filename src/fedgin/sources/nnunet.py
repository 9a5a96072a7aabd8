"""nnU-Net-style folders: imagesTr/X_0000.nii.gz + labelsTr/X.nii.gz (+ imagesTs/labelsTs as test)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fedgin.case_ids import check_case_id
from fedgin.config import Modality
from fedgin.errors import ConfigError, DataError
from fedgin.sources.base import MappedLabels, SourceCase, Split, domain_name, register

_CHANNEL0 = re.compile(r"^(?P<name>.+)_0000\.nii(\.gz)?$")


def _dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(path, f"unreadable dataset.json ({error})") from None
    return data if isinstance(data, dict) else {}


def modality_from_dataset_json(root: Path) -> tuple[Modality, str] | None:
    """(modality, domain) from dataset.json `channel_names` (v2) or `modality` (v1) of channel 0."""
    meta = _dataset_json(root)
    channels = meta.get("channel_names") or meta.get("modality") or {}
    name = str(channels.get("0", "")) if isinstance(channels, dict) else ""
    upper = name.strip().upper()
    if not upper:
        return None
    if upper == "CT":
        return "ct", "ct"
    if upper.startswith("MR") or upper in ("T1", "T2", "T1W", "T2W", "FLAIR", "DWI", "ADC"):
        sequence = None if upper.startswith("MR") else name
        return "mri", domain_name("mri", sequence)
    return None


@register("nnunet")
def discover_nnunet(
    root: Path, label_map: dict[int, int] | None = None, modality: Modality | None = None
) -> list[SourceCase]:
    """Image/label pairs with a user label map {source value: fedgin class}; other values are errors."""
    if label_map is None:
        raise ConfigError(f"{root}: the nnunet source needs a label map (source value -> fedgin class)")
    if modality is not None:
        domain = modality
    else:
        found = modality_from_dataset_json(root)
        if found is None:
            raise ConfigError(
                f"{root}: give the modality (ct or mri); dataset.json does not name channel 0 as CT or MR"
            )
        modality, domain = found
    cases = []
    folders: tuple[tuple[str, str, Split], ...] = (
        ("imagesTr", "labelsTr", "train"),
        ("imagesTs", "labelsTs", "test"),
    )
    for images, labels, split in folders:
        if not (root / images).is_dir() or (split == "test" and not (root / labels).is_dir()):
            continue
        for image in sorted((root / images).iterdir()):
            match = _CHANNEL0.match(image.name)
            if match is None:
                continue  # other channels (_0001, ...) are not used: one grey channel per case
            name = check_case_id(match.group("name"), image, "case name")
            suffix = ".nii.gz" if image.name.endswith(".gz") else ".nii"
            cases.append(
                SourceCase(
                    case_id=name,
                    source="nnunet",
                    modality=modality,
                    domain=domain,
                    split=split,
                    image=image,
                    labels=MappedLabels(root / labels / f"{name}{suffix}", dict(label_map)),
                )
            )
    return cases
