"""Data augmentation for FedGIN training: GIN (Global Intensity Non-linear) augmentation and its previews."""

from fedgin.augment.gin import GINParameters, RandGIN, RandGINd, apply_gin, sample_gin_parameters

__all__ = ["GINParameters", "RandGIN", "RandGINd", "apply_gin", "sample_gin_parameters"]
