"""Evaluation of segmentations: per-patient, per-organ metrics and their summaries."""

from fedgin.evaluation.metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
    OrganMetrics,
    dice,
    evaluate_case,
    hd95,
    normalized_surface_dice,
    summarize,
    surface_distances,
    write_csv,
)

__all__ = [
    "DEFAULT_NSD_TOLERANCE_MM",
    "OrganMetrics",
    "dice",
    "evaluate_case",
    "hd95",
    "normalized_surface_dice",
    "summarize",
    "surface_distances",
    "write_csv",
]
