"""Data augmentation for FedGIN training: GIN (Global Intensity Non-linear) augmentation and its previews."""

from fedgin.augment.affine import AffineParameters, RandAffine, apply_affine, sample_affine_parameters
from fedgin.augment.gin import GINParameters, RandGIN, RandGINd, apply_gin, sample_gin_parameters

__all__ = [
    "AffineParameters",
    "GINParameters",
    "RandAffine",
    "RandGIN",
    "RandGINd",
    "apply_affine",
    "apply_gin",
    "sample_affine_parameters",
    "sample_gin_parameters",
]
