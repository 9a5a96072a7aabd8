"""Data augmentation for FedGIN training: GIN (Global Intensity Non-linear) augmentation, IPA and previews."""

from fedgin.augment.affine import AffineParameters, RandAffine, apply_affine, sample_affine_parameters
from fedgin.augment.gin import GINParameters, RandGIN, RandGINd, apply_gin, sample_gin_parameters
from fedgin.augment.ipa import (
    IPAParameters,
    IPAViews,
    RandIPA,
    RandIPAd,
    apply_ipa,
    blend_mask,
    sample_ipa_parameters,
)

__all__ = [
    "AffineParameters",
    "GINParameters",
    "IPAParameters",
    "IPAViews",
    "RandAffine",
    "RandGIN",
    "RandGINd",
    "RandIPA",
    "RandIPAd",
    "apply_affine",
    "apply_gin",
    "apply_ipa",
    "blend_mask",
    "sample_affine_parameters",
    "sample_gin_parameters",
    "sample_ipa_parameters",
]
