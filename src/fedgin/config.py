"""Configuration objects: every setting has a default, and a run's settings load from one TOML file."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from fedgin.errors import ConfigError, validation_problems

Modality = Literal["ct", "mri"]
#: Synthetic contrasts the embedded generator renders (SPEC section 5).
SynthModality = Literal["ct", "mri_t1", "mri_t2"]


#: The device names a run accepts: auto (CUDA when present), cpu, cuda or cuda:N, mps (Apple GPUs).
DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device_name(name: str) -> str:
    """`name` if it is a device fedgin can run on (DEVICE_NAME), else ValueError saying which are."""
    if not DEVICE_NAME.fullmatch(name):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return name


class Settings(BaseModel):
    """Base of every configuration section: unknown keys are errors, not silently ignored.

    Strict: a number or switch must be written as one (`rounds = "3"` or `zscore = "yes"` is an error, not
    3 or True; an integer is accepted where a float is expected). Path and tuple fields are declared with
    `strict=False`: TOML and JSON have no such types, so they come as strings and lists (a tuple's items
    stay strict).

    Every float is finite: inf or nan in a setting (`lr = inf`, `ct_window = [nan, 275]`) is refused when
    the settings are read, not found later as a NaN model or an all-NaN image.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class PreprocessConfig(Settings):
    """How a source volume becomes a cached volume (SPEC section 4).

    The defaults suit the embedded synthetic data set (128 x 128 slices at 3 mm); the `paper` preset uses
    1.5 mm and 256 x 256 as the authors did.
    """

    canonical: bool = Field(True, description="Reorient to RAS+ so that the last axis is axial (S).")
    # Bounds far beyond any scanner, so that a slip (0.0001 mm, 10^6 voxels) is an error, not an OOM kill.
    spacing_mm: float | None = Field(
        3.0, ge=0.05, le=50.0, description="In-plane spacing to resample to; None keeps the source spacing."
    )
    size: int | None = Field(
        128,
        ge=8,
        le=4096,
        description="Crop or pad every axial slice to size x size; None keeps the resampled size.",
    )
    ct_window: tuple[float, float] = Field(
        (-125.0, 275.0), description="CT intensity window in HU.", strict=False
    )
    mri_percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="MRI intensities are clipped to these percentiles.", strict=False
    )
    zscore: bool = Field(True, description="Per-volume z-score normalisation after windowing/clipping.")

    # A reversed or empty window clips every voxel to one value: all-zero images, written with rc 0.
    @field_validator("ct_window")
    @classmethod
    def _ordered_window(cls, window: tuple[float, float]) -> tuple[float, float]:
        if not window[0] < window[1]:
            raise ValueError(f"the window must be [low, high] with low < high (HU), got {list(window)}")
        return window

    @field_validator("mri_percentiles")
    @classmethod
    def _ordered_percentiles(cls, percentiles: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise ValueError(
                f"the percentiles must be [low, high] with 0 <= low < high <= 100, got {list(percentiles)}"
            )
        return percentiles


CTPhase = Literal["native", "arterial", "portal_venous", "delayed"]
CTKernel = Literal["smooth", "standard", "sharp"]
MRSequence = Literal["t1_se", "t1_gre_in", "t1_gre_opposed", "t1_gre", "t2_tse", "t2_ssfse"]
MRContrast = Literal["none", "arterial", "portal_venous"]
#: Vendor-like reconstruction curves of MRI scanners (gain range and monotone curve: fedgin.synth.protocols).
MRVendor = Literal["a", "b", "c", "d"]


class CTProtocol(Settings):
    """What a CT scanner does to an anatomy: contrast phase, tube voltage, kernel, slice thickness, dose."""

    modality: Literal["ct"] = "ct"
    phase: CTPhase = Field(
        "portal_venous", description="native, arterial (~35 s), portal_venous (~70 s), delayed (~3 min)."
    )
    kvp: Literal[80, 100, 120, 140] = Field(
        120, description="Tube voltage: iodine contrast and noise grow as it falls."
    )
    kernel: CTKernel = Field(
        "standard", description="Reconstruction kernel: smooth blurs, sharp keeps edges and noise."
    )
    slice_mm: float = Field(3.0, ge=0.5, le=10.0, description="Slice thickness (partial volume along z).")
    noise_hu: tuple[PositiveFloat, PositiveFloat] = Field(
        (8.0, 16.0), description="Noise SD range (HU) at 120 kVp, standard kernel, 3 mm.", strict=False
    )

    @model_validator(mode="before")
    @classmethod
    def _mri_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("field_t", "sequence", "fat_sat", "contrast", "vendor", "snr", "bias"):
                if key in data:
                    raise ValueError(
                        f"{key!r} is an MRI setting; a CT protocol takes phase, kvp, kernel, slice_mm"
                    )
        return data

    @property
    def family(self) -> str:
        return "ct"


class MRProtocol(Settings):
    """What an MRI scanner does to an anatomy: field strength, sequence, fat saturation, gadolinium phase,
    the vendor's reconstruction curve, bias-field strength and SNR."""

    modality: Literal["mri"] = "mri"
    field_t: float = Field(1.5, description="Field strength in tesla: 1.5 or 3.")
    sequence: MRSequence = Field(
        ..., description="t1_se, t1_gre_in, t1_gre_opposed (chemical shift), t1_gre (3D), t2_tse, t2_ssfse."
    )
    fat_sat: bool = Field(False, description="Fat saturation (fat signal suppressed).")
    contrast: MRContrast = Field(
        "none", description="Gadolinium phase: none, arterial or portal_venous (T1 only)."
    )
    vendor: MRVendor = "a"
    snr: float | None = Field(
        None, gt=0, description="Parenchymal SNR; None: the sequence's and field's typical."
    )
    bias: float | None = Field(
        None, ge=0, le=1, description="Bias-field amplitude (log scale); None: grows with the field strength."
    )

    @model_validator(mode="before")
    @classmethod
    def _ct_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "phase" in data:
                raise ValueError("'phase' is a CT setting; an MRI protocol's gadolinium phase is 'contrast'")
            for key in ("kvp", "kernel", "slice_mm", "noise_hu"):
                if key in data:
                    raise ValueError(f"{key!r} is a CT setting; an MRI protocol takes field_t, sequence, ...")
        return data

    @field_validator("field_t")
    @classmethod
    def _field_strength(cls, value: float) -> float:
        if value not in (1.5, 3.0):
            raise ValueError(f"field strength must be 1.5 or 3 (tesla), got {value}")
        return float(value)

    @model_validator(mode="after")
    def _contrast_on_t1(self) -> MRProtocol:
        if self.contrast != "none" and not self.sequence.startswith("t1_"):
            raise ValueError(
                f"contrast {self.contrast!r} needs a T1-weighted sequence, got {self.sequence!r}"
            )
        return self

    @property
    def family(self) -> str:
        """The sequence family that names the domain: t1 or t2."""
        return self.sequence.split("_")[0]


Protocol = Annotated[CTProtocol | MRProtocol, Field(discriminator="modality")]


#: The largest weight of a protocol in a mix (weights are relative: 1e6 to 1 is already all of one).
MAX_PROTOCOL_WEIGHT = 1e6


class ProtocolMix(Settings):
    """A data source as a weighted mix of acquisition protocols.

    `weights` maps protocol names (shipped ones, see `fedgin synth --help`, or names defined in `custom`)
    to relative weights; every rendered case draws its protocol from the mix's protocols of its modality.
    """

    weights: dict[str, float] = Field(..., min_length=1)
    custom: dict[str, Protocol] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: dict[str, float]) -> dict[str, float]:
        # Relative weights: bounded so that their sum stays finite (1e308 twice overflows to inf).
        for name, weight in weights.items():
            if not 0 <= weight <= MAX_PROTOCOL_WEIGHT:
                raise ValueError(
                    f"weight of {name!r} must be a number from 0 to {MAX_PROTOCOL_WEIGHT:g}, got {weight}"
                )
        if sum(weights.values()) <= 0:
            raise ValueError("the weights sum to 0; give at least one protocol a positive weight")
        return weights

    @model_validator(mode="after")
    def _known_names(self) -> ProtocolMix:
        from fedgin.synth.protocols import PROTOCOLS

        shadowing = sorted(name for name in self.custom if name in PROTOCOLS)
        if shadowing:
            raise ValueError(
                f"custom protocol {shadowing[0]!r} has the name of a shipped protocol; give it a name of "
                "its own (a custom protocol may not replace a shipped one)"
            )
        unknown = [name for name in self.weights if name not in PROTOCOLS and name not in self.custom]
        if unknown:
            close = difflib.get_close_matches(unknown[0], [*PROTOCOLS, *self.custom], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else " (define it under custom)"
            raise ValueError(f"unknown protocol {unknown[0]!r}{hint}")
        return self


#: The largest size along one axis of a NIfTI-1 image (its header stores sizes as 16-bit signed integers).
NIFTI_MAX_SIZE = 32767


class SynthConfig(Settings):
    """The embedded synthetic abdomen generator (SPEC section 5)."""

    subjects: int = Field(10, ge=1)
    seed: int = 0
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (128, 128, 64),
        description="Voxels along x, y, z (z axial), each from 1 to 32767 (NIfTI-1 stores sizes as int16).",
        strict=False,
    )
    spacing: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(
        (3.0, 3.0, 5.0), description="Voxel size in mm, each above 0.", strict=False
    )
    modalities: list[SynthModality] = Field(default_factory=lambda: ["ct"])
    protocols: (
        Annotated[
            Annotated[str, Tag("preset")] | Annotated[ProtocolMix, Tag("mix")],
            Discriminator(lambda value: "preset" if isinstance(value, str) else "mix"),
        ]
        | None
    ) = Field(
        None,
        description=(
            "The acquisition protocols: a preset (totalseg-ct, totalseg-mri, amos, single) or a mix; "
            "None: the layout's realistic mix (totalseg-ct / totalseg-mri, or amos)."
        ),
    )

    @field_validator("shape")
    @classmethod
    def _nifti_shape(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if max(shape) > NIFTI_MAX_SIZE:
            raise ValueError(
                f"each size must be at most {NIFTI_MAX_SIZE} voxels (NIfTI-1 stores sizes as 16-bit "
                f"integers), got {list(shape)}"
            )
        return shape

    @field_validator("protocols")
    @classmethod
    def _preset(cls, value: str | ProtocolMix | None) -> str | ProtocolMix | None:
        from fedgin.synth.protocols import MIXES

        if isinstance(value, str) and value not in MIXES:
            close = difflib.get_close_matches(value, list(MIXES), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown protocol mix {value!r}; {hint}presets: {', '.join(MIXES)}")
        return value


class DataSpec(Settings):
    """A selection of cached cases: one cache folder, optionally narrowed to splits, domains or cases."""

    cache: Path = Field(..., strict=False)
    splits: list[str] | None = Field(
        None, min_length=1, description="Default: train for training, val for validation."
    )
    domains: list[str] | None = Field(
        None, min_length=1, description="e.g. ['ct'] or ['mri_t2']; None keeps all."
    )
    skip_cases: int = Field(
        0, ge=0, description="Leave out the first N cases (to split a cache between sites)."
    )
    max_cases: int | None = Field(
        None, ge=1, description="Keep N cases (after skip_cases; limited-data runs)."
    )


class DataConfig(Settings):
    train: list[DataSpec] = Field(default_factory=list)
    val: list[DataSpec] | None = Field(None, description="Default: the val split of the training caches.")
    test: list[DataSpec] = Field(default_factory=list)


class ModelConfig(Settings):
    """A MONAI U-Net; instance norm by default because batch-norm statistics break under FedAvg."""

    dimensions: Literal[2, 3] = 2
    channels: tuple[PositiveInt, ...] = Field((16, 32, 64, 128, 256), min_length=2, strict=False)
    strides: tuple[PositiveInt, ...] = Field((2, 2, 2, 2), min_length=1, strict=False)
    num_res_units: int = Field(1, ge=0)
    norm: Literal["instance", "batch"] = "instance"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    patch_size: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (32, 96, 96),
        description="3D models: training patch and sliding-window size, (Z, H, W) voxels.",
        strict=False,
    )


class GINConfig(Settings):
    """GIN augmentation (SPEC section 2): applied to every training batch, never at validation or test."""

    enabled: bool = True
    prob: float = Field(1.0, ge=0.0, le=1.0)
    n_layers: int = Field(4, ge=2)
    interm_channels: int = Field(2, ge=1)
    kernel_sizes: tuple[int, ...] = Field(
        (1, 3),
        min_length=1,
        description="Per layer and batch, the kernel size is drawn from these odd sizes.",
        strict=False,
    )
    alpha_range: tuple[float, float] = Field(
        (0.0, 1.0),
        description="Per sample, alpha ~ U(low, high) weighs GIN's output against the input.",
        strict=False,
    )
    shared_network: bool = Field(False, description="The authors' variant: one network for the batch.")
    ipa: bool = Field(
        False,
        description="GIN-IPA (Ouyang et al. 2022, fedgin.augment.ipa): three GIN views per sample, two of "
        "them blended through a random smooth mask and its complement; the segmentation loss on the "
        "blended view, plus `consistency_weight` x KL between each view's prediction and their mean. "
        "Costs three forward and backward passes a step.",
    )
    ipa_grid: int = Field(
        4, ge=1, description="IPA mask: control-point intervals across the image per axis (authors: 1/4)."
    )
    ipa_downscale: int = Field(
        2, ge=1, description="IPA mask: the B-spline field is made at 1/downscale resolution, then upsampled."
    )
    ipa_order: int = Field(2, ge=1, le=3, description="IPA mask: B-spline order (authors: 2, quadratic).")
    consistency_weight: float = Field(
        10.0,
        ge=0.0,
        description="IPA: weight of the KL consistency term, averaged over every element as the authors' "
        "torch.nn.KLDivLoss() does (their weight: 10).",
    )

    @field_validator("kernel_sizes")
    @classmethod
    def _odd_kernels(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        # Padding k // 2 keeps the image size only for odd k.
        if any(size < 1 or size % 2 == 0 for size in sizes):
            raise ValueError(f"kernel sizes must be odd positive integers, got {list(sizes)}")
        return sizes

    @model_validator(mode="after")
    def _ipa_needs_gin(self) -> GINConfig:
        if self.ipa and not self.enabled:
            raise ValueError("ipa = true needs GIN (enabled = true): IPA blends GIN's views")
        return self

    @field_validator("alpha_range")
    @classmethod
    def _alpha_in_unit_interval(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        low, high = bounds
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"alpha_range must satisfy 0 <= low <= high <= 1, got {list(bounds)}")
        return bounds


class AffineConfig(Settings):
    """Random in-plane rotation, zoom and shift of every training sample, before GIN (augment.affine)."""

    enabled: bool = False
    prob: float = Field(1.0, ge=0.0, le=1.0, description="Probability that a sample is transformed.")
    rotate_deg: float = Field(15.0, ge=0.0, le=180.0, description="Rotations uniform in +- this.")
    scale: float = Field(0.15, ge=0.0, lt=1.0, description="Zooms uniform in 1 +- this.")
    translate: float = Field(0.05, ge=0.0, le=0.5, description="Shifts up to this share of the slice.")


class TrainConfig(Settings):
    steps: int = Field(1500, ge=1, description="Optimizer steps of a centralized or local run.")
    epochs: int | None = Field(
        None, ge=1, description="If set, train this many passes over the training slices instead of `steps`."
    )
    batch_size: int = Field(8, ge=1, le=4096)  # beyond it a batch of even 64x64 slices outgrows memory
    lr: float = Field(5e-4, gt=0, description="Base learning rate (AdamW); the schedule scales it.")
    lr_schedule: Literal["constant", "poly", "cosine"] = Field(
        "poly",
        description="Over steps (single site) or rounds (federation): poly as nnU-Net, cosine, or constant.",
    )
    lr_power: float = Field(0.9, gt=0, description="Poly exponent: lr * (1 - progress)^power.")
    warmup_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of the schedule spent ramping the rate up linearly first."
    )
    weight_decay: float = Field(1e-4, ge=0)
    loss: Literal["dice_ce", "focal_dice"] = "dice_ce"
    foreground_fraction: float = Field(0.5, ge=0.0, le=1.0)
    val_interval: int = Field(250, ge=1, description="Validate (whole volumes) every N steps.")
    val_max_cases: int | None = Field(None, ge=1, description="Validate on at most N cases per domain.")
    checkpoint_interval: int = Field(100, ge=1, description="Save the resumable checkpoint every N steps.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda[:N] or mps.")
    amp: bool | None = Field(None, description="Mixed precision; None: on for CUDA, off for CPU.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    deterministic: bool = True

    @field_validator("device")
    @classmethod
    def _known_device(cls, name: str) -> str:
        return check_device_name(name)


class ClientSpec(Settings):
    """One federated site: a name, its cached data (its share via max_cases), optionally its own GIN."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    data: list[DataSpec] = Field(..., min_length=1)
    gin: GINConfig | None = Field(None, description="GIN settings of this site; None uses the run's [gin].")


class FaultConfig(Settings):
    """One site of the federation sends poisoned weights (fedgin.federation.faults: tests and studies)."""

    site: str = Field(..., min_length=1, description="The site (a federation.clients name) that misbehaves.")
    mode: Literal["sign_flip", "scale", "random", "shuffled_labels"] = Field(
        ...,
        description=(
            "sign_flip: g - u; scale: g + scale u; random: noise of each tensor's mean and std; "
            "shuffled_labels: trains on its images paired with other slices' labels (2D models)."
        ),
    )
    scale: float = Field(100.0, description="mode = scale: the factor on the site's update.")


class PrivacySettings(Settings):
    """Client-level differential privacy of the global model (fedgin.federation.privacy, Flower's DP
    wrappers): each site's update is clipped to an L2 norm, Gaussian noise is added to their mean."""

    clipping: Literal["none", "fixed", "adaptive"] = Field(
        "fixed",
        description=(
            "fixed: clip every update to clipping_norm; adaptive: the norm follows the target quantile of "
            "the updates' norms (Andrew et al. 2021); none is refused (noise needs a bound on an update)."
        ),
    )
    clip_on: Literal["server", "client"] = Field(
        "server", description="Where updates are clipped: server (trusted server) or client (each site)."
    )
    clipping_norm: float | None = Field(
        None, gt=0.0, description="fixed: the L2 norm of an update's clip; adaptive: the initial norm."
    )
    noise_multiplier: float = Field(
        ..., ge=0.0, description="z: the noise's standard deviation is z * clipping_norm / sites."
    )
    target_delta: float = Field(1e-5, gt=0.0, lt=1.0, description="The delta epsilon is reported at.")
    target_epsilon: float | None = Field(
        None, gt=0.0, description="Refuse a run whose planned rounds would spend more than this epsilon."
    )
    target_quantile: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="adaptive: the quantile of update norms the clipping norm tracks (share unclipped).",
    )
    clip_lr: float = Field(0.2, gt=0.0, description="adaptive: the geometric step of the clipping norm.")
    clipped_count_stddev: float | None = Field(
        None, ge=0.0, description="adaptive: noise on the clipped count (None: sites / 20, Flower's default)."
    )


class SecAggSettings(Settings):
    """Secure aggregation (SecAgg+, Bell et al. 2020, Flower's SecAggPlusWorkflow): the server learns only
    the weighted mean of the sites' updates (fedgin.federation.secure_aggregation)."""

    num_shares: int | float = Field(
        1.0, gt=0, description="Shares each site's secrets are split into: an int (> 2) or a share of sites."
    )
    reconstruction_threshold: int | float = Field(
        0.5,
        gt=0,
        description="Shares needed to unmask: an int (< num_shares) or a share of num_shares (at least 2).",
    )
    clipping_range: float = Field(
        1.0, gt=0.0, description="Each weighted update value is clipped to +-this before quantization."
    )
    quantization_range: int = Field(2**24, gt=0, description="Integer levels over the clipping range.")
    max_weight: float = Field(
        1000.0,
        gt=0.0,
        description=(
            "A site's weight (its training slices) is divided by this before clipping: at least the "
            "largest site's slices, not far above them (precision). Under DP every site weighs 1: 1 is used."
        ),
    )


class FederationConfig(Settings):
    """Federated training (FedAvg / FedProx with GIN on the clients, SPEC section 2) on Flower."""

    rounds: int = Field(100, ge=1)
    local_steps: int | None = Field(
        None, ge=1, description="Optimizer steps per client and round; None: local_epochs epochs."
    )
    local_epochs: int = Field(1, ge=1, description="Local epochs per round when local_steps is None.")
    strategy: Literal[
        "fedavg",
        "fedprox",
        "median",
        "trimmed_mean",
        "krum",
        "multikrum",
        "bulyan",
        "fedadam",
        "fedyogi",
        "fedavgm",
    ] = Field(
        "fedavg",
        description=(
            "How the server combines the sites' weights (federation/robust.py: the robust rules; "
            "federation/server_optimizers.py: fedadam, fedyogi, fedavgm)."
        ),
    )
    proximal_mu: float = Field(0.01, ge=0.0, description="FedProx: weight of mu/2 ||w - w_global||^2.")
    trim_beta: float = Field(
        0.2, ge=0.0, lt=0.5, description="trimmed_mean: share of values dropped at each end, per coordinate."
    )
    num_malicious: int = Field(
        0, ge=0, description="krum, multikrum, bulyan: how many sites may send bad updates (f)."
    )
    multikrum_select: int = Field(
        1, ge=1, description="multikrum: how many of the best-scored updates are averaged."
    )
    server_lr: float | None = Field(
        None,
        gt=0.0,
        description=(
            "fedadam, fedyogi, fedavgm: the server's step size on the averaged update (None: Flower's "
            "default, 0.1 for fedadam, 0.01 for fedyogi, 1.0 for fedavgm)."
        ),
    )
    server_momentum: float = Field(
        0.9, ge=0.0, lt=1.0, description="fedavgm: momentum; fedadam, fedyogi: beta_1 (first moment)."
    )
    server_beta2: float = Field(0.99, ge=0.0, lt=1.0, description="fedadam, fedyogi: second-moment decay.")
    server_tau: float = Field(
        1e-3, gt=0.0, description="fedadam, fedyogi: the adaptivity tau added to sqrt(v) (Reddi et al.)."
    )
    fedbn: bool = Field(False, description="Normalisation-layer weights stay on the sites (FedBN).")
    weighting: Literal["examples", "uniform", "modality_balanced"] = Field(
        "examples",
        description="How sites weigh in the average: by training examples (FedAvg), equally, or each "
        "modality an equal share split by examples (fedgin.federation.weighting).",
    )
    min_clients: int = Field(2, ge=1, description="A round needs at least this many valid replies.")
    client_validation: bool = Field(
        True, description="Each site reports the Dice of its trained model on its own val cases, per domain."
    )
    fraction_train: float = Field(1.0, gt=0.0, le=1.0)
    update_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description=(
            "Floating-point type of the weights sent each way (float16 halves the bytes; the server and the "
            "sites cast back to float32 before training and averaging; integer buffers are sent as they are)."
        ),
    )
    round_timeout_s: float = Field(3600.0, gt=0, description="Replies later than this are left out.")
    clients: list[ClientSpec] = Field(default_factory=list)
    server_eval: list[DataSpec] = Field(
        default_factory=list, description="Held-out cases evaluated on the global model every round."
    )
    fault: FaultConfig | None = Field(None, description="Fault injection: one site sends poisoned weights.")
    privacy: PrivacySettings | None = Field(
        None, description="Differential privacy: clipping, noise and the epsilon spent per round."
    )
    secagg: SecAggSettings | None = Field(
        None, description="Secure aggregation (SecAgg+): the server sees only the sum of the updates."
    )

    @field_validator("clients")
    @classmethod
    def _unique_names(cls, clients: list[ClientSpec]) -> list[ClientSpec]:
        names = [client.name for client in clients]
        if len(set(names)) != len(names):
            raise ValueError(f"client names must be unique, got {names}")
        return clients

    def require_clients(self) -> None:
        """A federation needs sites, at least min_clients of them.

        Checked where a federation starts, not when the table is read: a single-site run has no sites, and
        a run configuration may be read and rewritten (a study's, a test's) before its sites are complete.
        """
        if not self.clients:
            raise ConfigError("federation.clients: no clients (add [[federation.clients]] tables)")
        if self.min_clients > len(self.clients):
            raise ConfigError(
                f"federation.min_clients is {self.min_clients} but only {len(self.clients)} clients are "
                "configured"
            )
        if self.fault is not None and self.fault.site not in {client.name for client in self.clients}:
            raise ConfigError(f"federation.fault.site: {self.fault.site!r} is not in federation.clients")
        # A round may aggregate as few as min_clients replies: each rule must be defined for that many.
        # Krum scores an update by its n - f - 2 nearest others (at least one); Bulyan's trimmed mean
        # needs n >= 4f + 3 (Flower refuses fewer replies).
        f = self.num_malicious
        needed = {"krum": f + 3, "multikrum": f + 3, "bulyan": 4 * f + 3}.get(self.strategy)
        if needed is not None and self.min_clients < needed:
            raise ConfigError(
                f"federation.strategy {self.strategy} with num_malicious = {f} needs at least {needed} "
                f"replies a round, but min_clients is {self.min_clients} (raise min_clients, with that many "
                "sites)"
            )
        if self.strategy == "multikrum" and self.multikrum_select > self.min_clients - f:
            raise ConfigError(
                f"federation.multikrum_select is {self.multikrum_select}, more than the "
                f"min_clients - num_malicious = {self.min_clients - f} updates a round is sure to have"
            )

        if self.weighting != "examples":
            averaging = {"fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm"}
            if self.strategy not in averaging:
                raise ConfigError(
                    f"federation.weighting = {self.weighting!r} has no effect on {self.strategy}, which "
                    "selects or takes medians instead of averaging (use one of "
                    f"{', '.join(sorted(averaging))})"
                )
            if self.privacy is not None or self.secagg is not None:
                raise ConfigError(
                    f"federation.weighting = {self.weighting!r} with differential privacy or SecAgg+: both "
                    'need every site to weigh the same (keep weighting = "examples")'
                )
        if self.privacy is not None:
            from fedgin.federation.privacy import check_privacy

            check_privacy(self)
        if self.secagg is not None:
            from fedgin.federation.secure_aggregation import check_secagg

            check_secagg(self)

    def caveats(self) -> list[str]:
        """Settings that run but lose a guarantee: printed once where a federation starts."""
        notes = []
        f = self.num_malicious
        if self.strategy in {"krum", "multikrum"} and self.min_clients < 2 * f + 3:
            notes.append(
                f"{self.strategy} with num_malicious = {f} and min_clients = {self.min_clients}: Krum's "
                f"guarantee (Blanchard et al. 2017) needs n >= 2f + 3 = {2 * f + 3} replies; with fewer, "
                "an update is scored by fewer neighbours than there may be bad sites"
            )
        return notes


class StatsConfig(Settings):
    """Federated statistics (`fedgin stats`): what every site computes on its caches and how it protects
    what it sends (fedgin.statistics). Only aggregates leave a site: counts, sums, ranges, histograms."""

    splits: list[str] = Field(
        ["train", "val", "test"], min_length=1, description="The cached splits each site describes."
    )
    bins: int = Field(
        100, ge=2, le=10_000, description="Intensity histogram bins, between the federation's min and max."
    )
    min_count: int = Field(
        3,
        ge=1,
        description="A count below this is suppressed on the site (sent as 0): histogram bins, and the "
        "ranges of a group with fewer cases.",
    )
    noise_epsilon: float | None = Field(
        None,
        ge=1e-3,  # noise of scale 1000 already drowns every count; smaller is a slip, not a setting
        description="Laplace noise of scale 1/epsilon on every count a site sends (per count; see "
        "docs/statistics.md); None sends exact counts.",
    )
    volume_range_ml: tuple[PositiveFloat, PositiveFloat] = Field(
        (0.1, 10_000.0), strict=False, description="Organ volume histogram range (log-spaced bins), mL."
    )
    volume_bins: int = Field(60, ge=2, le=1_000)
    spacing_range_mm: tuple[float, PositiveFloat] = Field(
        (0.0, 10.0), strict=False, description="Voxel spacing histogram range, mm."
    )
    spacing_bins: int = Field(40, ge=2, le=1_000)

    @field_validator("volume_range_ml", "spacing_range_mm")
    @classmethod
    def _ordered_range(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not bounds[0] < bounds[1]:
            raise ValueError(f"the range must be [low, high] with low < high, got {list(bounds)}")
        return bounds


class TrackingConfig(Settings):
    """Experiment tracking; off unless a folder is given (the `tracking` extra installs TensorBoard)."""

    tensorboard: Path | None = Field(
        None, strict=False, description="Write TensorBoard event files into this folder."
    )


class RunConfig(Settings):
    """One experiment: data, model, GIN and training settings. Loaded from TOML, written into the run."""

    name: str = "run"
    seed: int = 42
    output: Path = Field(Path("runs/run"), strict=False)
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    gin: GINConfig = Field(default_factory=GINConfig)
    affine: AffineConfig = Field(default_factory=AffineConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


SettingsT = TypeVar("SettingsT", bound=Settings)


def read_toml(path: str | Path) -> dict:
    """The raw tables of a TOML file, with errors that name the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    except OSError as error:  # a folder, no permission
        raise ConfigError(f"{path}: cannot read the configuration ({error.strerror or error})") from None


def load_toml(path: str | Path, model: type[SettingsT]) -> SettingsT:
    """Load `model` from a TOML file, with errors that name the file and the offending key."""
    return validate(read_toml(path), model, source=str(path))


def validate(raw: dict, model: type[SettingsT], source: str = "configuration") -> SettingsT:
    """Validate a dictionary into `model`, turning pydantic's report into a short ConfigError.

    Unknown tables and keys are errors (with the closest known name), and so are numbers or switches
    written as strings (`rounds = "3"`).
    """
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        names = sorted(_setting_names(model))
        problems = validation_problems(error, lambda item: _problem(item, names))
        raise ConfigError(f"{source}: {problems}") from None


def _problem(item: Any, names: list[str]) -> str:
    """pydantic's message for one error, with what the user wrote where that helps them fix it."""
    value = item.get("input")
    if item["type"] == "extra_forbidden":
        key = str(item["loc"][-1]) if item["loc"] else ""
        close = difflib.get_close_matches(key, names, n=1)
        return "unknown setting" + (f" (did you mean {close[0]!r}?)" if close else "")
    message = str(item["msg"]).removeprefix("Value error, ")
    if item["type"] == "union_tag_not_found":
        key = str(item.get("ctx", {}).get("discriminator", "")).strip("'")
        return f"missing {key!r}, which says what kind of entry this is" + (
            ' (modality = "ct" or "mri")' if key == "modality" else ""
        )
    if item["type"] in ("int_type", "float_type", "bool_type") and isinstance(value, str):
        return f"{message}, got the string {value!r} (write numbers and true/false without quotes)"
    if item["type"] in ("literal_error", "finite_number") or (
        item["type"].endswith("_type") and isinstance(value, int | float | bool)
    ):
        return f"{message}, got {value!r}"
    return message


def _setting_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every table and key name of `model` and the settings nested in it (for did-you-mean hints)."""
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    pending = [field.annotation for field in model.model_fields.values()]
    while pending:
        annotation = pending.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _setting_names(annotation, seen)
        else:
            pending.extend(get_args(annotation))
    return names


def dump_toml(settings: Settings, path: str | Path) -> None:
    """Write the resolved settings as TOML (atomically), so a run records exactly what it used."""
    from fedgin.io_utils import atomic_write_text

    data = settings.model_dump(mode="json", exclude_none=True)
    atomic_write_text(Path(path), tomli_w.dumps(data))
