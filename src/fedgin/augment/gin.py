"""GIN (Global Intensity Non-linear) augmentation: a freshly drawn random shallow conv network per sample."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = [
    "GINParameters",
    "RandGIN",
    "RandGINd",
    "SharedDrawDict",
    "apply_gin",
    "sample_gin_parameters",
]

#: Slope of the LeakyReLU after every layer but the last (Ouyang et al. use torch's default, 0.01).
LEAKY_SLOPE = 0.01
#: Added to the mix's norm before dividing, as in the authors' code.
NORM_EPS = 1e-5
#: Upper bound (exclusive) of the seeds drawn from a MONAI RandomState for the torch generator.
_MAX_TORCH_SEED = 2**31 - 1


@dataclass(frozen=True)
class GINParameters:
    """Everything random about one GIN call, so that `apply_gin(x, params)` is deterministic.

    Attributes:
        spatial_dims: 2 for (B, C, H, W) inputs, 3 for (B, C, D, H, W).
        kernel_sizes: one kernel size per layer, shared by the whole batch (one grouped conv per layer).
        weights: one tensor per layer of shape (G, out_ch, in_ch, k, k[, k]) with G = batch size for
            per-sample networks and G = 1 when `shared_network` is True.
        biases: one tensor per layer of shape (G, out_ch).
        alphas: (B,) mixing weights, alpha * GIN(x) + (1 - alpha) * x; always drawn per sample.
        applied: (B,) bool, which samples are augmented; the others are returned unchanged.
        shared_network: True for the authors' variant (one network for the whole batch).
    """

    spatial_dims: int
    kernel_sizes: tuple[int, ...]
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    alphas: torch.Tensor
    applied: torch.Tensor
    shared_network: bool

    @property
    def batch_size(self) -> int:
        return int(self.alphas.shape[0])

    @property
    def n_layers(self) -> int:
        return len(self.kernel_sizes)

    def to(self, device: torch.device | str) -> GINParameters:
        """The same parameters on another device (for replaying a CPU-recorded draw on a GPU and back)."""
        return GINParameters(
            spatial_dims=self.spatial_dims,
            kernel_sizes=self.kernel_sizes,
            weights=tuple(w.to(device) for w in self.weights),
            biases=tuple(b.to(device) for b in self.biases),
            alphas=self.alphas.to(device),
            applied=self.applied.to(device),
            shared_network=self.shared_network,
        )


def seeded_generator(state: np.random.RandomState) -> torch.Generator:
    """A CPU torch.Generator seeded from a MONAI RandomState: how the random transforms draw their tensors."""
    return torch.Generator().manual_seed(int(state.randint(0, _MAX_TORCH_SEED)))


def _layer_channels(channels: int, n_layers: int, interm_channels: int) -> list[tuple[int, int]]:
    """(in_ch, out_ch) per layer: channels -> interm -> ... -> interm -> channels."""
    widths = [channels] + [interm_channels] * (n_layers - 1) + [channels]
    return list(itertools.pairwise(widths))


def sample_gin_parameters(
    x_shape: Sequence[int],
    *,
    prob: float = 1.0,
    n_layers: int = 4,
    interm_channels: int = 2,
    kernel_sizes: Sequence[int] = (1, 3),
    alpha_range: tuple[float, float] = (0.0, 1.0),
    shared_network: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> GINParameters:
    """Draw the random parameters of one GIN call for a batch of shape (B, C, *spatial).

    All draws use `generator` on the generator's own device (CPU for a default `torch.Generator()`), then the
    parameters are moved to `device` in one go. Drawing on the CPU makes a seed give the same network on CPU
    and GPU; pass a CUDA generator to draw on the GPU instead.
    """
    if len(x_shape) not in (4, 5):
        raise ValueError(f"GIN expects a batch (B, C, H, W) or (B, C, D, H, W); got shape {tuple(x_shape)}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be at least 1, got {n_layers}")
    if interm_channels < 1:
        raise ValueError(f"interm_channels must be at least 1, got {interm_channels}")
    if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
        # Even kernels with padding k // 2 would change the spatial size.
        raise ValueError(f"kernel_sizes must be odd positive integers, got {tuple(kernel_sizes)}")
    low, high = alpha_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"alpha_range must satisfy 0 <= low <= high <= 1, got {alpha_range}")

    batch, channels, *spatial = (int(s) for s in x_shape)
    spatial_dims = len(spatial)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    draw = {"generator": generator, "device": gen_device}

    kernel_choice = torch.randint(len(kernel_sizes), (n_layers,), **draw)
    chosen_kernels = tuple(int(kernel_sizes[i]) for i in kernel_choice.tolist())
    n_networks = 1 if shared_network else batch
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor] = []
    for (in_ch, out_ch), k in zip(
        _layer_channels(channels, n_layers, interm_channels), chosen_kernels, strict=True
    ):
        # N(0, 1) weights and biases without fan-in scaling, as in the paper: the scale is undone by the
        # final norm rescaling, and the large random gains are what make the intensity remapping strong.
        weights.append(torch.randn((n_networks, out_ch, in_ch, *([k] * spatial_dims)), **draw))
        biases.append(torch.randn((n_networks, out_ch), **draw))
    alphas = low + (high - low) * torch.rand((batch,), **draw)
    applied = torch.rand((batch,), **draw) < prob

    params = GINParameters(
        spatial_dims=spatial_dims,
        kernel_sizes=chosen_kernels,
        weights=tuple(weights),
        biases=tuple(biases),
        alphas=alphas,
        applied=applied,
        shared_network=shared_network,
    )
    return params if device is None else params.to(device)


def _check_compatible(x: torch.Tensor, params: GINParameters) -> None:
    if x.ndim != params.spatial_dims + 2:
        raise ValueError(
            f"GIN parameters are for {params.spatial_dims}D batches, got an input of shape {tuple(x.shape)}"
        )
    if x.shape[0] != params.batch_size:
        raise ValueError(f"GIN parameters are for a batch of {params.batch_size}, got {x.shape[0]} samples")
    if params.n_layers and params.weights[0].shape[2] != x.shape[1]:
        raise ValueError(f"GIN parameters are for {params.weights[0].shape[2]} channels, got {x.shape[1]}")
    if not x.is_floating_point():
        raise TypeError(f"GIN needs a floating point image, got dtype {x.dtype}")


def _pointwise_layer(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A per-sample 1 x 1 layer as a batched matmul: h (1, n*in, *spatial), w (n, out, in, 1...), b (n, out).

    With 1-2 channels per sample a grouped 1 x 1 convolution is mostly call overhead (oneDNN: ~0.3 ms for a
    batch of eight 128 x 128 slices); `baddbmm` does the same arithmetic in ~0.06 ms, on the GPU too.
    """
    n, out_ch, in_ch = w.shape[:3]
    spatial = h.shape[2:]
    out = torch.baddbmm(b.unsqueeze(-1), w.reshape(n, out_ch, in_ch), h.reshape(n, in_ch, -1))
    return out.reshape(1, n * out_ch, *spatial)


def _random_network(x: torch.Tensor, params: GINParameters, selected: torch.Tensor | None) -> torch.Tensor:
    """Run the random conv stack on `x` (the `selected` samples, None: all), one call per layer."""
    conv = F.conv2d if params.spatial_dims == 2 else F.conv3d
    n, _, *spatial = x.shape
    last = params.n_layers - 1
    if params.shared_network:
        h = x
        for i, (w, b, k) in enumerate(zip(params.weights, params.biases, params.kernel_sizes, strict=True)):
            h = conv(h, w[0].to(x.dtype), b[0].to(x.dtype), padding=k // 2)
            if i < last:
                h = F.leaky_relu(h, LEAKY_SLOPE, inplace=True)
        return h
    # Per-sample networks: fold the batch into channels, (B, C, ...) -> (1, B*C, ...), and use groups=B so
    # that sample b only sees its own filters.
    h = x.reshape(1, -1, *spatial)
    on_cpu = h.device.type == "cpu"
    channels_last = torch.channels_last if h.ndim == 4 else torch.channels_last_3d
    for i, (w, b, k) in enumerate(zip(params.weights, params.biases, params.kernel_sizes, strict=True)):
        if selected is not None:
            w, b = w[selected], b[selected]
        w, b = w.to(x.dtype), b.to(x.dtype)
        if k == 1:
            h = _pointwise_layer(h, w, b)
        else:
            if on_cpu:
                # oneDNN's grouped conv with 1-2 channels per group is ~3x faster channels-last (measured,
                # torch 2.13 CPU); the 1 x 1 layers above take either layout.
                h = h.contiguous(memory_format=channels_last)
            h = conv(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), padding=k // 2, groups=n)
        if i < last:
            h = F.leaky_relu(h, LEAKY_SLOPE, inplace=True)
    return h.contiguous().reshape(n, -1, *spatial)


def apply_gin(x: torch.Tensor, params: GINParameters) -> torch.Tensor:
    """Apply a drawn GIN to a batch (B, C, H, W) or (B, C, D, H, W); deterministic given `params`.

    out = alpha * GIN(x) + (1 - alpha) * x, rescaled per sample to the Frobenius norm of that sample's input:
    out = mix * ||x|| / (||mix|| + 1e-5). Samples with `params.applied` False are returned unchanged.
    The result has the input's shape, dtype and device. It carries no autograd history (GIN is applied to
    data, nothing is learned). Half precision inputs are computed in float32 and cast back.
    """
    _check_compatible(x, params)
    if not bool(params.applied.any()):
        return x.detach().clone()
    params = params.to(x.device)
    raw = x.as_tensor() if hasattr(x, "as_tensor") else x  # MONAI MetaTensor -> plain tensor for the math
    compute_dtype = torch.float64 if raw.dtype == torch.float64 else torch.float32
    # Autocast would otherwise run the convs in half precision and lose the norm rescaling's accuracy.
    with torch.no_grad(), torch.autocast(device_type=raw.device.type, enabled=False):
        xf = raw.detach().to(compute_dtype)
        selected = params.applied
        all_selected = bool(selected.all())
        x_sel = xf if all_selected else xf[selected]
        n = x_sel.shape[0]
        gin_out = _random_network(x_sel, params, None if all_selected else selected)
        alphas = params.alphas if all_selected else params.alphas[selected]
        alpha = alphas.to(compute_dtype).reshape(n, *([1] * (x_sel.ndim - 1)))
        mixed = torch.lerp(x_sel, gin_out, alpha)  # alpha * GIN(x) + (1 - alpha) * x in one pass
        in_norm = torch.linalg.vector_norm(x_sel.reshape(n, -1), dim=1)
        mix_norm = torch.linalg.vector_norm(mixed.reshape(n, -1), dim=1)
        mixed.mul_((in_norm / (mix_norm + NORM_EPS)).reshape_as(alpha))
        if all_selected:
            out = mixed
        else:
            out = xf.clone()
            out[selected] = mixed
        out = out.to(raw.dtype)
    # Give a MetaTensor input its metadata back; a plain tensor is already in the right form.
    return out if raw is x else convert_to_dst_type(out, x)[0]


class RandGIN(RandomizableTransform):
    """MONAI-style random GIN on a batch (B, C, H, W) / (B, C, D, H, W), or on one channel-first sample.

    Batches (the default) are what the training loop augments on its device, one network per sample.
    With `batched=False` the input is one sample (C, H, W) or (C, D, H, W), as MONAI array transforms take
    it (inside a `Compose` on the data loader, say). A numpy array, a tensor or a MetaTensor comes back as
    the same type (MetaTensor metadata kept); the arithmetic is torch's, hence `backend`.

    Randomness: every call draws a seed from the MONAI RandomState `self.R` (seed it with
    `set_random_state(seed=...)`) and uses it to seed a CPU `torch.Generator` for all tensor draws; or pass
    `generator=` to `__call__` to draw from your own `torch.Generator` instead (then `self.R` is not used).
    The parameters of the latest call are kept in `last_params` (for a batch of one when `batched=False`);
    `apply_gin(batch, rand_gin.last_params)` replays that call exactly.

    Args:
        prob: probability of augmenting each sample; a sample not selected is returned unchanged.
        n_layers: number of conv layers (4 in the paper).
        interm_channels: width of the hidden layers (2 in the paper).
        kernel_sizes: per layer and call, a kernel size is drawn from these (odd) sizes.
        alpha_range: per sample, alpha ~ U(alpha_range).
        shared_network: draw one network for the whole batch (the FedGIN authors' code) instead of one per
            sample (GIN as published, the default); alpha stays per sample either way.
        batched: True: inputs are batches (B, C, ...); False: one channel-first sample (C, ...).

    Example:
        >>> import numpy as np
        >>> import torch
        >>> gin = RandGIN().set_random_state(seed=0)
        >>> batch = torch.rand(4, 1, 32, 32) + 0.1
        >>> out = gin(batch)
        >>> out.shape, out.dtype
        (torch.Size([4, 1, 32, 32]), torch.float32)
        >>> torch.allclose(out.flatten(1).norm(dim=1), batch.flatten(1).norm(dim=1))  # each norm kept
        True
        >>> torch.equal(apply_gin(batch, gin.last_params), out)  # the draw replays exactly
        True
        >>> volume = np.random.default_rng(0).random((1, 8, 32, 32), dtype=np.float32)  # (C, D, H, W)
        >>> augmented = RandGIN(batched=False).set_random_state(seed=0)(volume)
        >>> type(augmented).__name__, augmented.shape, augmented.dtype
        ('ndarray', (1, 8, 32, 32), dtype('float32'))
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH]

    def __init__(
        self,
        prob: float = 1.0,
        n_layers: int = 4,
        interm_channels: int = 2,
        kernel_sizes: Sequence[int] = (1, 3),
        alpha_range: tuple[float, float] = (0.0, 1.0),
        shared_network: bool = False,
        batched: bool = True,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.n_layers = n_layers
        self.interm_channels = interm_channels
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.alpha_range = (float(alpha_range[0]), float(alpha_range[1]))
        self.shared_network = shared_network
        self.batched = batched
        self.last_params: GINParameters | None = None
        # Validate the settings once, up front, rather than on the first batch.
        sample_gin_parameters((1, 1, 1, 1), **self._settings())

    def _settings(self) -> dict[str, object]:
        return {
            "prob": self.prob,
            "n_layers": self.n_layers,
            "interm_channels": self.interm_channels,
            "kernel_sizes": self.kernel_sizes,
            "alpha_range": self.alpha_range,
            "shared_network": self.shared_network,
        }

    def _as_batch(self, img: NdarrayOrTensor) -> torch.Tensor:
        """The input as a plain tensor (B, C, *spatial): a single sample becomes a batch of one."""
        x = convert_to_tensor(img, track_meta=False)
        if self.batched:
            return x
        if x.ndim not in (3, 4):
            raise ValueError(
                "RandGIN(batched=False) expects one channel-first sample (C, H, W) or (C, D, H, W); "
                f"got shape {tuple(x.shape)}"
            )
        return x.unsqueeze(0)

    def sample_parameters(
        self,
        x_shape: Sequence[int],
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> GINParameters:
        """Draw parameters for a batch of `x_shape`; from `generator` if given, else seeded from `self.R`."""
        generator = generator if generator is not None else seeded_generator(self.R)
        return sample_gin_parameters(x_shape, generator=generator, device=device, **self._settings())

    def randomize(
        self, data: NdarrayOrTensor | None = None, generator: torch.Generator | None = None
    ) -> None:
        """Draw the parameters for an input like `data` (a batch, or a sample if not `batched`)."""
        if data is None:
            raise ValueError("RandGIN.randomize needs the input to size the random networks")
        batch = self._as_batch(data)
        self.last_params = self.sample_parameters(batch.shape, batch.device, generator)
        self._do_transform = bool(self.last_params.applied.any())

    def __call__(
        self, img: NdarrayOrTensor, randomize: bool = True, generator: torch.Generator | None = None
    ) -> NdarrayOrTensor:
        if randomize or self.last_params is None:
            self.randomize(img, generator)
        assert self.last_params is not None
        if not self._do_transform:
            return img
        out = apply_gin(self._as_batch(img), self.last_params)
        return convert_to_dst_type(out if self.batched else out[0], img)[0]


class SharedDrawDict(RandomizableTransform, MapTransform):
    """Base of the dictionary forms that draw once per call, sized by the first listed key present, and apply
    that draw to every listed key (which must therefore share a shape). `inner` is the array transform."""

    inner: RandomizableTransform

    @property
    def last_params(self):  # the inner transform's parameters: GINParameters, IPAParameters
        """The parameters of the latest call (replay them with the array form's apply function)."""
        return self.inner.last_params

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Self:
        super().set_random_state(seed, state)
        self.inner.set_random_state(seed, state)
        return self

    def keys_to_transform(self, d: Mapping[Hashable, NdarrayOrTensor]) -> list[Hashable]:
        """The listed keys present in `d`, first one first; refused unless they share a shape."""
        keys = list(self.key_iterator(dict(d)))
        for key in keys[1:]:
            first = keys[0]
            if d[key].shape != d[first].shape:
                raise ValueError(
                    f"{type(self).__name__} keys must share a shape: {first!r} is {tuple(d[first].shape)}, "
                    f"{key!r} is {tuple(d[key].shape)}"
                )
        return keys


class RandGINd(SharedDrawDict):
    """Dictionary form of `RandGIN`: augments the listed keys of a dict, leaves every other key alone.

    The dict holds a batch, or one sample with `batched=False`. One set of parameters is drawn per call
    (sized by the first listed key present) and applied to all listed keys, so they must share a shape;
    see `RandGIN` for the randomness and the arguments.
    """

    backend = RandGIN.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        n_layers: int = 4,
        interm_channels: int = 2,
        kernel_sizes: Sequence[int] = (1, 3),
        alpha_range: tuple[float, float] = (0.0, 1.0),
        shared_network: bool = False,
        batched: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.gin = self.inner = RandGIN(
            prob, n_layers, interm_channels, kernel_sizes, alpha_range, shared_network, batched
        )

    def __call__(
        self, data: Mapping[Hashable, NdarrayOrTensor], generator: torch.Generator | None = None
    ) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = self.keys_to_transform(d)
        if keys:
            self.gin.randomize(d[keys[0]], generator)
        for key in keys:
            d[key] = self.gin(d[key], randomize=False)
        return d
