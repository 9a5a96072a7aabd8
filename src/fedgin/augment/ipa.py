"""IPA (interventional pseudo-correlation augmentation): GIN views blended through a random smooth mask.

Ouyang et al. (IEEE TMI 2022) pair GIN with IPA. Per sample, three GIN networks are drawn. Two of the
views are blended through a random smooth mask m in [0, 1] and its complement; the third stays plain:

    blended    = m * GIN_1(x) + (1 - m) * GIN_2(x)
    complement = (1 - m) * GIN_1(x) + m * GIN_2(x)
    plain      = GIN_3(x)

The mask's spatially varying mix breaks the pseudo-correlation between the intensities of a region and
of its surroundings. A consistency term then ties the predictions of the three views together
(`fedgin.training.consistency`).

The mask is drawn as in the authors' code, which uses Chen Chen's bias field. Standard normal control
points, one set per sample, are scaled to unit L2 norm. They are interpolated by a B-spline (order 2,
quadratic) at 1/downscale of the image size, with a control point every 1/grid of the image per axis. The
field is upsampled (bi/trilinear) to the image, exponentiated, and min-max rescaled to [0, 1] per sample.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_tensor

from fedgin.augment.gin import GINParameters, RandGIN, SharedDrawDict, apply_gin, seeded_generator

__all__ = [
    "IPAParameters",
    "IPAViews",
    "RandIPA",
    "RandIPAd",
    "apply_ipa",
    "blend_mask",
    "bspline_kernel",
    "sample_ipa_parameters",
]

#: A mask of one value everywhere (a flat field) would divide by zero when rescaled to [0, 1].
_FLAT = 1e-12


class IPAViews(NamedTuple):
    """The three views of a batch: blended through the mask, blended through its complement, plain GIN."""

    blended: torch.Tensor
    complement: torch.Tensor
    plain: torch.Tensor

    def stacked(self) -> torch.Tensor:
        """(3B, C, ...): blended, complement and plain views one after the other, for one forward pass."""
        return torch.cat([self.blended, self.complement, self.plain])


@dataclass(frozen=True)
class IPAParameters:
    """Everything random about one IPA call, so that `apply_ipa(x, params)` is deterministic.

    Attributes:
        gins: the three GIN draws (blended pair first, then the plain view), each for the whole batch.
        control_points: (B, 1, *grid) control points of the masks, unit L2 norm per sample.
        spacing: voxels between control points per axis, at the downscaled size.
        downscale: the B-spline field is computed at 1/downscale of the image size, then upsampled.
        order: B-spline order (1 linear, 2 quadratic, 3 cubic).
        applied: (B,) bool, which samples are blended; the others get m = 1 (blended = GIN_1(x)).
    """

    gins: tuple[GINParameters, GINParameters, GINParameters]
    control_points: torch.Tensor
    spacing: tuple[int, ...]
    downscale: int
    order: int
    applied: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.control_points.shape[0])

    def to(self, device: torch.device | str) -> IPAParameters:
        """The same parameters on another device."""
        return IPAParameters(
            gins=tuple(gin.to(device) for gin in self.gins),  # type: ignore[arg-type]
            control_points=self.control_points.to(device),
            spacing=self.spacing,
            downscale=self.downscale,
            order=self.order,
            applied=self.applied.to(device),
        )


def _field_size(spatial: Sequence[int], downscale: int) -> list[int]:
    return [max(1, math.ceil(size / downscale)) for size in spatial]


def sample_ipa_parameters(
    x_shape: Sequence[int],
    gin: RandGIN,
    *,
    prob: float = 1.0,
    grid: int = 4,
    downscale: int = 2,
    order: int = 2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> IPAParameters:
    """Draw one IPA call for a batch of shape (B, C, *spatial): three GIN draws from `gin`'s settings and
    the masks' control points, all from `generator` (on its own device, then moved to `device`)."""
    if len(x_shape) not in (4, 5):
        raise ValueError(f"IPA expects a batch (B, C, H, W) or (B, C, D, H, W); got shape {tuple(x_shape)}")
    if grid < 1 or downscale < 1:
        raise ValueError(f"grid and downscale must be at least 1, got {grid} and {downscale}")
    if not 1 <= order <= 3:
        raise ValueError(f"the B-spline order must be 1, 2 or 3, got {order}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must lie in [0, 1], got {prob}")
    generator = generator if generator is not None else torch.Generator()
    batch, _, *spatial = (int(s) for s in x_shape)
    gins = tuple(gin.sample_parameters(x_shape, device, generator) for _ in range(3))
    low = _field_size(spatial, downscale)
    spacing = tuple(max(1, math.ceil(size / grid)) for size in low)
    # Enough points that the interpolated field covers the downscaled image with a margin on each side.
    counts = [math.ceil(size / step) + order + 1 for size, step in zip(low, spacing, strict=True)]
    points = torch.randn((batch, 1, *counts), generator=generator, device=generator.device)
    points = points / torch.linalg.vector_norm(points.reshape(batch, -1), dim=1).reshape(
        batch, 1, *[1] * len(counts)
    )
    applied = torch.rand((batch,), generator=generator, device=generator.device) < prob
    params = IPAParameters(gins, points, spacing, downscale, order, applied)  # type: ignore[arg-type]
    return params if device is None else params.to(device)


def bspline_kernel(spacing: Sequence[int], order: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The B-spline interpolation kernel (1, 1, *k) for control points `spacing` voxels apart.

    A B-spline of order n on a uniform grid is a box of width s convolved with itself n times, divided by
    s^n: per axis a kernel of s (n + 1) - n taps, the full kernel their outer product.
    """
    axes = []
    for step in spacing:
        box = torch.ones(1, 1, step, dtype=torch.float64)
        kernel = box
        for _ in range(order):
            kernel = F.conv1d(kernel, box.flip(-1), padding=step - 1) / step
        axes.append(kernel.reshape(-1))
    full = axes[0]
    for axis in axes[1:]:
        full = torch.tensordot(full, axis, dims=0)
    return full.reshape(1, 1, *full.shape).to(dtype)


def _center_crop(field: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    slices = [slice(None), slice(None)]
    for have, want in zip(field.shape[2:], size, strict=True):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return field[tuple(slices)]


def blend_mask(params: IPAParameters, spatial_shape: Sequence[int]) -> torch.Tensor:
    """The masks (B, 1, *spatial) of `params` in [0, 1], float32; deterministic.

    m = rescale01(exp(upsample(crop(B-spline(control_points))))), per sample; a sample not `applied` gets
    m = 1 everywhere.
    """
    points = params.control_points.to(torch.float32)
    dims = points.ndim - 2
    if len(spatial_shape) != dims:
        raise ValueError(f"IPA parameters are for {dims}D images, got a spatial shape {tuple(spatial_shape)}")
    kernel = bspline_kernel(params.spacing, params.order).to(points.device)
    transpose = F.conv_transpose2d if dims == 2 else F.conv_transpose3d
    padding = [(size - 1) // 2 for size in kernel.shape[2:]]
    with torch.autocast(device_type=points.device.type, enabled=False):
        field = transpose(points, kernel, stride=list(params.spacing), padding=padding)
        field = _center_crop(field, _field_size(spatial_shape, params.downscale))
        if tuple(field.shape[2:]) != tuple(spatial_shape):
            mode = "bilinear" if dims == 2 else "trilinear"
            field = F.interpolate(field, size=list(spatial_shape), mode=mode, align_corners=True)
        field = torch.exp(field)
        flat = field.reshape(field.shape[0], -1)
        low = flat.min(dim=1).values.reshape(-1, *[1] * (dims + 1))
        high = flat.max(dim=1).values.reshape(-1, *[1] * (dims + 1))
        mask = ((field - low) / (high - low).clamp_min(_FLAT)).clamp_(0.0, 1.0)
        mask[~params.applied.to(mask.device)] = 1.0
    return mask


def apply_ipa(x: torch.Tensor, params: IPAParameters) -> IPAViews:
    """The three views of a batch (B, C, H, W) or (B, C, D, H, W); deterministic given `params`.

    blended = m * GIN_1(x) + (1 - m) * GIN_2(x), complement = (1 - m) * GIN_1(x) + m * GIN_2(x),
    plain = GIN_3(x), with m = `blend_mask(params, x.shape[2:])`. Each view has the input's shape and dtype;
    the blend is computed in float32 (float64 for float64 inputs) and carries no autograd history.
    """
    if x.shape[0] != params.batch_size:
        raise ValueError(f"IPA parameters are for a batch of {params.batch_size}, got {x.shape[0]} samples")
    params = params.to(x.device)
    first, second, plain = (apply_gin(x, gin) for gin in params.gins)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        mask = blend_mask(params, x.shape[2:]).to(compute)
        a, b = first.to(compute), second.to(compute)
        blended = (mask * a + (1.0 - mask) * b).to(x.dtype)
        complement = ((1.0 - mask) * a + mask * b).to(x.dtype)
    return IPAViews(blended, complement, plain)


class RandIPA(RandomizableTransform):
    """MONAI-style random IPA on a batch (B, C, H, W) / (B, C, D, H, W): returns its three `IPAViews`.

    Randomness: every call draws a seed from the MONAI RandomState `self.R` (`set_random_state(seed=...)`)
    for a CPU `torch.Generator`, or uses the `generator=` passed to `__call__`. The latest draw is kept
    in `last_params`; `apply_ipa(batch, rand_ipa.last_params)` replays it exactly.

    Args:
        gin: the GIN whose settings the three views are drawn with (default: `RandGIN()`).
        prob: probability of blending each sample; a sample not selected gets m = 1.
        grid: control-point intervals across the image per axis (the authors': 4).
        downscale: the mask's B-spline field is computed at 1/downscale of the image size (2).
        order: B-spline order (2, quadratic).

    Example:
        >>> import torch
        >>> ipa = RandIPA().set_random_state(seed=0)
        >>> batch = torch.rand(2, 1, 32, 32) + 0.1
        >>> views = ipa(batch)
        >>> views.stacked().shape
        torch.Size([6, 1, 32, 32])
        >>> m = blend_mask(ipa.last_params, batch.shape[2:])
        >>> bool(m.min() >= 0) and bool(m.max() <= 1)
        True
        >>> torch.equal(apply_ipa(batch, ipa.last_params).blended, views.blended)  # replays exactly
        True
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH]

    def __init__(
        self,
        gin: RandGIN | None = None,
        prob: float = 1.0,
        grid: int = 4,
        downscale: int = 2,
        order: int = 2,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.gin = gin if gin is not None else RandGIN()
        self.grid, self.downscale, self.order = int(grid), int(downscale), int(order)
        self.last_params: IPAParameters | None = None
        sample_ipa_parameters((1, 1, 4, 4), self.gin, **self._settings())  # refuse bad settings up front

    def _settings(self) -> dict[str, object]:
        return {"prob": self.prob, "grid": self.grid, "downscale": self.downscale, "order": self.order}

    def randomize(
        self, data: NdarrayOrTensor | None = None, generator: torch.Generator | None = None
    ) -> None:
        if data is None:
            raise ValueError("RandIPA.randomize needs the batch to size the masks")
        batch = convert_to_tensor(data, track_meta=False)
        generator = generator if generator is not None else seeded_generator(self.R)
        self.last_params = sample_ipa_parameters(
            batch.shape, self.gin, generator=generator, device=batch.device, **self._settings()
        )

    def __call__(
        self, img: NdarrayOrTensor, randomize: bool = True, generator: torch.Generator | None = None
    ) -> IPAViews:
        if randomize or self.last_params is None:
            self.randomize(img, generator)
        assert self.last_params is not None
        return apply_ipa(convert_to_tensor(img, track_meta=False), self.last_params)


class RandIPAd(SharedDrawDict):
    """Dictionary form of `RandIPA`: each listed key becomes its blended view, and `<key>_complement` and
    `<key>_plain` are added; every other key is left alone. One draw per call, shared by the keys (which
    must share a shape), sized by the first listed key present."""

    backend = RandIPA.backend

    def __init__(
        self,
        keys: KeysCollection,
        gin: RandGIN | None = None,
        prob: float = 1.0,
        grid: int = 4,
        downscale: int = 2,
        order: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.ipa = self.inner = RandIPA(gin, prob, grid, downscale, order)

    def __call__(
        self, data: Mapping[Hashable, NdarrayOrTensor], generator: torch.Generator | None = None
    ) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = self.keys_to_transform(d)
        if keys:
            self.ipa.randomize(d[keys[0]], generator)
        for key in keys:
            d[key], d[f"{key}_complement"], d[f"{key}_plain"] = self.ipa(d[key], randomize=False)
        return d
