"""GIN-IPA: the blend through the sampled mask, the masks, replay, the consistency term, training with it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from fedgin.augment import RandGIN, RandIPA, RandIPAd, apply_gin, apply_ipa, blend_mask, sample_ipa_parameters
from fedgin.augment.ipa import bspline_kernel
from fedgin.training.consistency import consistency_loss

SHAPES = [(3, 1, 40, 56), (2, 1, 12, 24, 20)]


@pytest.mark.parametrize("shape", SHAPES)
def test_the_views_are_the_masked_blend_of_two_gin_draws_and_a_third(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape) + 0.1
    ipa = RandIPA().set_random_state(seed=3)
    views = ipa(x)
    params = ipa.last_params
    assert params is not None
    mask = blend_mask(params, x.shape[2:])
    first, second, third = (apply_gin(x, gin) for gin in params.gins)
    torch.testing.assert_close(views.blended, mask * first + (1 - mask) * second, rtol=0, atol=1e-6)
    torch.testing.assert_close(views.complement, (1 - mask) * first + mask * second, rtol=0, atol=1e-6)
    assert torch.equal(views.plain, third)
    assert not torch.equal(first, second)  # two different networks
    assert views.stacked().shape == (3 * shape[0], *shape[1:])


@pytest.mark.parametrize("shape", SHAPES)
def test_masks_lie_in_zero_one_reach_both_ends_and_are_smooth(shape: tuple[int, ...]) -> None:
    for seed in range(5):
        params = sample_ipa_parameters(shape, RandGIN(), generator=torch.Generator().manual_seed(seed))
        mask = blend_mask(params, shape[2:])
        assert mask.shape == (shape[0], 1, *shape[2:]) and mask.dtype == torch.float32
        assert bool((mask >= 0).all()) and bool((mask <= 1).all())
        flat = mask.flatten(1)
        torch.testing.assert_close(flat.min(1).values, torch.zeros(shape[0]))
        torch.testing.assert_close(flat.max(1).values, torch.ones(shape[0]))
        # Smooth: neighbouring voxels differ far less than the mask's range (a B-spline field, not noise).
        assert float(mask.diff(dim=-1).abs().max()) < 0.25
        # One mask per sample.
        assert not torch.equal(mask[0], mask[1])


def test_replay_is_exact_and_seeds_reproduce() -> None:
    x = torch.rand(4, 1, 32, 32)
    ipa = RandIPA().set_random_state(seed=11)
    views = ipa(x)
    replayed = apply_ipa(x, ipa.last_params)
    for a, b in zip(views, replayed, strict=True):
        assert torch.equal(a, b)
    again = RandIPA().set_random_state(seed=11)(x)
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    other = RandIPA().set_random_state(seed=12)(x)
    assert not torch.equal(views.blended, other.blended)
    from_generator = [RandIPA()(x, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(from_generator[0].blended, from_generator[1].blended)
    assert not torch.equal(ipa(x).blended, views.blended)  # a new draw on every call


def test_prob_zero_blends_nothing() -> None:
    x = torch.rand(2, 1, 32, 32)
    ipa = RandIPA(prob=0.0).set_random_state(seed=0)
    views = ipa(x)
    assert torch.equal(blend_mask(ipa.last_params, x.shape[2:]), torch.ones(2, 1, 32, 32))
    assert torch.equal(views.blended, apply_gin(x, ipa.last_params.gins[0]))


def test_the_bspline_kernel_is_a_partition_of_unity() -> None:
    for order in (1, 2, 3):
        kernel = bspline_kernel([5], order)[0, 0]
        assert kernel.numel() == 5 * (order + 1) - order
        # Taps 5 apart sum to 1: interpolating equal control points gives a flat field.
        for offset in range(5):
            assert float(kernel[offset::5].sum()) == pytest.approx(1.0)


def test_dict_form_adds_the_other_views_and_keeps_other_keys() -> None:
    data = {"image": torch.rand(2, 1, 32, 32), "label": torch.zeros(2, 1, 32, 32)}
    out = RandIPAd(keys="image").set_random_state(seed=1)(data)
    assert set(out) == {"image", "image_complement", "image_plain", "label"}
    assert torch.equal(out["label"], data["label"])
    expected = RandIPA().set_random_state(seed=1)(data["image"])
    assert torch.equal(out["image"], expected.blended) and torch.equal(out["image_plain"], expected.plain)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="order"):
        RandIPA(order=4)
    with pytest.raises(ValueError, match="grid"):
        RandIPA(grid=0)
    with pytest.raises(ValueError, match="batch"):
        RandIPA()(torch.rand(1, 32, 32))


def test_consistency_is_zero_for_identical_views_and_positive_otherwise() -> None:
    logits = torch.randn(2, 6, 16, 16)
    assert float(consistency_loss([logits, logits.clone(), logits.clone()])) == pytest.approx(0.0, abs=1e-7)
    other = torch.randn(2, 6, 16, 16)
    loss = consistency_loss([logits, other, logits])
    assert float(loss) > 0
    # It is KL(p_mean || p_v) averaged over views and elements, as the authors' KLDivLoss() computes it.
    probs = [logits.softmax(1), other.softmax(1), logits.softmax(1)]
    mean = sum(probs) / 3
    expected = torch.stack([(mean * (mean.log() - p.log())).mean() for p in probs]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="two views"):
        consistency_loss([logits])


def _config(caches: dict[str, Path], output: Path, ipa: bool):
    from fedgin.config import DataSpec, GINConfig, ModelConfig, RunConfig

    return RunConfig(
        name="ipa",
        seed=7,
        output=output,
        data={"train": [DataSpec(cache=caches["ct"]), DataSpec(cache=caches["t2"])]},
        model=ModelConfig(channels=(4, 8), strides=(2,), num_res_units=1),
        gin=GINConfig(ipa=ipa),
        train={"steps": 6, "batch_size": 4, "val_interval": 3, "checkpoint_interval": 2, "device": "cpu"},
    )


def test_training_with_ipa_logs_the_consistency_term_and_resumes_exactly(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    from fedgin.checkpoints import load_checkpoint
    from fedgin.training import run_training

    plain = run_training(_config(caches, tmp_path / "gin", ipa=False))
    straight = run_training(_config(caches, tmp_path / "ipa", ipa=True))
    with open(straight.run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(float(row["consistency"]) > 0 for row in rows)
    key = "model.0.conv.unit0.conv.weight"
    last = load_checkpoint(straight.run_dir / "checkpoints/last.pt")["model"]
    assert not torch.equal(last[key], load_checkpoint(plain.run_dir / "checkpoints/last.pt")["model"][key])
    interrupted = _config(caches, tmp_path / "ipa-resumed", ipa=True)
    run_training(interrupted, stop_after=3)
    resumed = run_training(interrupted, resume=True)
    again = load_checkpoint(resumed.run_dir / "checkpoints/last.pt")["model"]
    for name, value in last.items():
        torch.testing.assert_close(value, again[name], rtol=0, atol=0, msg=name)


def test_gin_preview_draws_the_ipa_views(caches: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedgin.cli import app

    out = tmp_path / "ipa.png"
    result = CliRunner().invoke(app, ["gin-preview", "--ipa", "--data", str(caches["t2"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 5000


def test_dict_forms_refuse_keys_of_different_shapes() -> None:
    from fedgin.augment import RandGINd

    data = {"a": torch.rand(2, 1, 32, 32), "b": torch.rand(2, 1, 16, 16)}
    for transform in (RandGINd(keys=["a", "b"]), RandIPAd(keys=["a", "b"])):
        with pytest.raises(ValueError, match=f"{type(transform).__name__} keys must share a shape"):
            transform(data)
