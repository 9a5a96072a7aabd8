"""Tests of the GIN augmentation: the method as published, randomness, replay and the MONAI forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from fedgin.augment import GINParameters, RandGIN, RandGINd, apply_gin, sample_gin_parameters
from fedgin.augment.preview import save_gin_preview

SHAPES_2D_3D = [(4, 1, 24, 20), (3, 1, 8, 12, 10)]


def smooth_batch(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A batch of smooth positive images: GIN is meant for images, not white noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((shape[0], shape[1], *[max(2, s // 4) for s in shape[2:]]), generator=gen)
    mode = "bilinear" if len(shape) == 4 else "trilinear"
    return F.interpolate(coarse, size=shape[2:], mode=mode, align_corners=False).to(dtype) + 0.1


def per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.double().reshape(x.shape[0], -1), dim=1)


def reference_gin(x: torch.Tensor, params: GINParameters) -> torch.Tensor:
    """Sample by sample, with ordinary (ungrouped) convolutions: what the grouped conv must reproduce."""
    conv = F.conv2d if params.spatial_dims == 2 else F.conv3d
    outputs = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].double()
        if not bool(params.applied[b]):
            outputs.append(xb)
            continue
        net = 0 if params.shared_network else b
        h = xb
        for i, (w, bias, k) in enumerate(
            zip(params.weights, params.biases, params.kernel_sizes, strict=True)
        ):
            h = conv(h, w[net].double(), bias[net].double(), padding=k // 2)
            if i < params.n_layers - 1:
                h = F.leaky_relu(h, 0.01)
        alpha = float(params.alphas[b])
        mixed = alpha * h + (1 - alpha) * xb
        outputs.append(mixed * xb.norm() / (mixed.norm() + 1e-5))
    return torch.cat(outputs).to(x.dtype)


@pytest.mark.parametrize("shape", SHAPES_2D_3D)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_keeps_shape_dtype_device_and_each_sample_norm(
    shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    x = smooth_batch(shape, dtype=dtype)
    out = RandGIN().set_random_state(seed=1)(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.isfinite(out).all()
    torch.testing.assert_close(per_sample_norm(out), per_sample_norm(x), rtol=1e-4, atol=0)
    assert not torch.allclose(out, x)


@pytest.mark.parametrize("shape", SHAPES_2D_3D)
@pytest.mark.parametrize("shared", [False, True])
def test_grouped_convolution_matches_a_per_sample_reference(shape: tuple[int, ...], shared: bool) -> None:
    x = smooth_batch(shape, seed=3, dtype=torch.float64)
    gin = RandGIN(shared_network=shared).set_random_state(seed=5)
    out = gin(x)
    assert gin.last_params is not None
    torch.testing.assert_close(out, reference_gin(x, gin.last_params), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_runs_and_keeps_dtype(dtype: torch.dtype) -> None:
    x = smooth_batch((2, 1, 16, 16)).to(dtype)
    out = RandGIN().set_random_state(seed=0)(x)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.isfinite(out.float()).all()
    torch.testing.assert_close(per_sample_norm(out), per_sample_norm(x), rtol=2e-2, atol=0)


def test_runs_under_autocast_and_matches_float32() -> None:
    x = smooth_batch((2, 1, 16, 16))
    gin = RandGIN().set_random_state(seed=0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = gin(x)
    # Autocast is switched off inside: the float32 input is computed and returned in float32.
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, apply_gin(x, gin.last_params))


def test_identical_samples_get_different_networks() -> None:
    x = smooth_batch((1, 1, 16, 16)).expand(4, 1, 16, 16).contiguous()
    gin = RandGIN(alpha_range=(1.0, 1.0)).set_random_state(seed=0)
    out = gin(x)
    assert gin.last_params.weights[0].shape[0] == 4  # one network per sample
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.allclose(out[a], out[b])


def test_shared_network_gives_identical_outputs_for_identical_samples_and_alpha() -> None:
    x = smooth_batch((1, 1, 16, 16)).expand(4, 1, 16, 16).contiguous()
    gin = RandGIN(shared_network=True, alpha_range=(0.7, 0.7)).set_random_state(seed=0)
    out = gin(x)
    params = gin.last_params
    assert params.shared_network and all(w.shape[0] == 1 for w in params.weights)
    for b in range(1, 4):
        torch.testing.assert_close(out[b], out[0], rtol=0, atol=0)


def test_alpha_is_drawn_per_sample_also_with_a_shared_network() -> None:
    params = sample_gin_parameters(
        (16, 1, 8, 8), shared_network=True, generator=torch.Generator().manual_seed(0)
    )
    assert params.alphas.shape == (16,) and params.alphas.unique().numel() == 16
    assert bool(((params.alphas >= 0) & (params.alphas < 1)).all())


def test_same_seed_same_output_different_seed_different_output() -> None:
    x = smooth_batch((3, 1, 16, 16))
    first = RandGIN().set_random_state(seed=7)(x)
    again = RandGIN().set_random_state(seed=7)(x)
    other = RandGIN().set_random_state(seed=8)(x)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    # An explicit torch.Generator is the other documented source of randomness.
    by_gen = RandGIN()(x, generator=torch.Generator().manual_seed(11))
    by_gen_again = RandGIN()(x, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(by_gen, by_gen_again, rtol=0, atol=0)


def test_a_new_network_is_drawn_on_every_call() -> None:
    x = smooth_batch((2, 1, 16, 16))
    gin = RandGIN().set_random_state(seed=0)
    assert not torch.allclose(gin(x), gin(x))


def test_prob_zero_is_the_identity() -> None:
    x = smooth_batch((3, 1, 16, 16))
    out = RandGIN(prob=0.0).set_random_state(seed=0)(x)
    torch.testing.assert_close(out, x, rtol=0, atol=0)


def test_prob_applies_per_sample_and_unselected_samples_are_unchanged() -> None:
    x = smooth_batch((32, 1, 8, 8))
    gin = RandGIN(prob=0.5).set_random_state(seed=2)
    out = gin(x)
    applied = gin.last_params.applied
    assert 0 < int(applied.sum()) < 32
    torch.testing.assert_close(out[~applied], x[~applied], rtol=0, atol=0)
    changed = (out - x).reshape(32, -1).abs().amax(dim=1) > 1e-6
    assert torch.equal(changed, applied)
    torch.testing.assert_close(out, reference_gin(x, gin.last_params), rtol=1e-5, atol=1e-5)


def test_alpha_zero_returns_the_input() -> None:
    x = smooth_batch((2, 1, 16, 16))
    out = RandGIN(alpha_range=(0.0, 0.0)).set_random_state(seed=0)(x)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES_2D_3D)
def test_replaying_sampled_parameters_reproduces_the_output_exactly(shape: tuple[int, ...]) -> None:
    x = smooth_batch(shape)
    gin = RandGIN(prob=0.8).set_random_state(seed=4)
    out = gin(x)
    params = gin.last_params
    assert torch.equal(apply_gin(x, params), out)
    # The explicit two-step TorchIO style: sample, then apply.
    sampler = RandGIN(prob=0.8).set_random_state(seed=4)
    sampled = sampler.sample_parameters(x.shape, x.device)
    assert torch.equal(apply_gin(x, sampled), out)
    assert torch.equal(gin(x, randomize=False), out)


def test_no_gradient_flows_through_the_augmentation() -> None:
    x = smooth_batch((2, 1, 16, 16)).requires_grad_(True)
    out = RandGIN().set_random_state(seed=0)(x)
    assert not out.requires_grad and out.grad_fn is None


def test_parameters_are_standard_normal_without_fan_in_scaling() -> None:
    params = sample_gin_parameters((256, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    values = torch.cat([w.flatten() for w in params.weights] + [b.flatten() for b in params.biases])
    assert values.numel() > 5000
    assert abs(float(values.mean())) < 0.05 and abs(float(values.std()) - 1.0) < 0.05
    assert [tuple(w.shape[1:3]) for w in params.weights] == [(2, 1), (2, 2), (2, 2), (1, 2)]


def test_kernel_sizes_are_drawn_from_one_and_three() -> None:
    gen = torch.Generator().manual_seed(0)
    drawn = [k for _ in range(50) for k in sample_gin_parameters((1, 1, 8, 8), generator=gen).kernel_sizes]
    assert set(drawn) == {1, 3}
    params = sample_gin_parameters((1, 1, 8, 8, 8), kernel_sizes=(3,), generator=gen)
    assert all(w.shape[-3:] == (3, 3, 3) for w in params.weights)


def test_configurable_depth_and_width() -> None:
    params = sample_gin_parameters((2, 3, 8, 8), n_layers=2, interm_channels=5)
    assert [tuple(w.shape[1:3]) for w in params.weights] == [(5, 3), (3, 5)]
    x = smooth_batch((2, 3, 8, 8))
    assert apply_gin(x, params).shape == x.shape


def test_pointwise_gin_keeps_regions_constant() -> None:
    """Weak anatomy check: with 1x1 kernels GIN is an intensity map, so each region stays uniform."""
    regions = torch.zeros(2, 1, 16, 16)
    regions[:, :, 4:12, 4:8] = 1.0
    regions[:, :, 4:12, 8:12] = 2.0
    x = regions + 0.5
    out = RandGIN(kernel_sizes=(1,)).set_random_state(seed=0)(x)
    for value in (0.0, 1.0, 2.0):
        inside = out[regions == value].reshape(2, -1)
        torch.testing.assert_close(inside, inside[:, :1].expand_as(inside), rtol=1e-5, atol=1e-5)


def test_dict_form_changes_only_the_listed_keys() -> None:
    image = smooth_batch((2, 1, 16, 16))
    second = smooth_batch((2, 1, 16, 16), seed=9)
    label = (image > 0.5).float()
    transform = RandGINd(keys=["image", "second"]).set_random_state(seed=0)
    out = transform({"image": image, "second": second, "label": label, "name": "case"})
    assert out["label"] is label and out["name"] == "case"
    assert not torch.allclose(out["image"], image) and not torch.allclose(out["second"], second)
    # All listed keys see the same drawn networks.
    assert torch.equal(out["second"], apply_gin(second, transform.last_params))
    replay = RandGINd(keys=["image", "second"]).set_random_state(seed=0)
    assert torch.equal(replay({"image": image, "second": second})["image"], out["image"])


def test_dict_form_with_prob_zero_is_the_identity() -> None:
    image = smooth_batch((2, 1, 16, 16))
    out = RandGINd(keys="image", prob=0.0)({"image": image})
    torch.testing.assert_close(out["image"], image, rtol=0, atol=0)


def test_meta_tensor_input_stays_a_meta_tensor() -> None:
    x = MetaTensor(smooth_batch((2, 1, 16, 16)))
    out = RandGIN().set_random_state(seed=0)(x)
    assert isinstance(out, MetaTensor) and out.shape == x.shape


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(TypeError):
        RandGIN()(torch.ones(2, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError):
        RandGIN()(torch.ones(1, 8, 8))
    with pytest.raises(ValueError):
        RandGIN(kernel_sizes=(2,))
    params = sample_gin_parameters((2, 1, 8, 8))
    with pytest.raises(ValueError):
        apply_gin(torch.ones(3, 1, 8, 8), params)


def test_preview_writes_a_png(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:48, 0:48]
    disc = ((yy - 24) ** 2 + (xx - 20) ** 2 < 150).astype(np.float32)
    images = {"CT": 1.0 + disc + 0.02 * xx, "MRI T2": 2.0 - disc}
    out = save_gin_preview(images, tmp_path / "preview" / "gin.png", draws=3, seed=0)
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("shape", [(1, 24, 20), (2, 8, 12, 10)])
def test_one_channel_first_sample_is_a_batch_of_one(shape: tuple[int, ...]) -> None:
    sample = smooth_batch((1, *shape))[0]
    out = RandGIN(batched=False).set_random_state(seed=3)(sample)
    batched = RandGIN().set_random_state(seed=3)(sample[None])
    assert out.shape == sample.shape and torch.equal(out, batched[0])


def test_numpy_in_numpy_out_with_the_same_values() -> None:
    sample = smooth_batch((1, 1, 16, 16))[0]
    out = RandGIN(batched=False).set_random_state(seed=0)(sample.numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (1, 16, 16)
    expected = RandGIN(batched=False).set_random_state(seed=0)(sample)
    np.testing.assert_array_equal(out, expected.numpy())
    batch = smooth_batch((2, 1, 16, 16), dtype=torch.float64)
    out_batch = RandGIN().set_random_state(seed=0)(batch.numpy())
    assert isinstance(out_batch, np.ndarray) and out_batch.dtype == np.float64
    assert np.array_equal(out_batch, RandGIN().set_random_state(seed=0)(batch).numpy())


def test_a_meta_tensor_sample_keeps_its_metadata() -> None:
    affine = torch.diag(torch.tensor([2.0, 2.0, 5.0, 1.0], dtype=torch.float64))
    sample = MetaTensor(smooth_batch((1, 1, 6, 16, 16))[0], affine=affine)
    out = RandGIN(batched=False).set_random_state(seed=0)(sample)
    assert isinstance(out, MetaTensor) and out.shape == sample.shape
    torch.testing.assert_close(out.affine, affine)
    assert not torch.allclose(out.as_tensor(), sample.as_tensor())


def test_a_sample_of_the_wrong_rank_is_rejected() -> None:
    with pytest.raises(ValueError, match="channel-first sample"):
        RandGIN(batched=False)(torch.ones(8, 8))
    with pytest.raises(ValueError, match="channel-first sample"):
        RandGIN(batched=False)(torch.ones(1, 1, 1, 8, 8))


def test_monai_backend_and_a_seeded_compose_of_the_dict_form() -> None:
    from monai.transforms import Compose
    from monai.utils import TransformBackends

    assert RandGIN.backend == RandGINd.backend == [TransformBackends.TORCH]
    image = smooth_batch((1, 1, 16, 16))[0].numpy()
    label = (image > 0.5).astype(np.uint8)

    def pipeline() -> Compose:
        return Compose([RandGINd(keys="image", batched=False)]).set_random_state(seed=4)

    out = pipeline()({"image": image, "label": label})
    assert isinstance(out["image"], np.ndarray) and out["image"].shape == image.shape
    assert out["label"] is label and not np.allclose(out["image"], image)
    np.testing.assert_array_equal(pipeline()({"image": image, "label": label})["image"], out["image"])


def test_the_docstring_examples_run() -> None:
    import doctest

    import fedgin.augment.gin

    result = doctest.testmod(fedgin.augment.gin, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0


def test_gin_config_defaults_are_rand_gin_defaults_and_are_validated() -> None:
    import inspect

    from fedgin.config import GINConfig

    ipa = {"ipa", "ipa_grid", "ipa_downscale", "ipa_order", "consistency_weight"}  # RandIPA's and the loss's
    settings = GINConfig().model_dump(exclude={"enabled", *ipa})
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(RandGIN).parameters.items()
        if name in settings
    }
    assert defaults == settings and set(settings) <= set(inspect.signature(RandGIN).parameters)
    with pytest.raises(ValueError, match="odd"):
        GINConfig(kernel_sizes=(1, 2))
    with pytest.raises(ValueError, match="alpha_range"):
        GINConfig(alpha_range=(0.8, 0.2))
    with pytest.raises(ValueError, match="alpha_range"):
        GINConfig(alpha_range=(0.0, 1.5))


def test_gin_config_reaches_the_trainer(caches: dict[str, Path], tmp_path: Path) -> None:
    from fedgin.config import DataSpec, GINConfig, ModelConfig, RunConfig
    from fedgin.training.data import build_train_slices
    from fedgin.training.trainer import LocalTrainer

    config = RunConfig(
        name="gin",
        output=tmp_path / "run",
        data={"train": [DataSpec(cache=caches["ct"])]},
        model=ModelConfig(channels=(4, 8), strides=(2,), num_res_units=1),
        gin=GINConfig(kernel_sizes=(3, 5), alpha_range=(0.2, 0.4), n_layers=3, shared_network=True),
        train={"device": "cpu"},
    )
    gin = LocalTrainer(config, build_train_slices(config)).gin
    assert gin is not None
    assert (gin.kernel_sizes, gin.alpha_range) == ((3, 5), (0.2, 0.4))
    assert gin.n_layers == 3 and gin.shared_network
