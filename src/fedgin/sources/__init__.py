"""Real-data sources (TotalSegmentator CT/MRI, AMOS, nnU-Net folders): discovery, loading and validation."""

from fedgin.sources import amos, nnunet, totalseg  # noqa: F401  (registers the sources)
from fedgin.sources.base import (
    SOURCES,
    SPLITS,
    LabelSpec,
    LoadedCase,
    MappedLabels,
    MaskLabels,
    SourceCase,
    Split,
    discover,
    hash_split,
)

__all__ = [
    "SOURCES",
    "SPLITS",
    "LabelSpec",
    "LoadedCase",
    "MappedLabels",
    "MaskLabels",
    "SourceCase",
    "Split",
    "discover",
    "hash_split",
]
