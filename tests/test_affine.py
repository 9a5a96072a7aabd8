"""In-plane affine augmentation: its math on exact cases, replay, labels kept as labels, 2D and 3D."""

from __future__ import annotations

import math

import pytest
import torch

from fedgin.augment import AffineParameters, RandAffine, apply_affine


def params(
    angle: float = 0.0, zoom: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)
) -> AffineParameters:
    return AffineParameters(
        torch.tensor([angle]), torch.tensor([zoom]), torch.tensor([shift]), torch.tensor([True])
    )


def test_quarter_turn_and_whole_pixel_shift_are_exact() -> None:
    image = torch.arange(36.0).reshape(1, 1, 6, 6)
    label = (image.long() % 6).clone()
    # A quarter turn maps pixel centres onto pixel centres: the output is the input rotated by 90 degrees.
    turned, turned_label = apply_affine(image, label, params(angle=math.pi / 2))
    # x = R(a) p: output (row i, column j) reads the input at the quarter-turned position (torch.rot90, k=1).
    assert torch.allclose(turned, torch.rot90(image, k=1, dims=(-2, -1)), atol=1e-4)
    assert torch.equal(turned_label, turned.round().long() % 6)
    # x = p + t: a shift of 2/6 of the normalised width (one pixel) reads the next column.
    shifted, _ = apply_affine(image, label, params(shift=(2 / 6, 0.0)))
    assert torch.allclose(shifted[..., :-1], image[..., 1:], atol=1e-5)
    same, same_label = apply_affine(image, label, params())
    assert torch.allclose(same, image, atol=1e-5) and torch.equal(same_label, label)


def test_replay_prob_and_labels() -> None:
    generator = torch.Generator().manual_seed(3)
    image = torch.randn(8, 1, 32, 32, generator=generator)
    label = torch.randint(0, 6, (8, 1, 32, 32), generator=generator)
    augment = RandAffine(prob=1.0, rotate_deg=20, scale=0.2, translate=0.1)
    first = augment(image, label, generator=torch.Generator().manual_seed(11))
    again = augment(image, label, generator=torch.Generator().manual_seed(11))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    sampled = augment.sample(8, torch.Generator().manual_seed(11))
    replayed = apply_affine(image, label, sampled)
    assert torch.equal(replayed[0], first[0]) and torch.equal(replayed[1], first[1])
    assert sampled.angles.abs().max() <= math.radians(20) and (sampled.zooms - 1).abs().max() <= 0.2
    # Labels stay labels (nearest neighbour, background outside), images keep their dtype.
    assert first[1].dtype == torch.int64 and set(first[1].unique().tolist()) <= set(range(6))
    assert first[0].dtype == image.dtype and not torch.equal(first[0], image)
    untouched = RandAffine(prob=0.0)(image, label, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(untouched[0], image, atol=1e-5) and torch.equal(untouched[1], label)
    with pytest.raises(ValueError, match="batch of 8"):
        apply_affine(image, label, augment.sample(4))


def test_3d_patches_move_every_axial_slice_alike() -> None:
    generator = torch.Generator().manual_seed(5)
    volume = torch.randn(2, 1, 4, 16, 16, generator=generator)
    label = torch.randint(0, 6, (2, 1, 4, 16, 16), generator=generator)
    sampled = RandAffine(rotate_deg=30).sample(2, torch.Generator().manual_seed(2))
    moved, moved_label = apply_affine(volume, label, sampled)
    for z in range(4):
        slice_image, slice_label = apply_affine(volume[:, :, z], label[:, :, z], sampled)
        assert torch.allclose(moved[:, :, z], slice_image, atol=1e-6)
        assert torch.equal(moved_label[:, :, z], slice_label)
