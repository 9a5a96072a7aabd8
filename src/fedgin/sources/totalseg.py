"""TotalSegmentator CT v2 and MRI layouts: sXXXX/{ct,mri}.nii.gz, sXXXX/segmentations/*.nii.gz, meta.csv.

Optional meta.csv columns: `sequence` (the MRI domain) and `protocol` (the acquisition protocol, as the
synthetic set records it; the real meta.csv has none, and then the protocol is "").
"""

from __future__ import annotations

import csv
from pathlib import Path

from fedgin.case_ids import check_case_id
from fedgin.config import Modality
from fedgin.errors import DataError
from fedgin.labels import TOTALSEG_MASKS
from fedgin.sources.base import (
    MaskLabels,
    SourceCase,
    Split,
    check_split,
    domain_name,
    hash_split,
    register,
)

META_FILE = "meta.csv"


def _stripped(row: dict) -> dict[str, str]:
    # Fields beyond the header (a row with too many `;`) come under the key None: left out.
    return {key.strip(): (value or "").strip() for key, value in row.items() if key is not None}


def read_meta(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a `;`-separated meta.csv (a UTF-8 BOM is tolerated), checking the required
    columns."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=";")
            columns = [name.strip() for name in (reader.fieldnames or [])]
            rows = [(reader.line_num, _stripped(row)) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(path, f"unreadable meta.csv ({error})") from None
    missing = [name for name in required if name not in columns]
    if missing:
        raise DataError(
            path, f"meta.csv lacks the columns {missing} (found {columns[:12]}); is it ';'-separated?"
        )
    return rows


def meta_entries(path: Path, required: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
    """(image_id, row) of every case meta.csv lists; DataError naming the line for an id that is not a
    plain name (ids become file names) and naming both lines for an id listed twice."""
    entries = []
    first_line: dict[str, int] = {}
    for line, row in read_meta(path, required):
        if not any(row.values()):
            continue  # an all-empty row, as a spreadsheet leaves behind (`;;;`)
        case_id = check_case_id(row.get("image_id", ""), path, f"line {line}: image_id")
        if case_id in first_line:
            lines = f"lines {first_line[case_id]} and {line}"
            raise DataError(path, f"{lines} both list image_id {case_id!r}; keep one of them")
        first_line[case_id] = line
        entries.append((case_id, row))
    return entries


def _totalseg_cases(
    root: Path, modality: Modality, image_name: str, split_required: bool
) -> list[SourceCase]:
    source = f"totalseg-{modality}"
    meta_path = root / META_FILE
    cases = []
    if meta_path.exists():
        entries = meta_entries(meta_path, ("image_id", "split") if split_required else ("image_id",))
    else:
        # Without meta.csv every subject folder holding the image is a case (split from a hash of its id).
        entries = [
            (check_case_id(folder.name, folder, "folder name"), {})
            for folder in sorted(root.iterdir())
            if (folder / image_name).exists()
        ]
    for case_id, row in entries:
        # A case listed in meta.csv but missing on disk still becomes a case: loading it fails with its path.
        folder = root / case_id
        split: Split = (
            check_split(row["split"], meta_path, case_id) if row.get("split") else hash_split(case_id)
        )
        masks = tuple(
            (folder / "segmentations" / f"{name}.nii.gz", fedgin_class)
            for name, fedgin_class in TOTALSEG_MASKS.items()
        )
        cases.append(
            SourceCase(
                case_id=case_id,
                source=source,
                modality=modality,
                domain=domain_name(modality, row.get("sequence")),
                split=split,
                image=folder / image_name,
                labels=MaskLabels(masks),
                protocol=row.get("protocol", ""),
                extra={key: value for key, value in row.items() if key in ("institute", "manufacturer")},
            )
        )
    return cases


@register("totalseg-ct")
def discover_totalseg_ct(
    root: Path, label_map: dict[int, int] | None = None, modality=None
) -> list[SourceCase]:
    """TotalSegmentator CT v2: meta.csv columns image_id and split are required when meta.csv exists."""
    return _totalseg_cases(root, "ct", "ct.nii.gz", split_required=True)


@register("totalseg-mri")
def discover_totalseg_mri(
    root: Path, label_map: dict[int, int] | None = None, modality=None
) -> list[SourceCase]:
    """TotalSegmentator MRI: meta.csv may lack `split`; then a hash of the id gives 80/10/10 splits."""
    return _totalseg_cases(root, "mri", "mri.nii.gz", split_required=False)
