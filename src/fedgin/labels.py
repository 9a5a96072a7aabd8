"""The fedgin label schema and how each data source's labels map onto it."""

from __future__ import annotations

import numpy as np

#: Class index -> name, in the fixed order of the schema (SPEC section 1).
LABEL_NAMES: dict[int, str] = {
    0: "background",
    1: "liver",
    2: "kidneys",
    3: "spleen",
    4: "pancreas",
    5: "gallbladder",
}
ORGANS: tuple[str, ...] = tuple(name for index, name in LABEL_NAMES.items() if index > 0)
NUM_CLASSES = len(LABEL_NAMES)
ORGAN_INDEX: dict[str, int] = {name: index for index, name in LABEL_NAMES.items()}

#: TotalSegmentator mask file stem -> fedgin class. Left and right kidney merge into one class.
TOTALSEG_MASKS: dict[str, int] = {
    "liver": 1,
    "kidney_left": 2,
    "kidney_right": 2,
    "spleen": 3,
    "pancreas": 4,
    "gallbladder": 5,
}

#: AMOS 2022 label values (dataset.json) and their names; the five organs of interest map onto the schema,
#: every other known structure becomes background.
AMOS_LABEL_NAMES: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gall bladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "postcava",
    10: "pancreas",
    11: "right adrenal gland",
    12: "left adrenal gland",
    13: "duodenum",
    14: "bladder",
    15: "prostate/uterus",
}
AMOS_TO_FEDGIN: dict[int, int] = {value: 0 for value in AMOS_LABEL_NAMES} | {
    1: 3,
    2: 2,
    3: 2,
    4: 5,
    6: 1,
    10: 4,
}


def lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """A dense lookup array for `mapping`; unknown values map to 255 so they can be detected."""
    table = np.full(max(mapping) + 1, 255, dtype=np.uint8)
    for source_value, target in mapping.items():
        table[source_value] = target
    return table


def remap_labels(label: np.ndarray, mapping: dict[int, int]) -> tuple[np.ndarray, list[int]]:
    """Map source label values onto the fedgin schema.

    Returns the remapped uint8 volume and the sorted list of values found in `label` that `mapping` does not
    know (the caller decides whether that is an error).
    """
    values = np.unique(label)
    unknown = [int(v) for v in values if int(v) not in mapping or v != int(v)]
    if unknown:
        return np.zeros(label.shape, np.uint8), unknown
    table = lookup_table(mapping)
    return table[label.astype(np.int64)], []
