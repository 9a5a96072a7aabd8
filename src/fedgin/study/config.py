"""The study's configuration: sites, methods, scenario, seeds and the shared training recipe."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from fedgin.config import (
    AffineConfig,
    DataSpec,
    FederationConfig,
    GINConfig,
    ModelConfig,
    PreprocessConfig,
    Settings,
    TrackingConfig,
    TrainConfig,
    load_toml,
)
from fedgin.errors import ConfigError

Method = Literal[
    "local",
    "ct_only",
    "mri_only",
    "fl_no_gin",
    "fedgin",
    "centralized",
    "centralized_gin",
    "fedgin_balanced",
    "fedgin_ipa",
    "fedgin_ipa_balanced",
]


@dataclass(frozen=True)
class MethodInfo:
    """How one method of the study trains: on which data, federated or pooled, with GIN or not."""

    label: str
    federated: bool
    gin: bool
    data: Literal["site", "ct", "mri", "all"]
    description: str
    ipa: bool = False  # GIN with IPA and the consistency term (gin.ipa)
    weighting: Literal["examples", "modality_balanced"] = "examples"  # federation.weighting


#: The methods of the FedGIN study (SPEC section 3), in the order the report lists them.
METHODS: dict[str, MethodInfo] = {
    "local": MethodInfo("Local", False, False, "site", "each site alone on its own data"),
    "ct_only": MethodInfo("CT-only", False, False, "ct", "the CT of all sites pooled"),
    "mri_only": MethodInfo("MRI-only", False, False, "mri", "the MRI of all sites pooled"),
    "fl_no_gin": MethodInfo("FL w/o GIN", True, False, "all", "FedAvg over the sites, no GIN"),
    "fedgin": MethodInfo("FedGIN", True, True, "all", "FedAvg over the sites, GIN on every batch"),
    "centralized": MethodInfo("Centralized", False, False, "all", "all data pooled, no GIN"),
    "centralized_gin": MethodInfo("Centralized GIN", False, True, "all", "all data pooled, GIN on"),
    # Beyond the paper (issue 18): GIN as Ouyang et al. use it, and FedAvg weights that do not let the
    # modality with more slices dominate.
    "fedgin_balanced": MethodInfo(
        "FedGIN, modality-balanced", True, True, "all",
        "FedGIN, each modality half of the average", weighting="modality_balanced",
    ),
    "fedgin_ipa": MethodInfo(
        "FedGIN+IPA", True, True, "all", "FedGIN with IPA blending and the consistency loss", ipa=True
    ),
    "fedgin_ipa_balanced": MethodInfo(
        "FedGIN+IPA, modality-balanced", True, True, "all",
        "FedGIN+IPA, each modality half of the average", ipa=True, weighting="modality_balanced",
    ),
}  # fmt: skip

#: The methods of the paper, a study's default.
PAPER_METHODS = ["local", "ct_only", "mri_only", "fl_no_gin", "fedgin", "centralized", "centralized_gin"]

#: MRI:CT ratios of the limited-data scenario (cases), as in the paper.
PAPER_RATIOS = ["1:0", "1:1", "1:2", "1:5", "all"]


class StudySite(Settings):
    """One site (client) of the study: its unpaired CT and MRI training data."""

    name: str
    ct: list[DataSpec] = Field(default_factory=list)
    mri: list[DataSpec] = Field(default_factory=list)


class PrepareSpec(Settings):
    """A source data set the study prepares into a cache before training (skipped when up to date)."""

    source: Literal["totalseg-ct", "totalseg-mri", "amos", "nnunet"]
    root: Path = Field(..., strict=False)
    cache: Path = Field(..., strict=False)
    split: Literal["train", "val", "test"] | None = Field(None, description="Put every case in this split.")


class StudyConfig(Settings):
    """A study: every method of `methods`, for each seed (and, limited scenario, each MRI:CT ratio)."""

    name: str = "study"
    output: Path = Field(Path("runs/study"), strict=False)
    scenario: Literal["complete", "limited"] = "complete"
    seeds: list[int] = Field(default_factory=lambda: [42, 123, 215], min_length=1)
    methods: list[Method] = Field(default_factory=lambda: list(PAPER_METHODS), min_length=1)
    ratios: list[str] = Field(default_factory=lambda: list(PAPER_RATIOS))
    limited_mri_cases: int = Field(
        4, ge=1, description="Limited scenario: MRI training cases of the whole federation (sites in order)."
    )
    sites: list[StudySite] = Field(min_length=1)
    val: list[DataSpec] = Field(default_factory=list, description="Model selection (best checkpoint).")
    test: list[DataSpec] = Field(min_length=1, description="Held-out CT and MRI, never seen in training.")
    prepare: list[PrepareSpec] = Field(default_factory=list)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    gin: GINConfig = Field(default_factory=GINConfig)
    affine: AffineConfig = Field(default_factory=AffineConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    federation: FederationConfig = Field(
        default_factory=lambda: FederationConfig(rounds=10, local_steps=50),
        description="rounds x local_steps per site set every method's step budget; clients come from sites.",
    )
    overlay_cases: int = Field(2, ge=0, description="Test cases per modality drawn as overlays.")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="TensorBoard: every run logs into <tensorboard>/seed<S>[/<point>]/<run> (not part of a "
        "run's identity; a resumed study may add or drop it).",
    )
    stats: bool = Field(
        True, description="Federated statistics of the sites' data before training (<study>/stats)."
    )
    cross_site: bool = Field(
        True,
        description="Evaluate FedGIN, FL w/o GIN and every local model on every site's held-out (test) cases "
        "(fedgin.federation.cross_site), per seed and scenario point.",
    )

    @field_validator("ratios")
    @classmethod
    def _check_ratios(cls, ratios: list[str], info: ValidationInfo) -> list[str]:
        if not ratios and info.data.get("scenario") == "limited":
            raise ValueError("the limited scenario needs at least one MRI:CT ratio (e.g. '1:2')")
        for ratio in ratios:
            parse_ratio(ratio)
        return ratios

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        names = [site.name for site in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        if self.federation.local_steps is None:
            raise ValueError("federation.local_steps must be set: it fixes the step budget of every method")
        return self


def parse_ratio(ratio: str) -> float | None:
    """'1:2' -> 2.0 CT cases per MRI case; 'all' -> None (every CT case)."""
    if ratio == "all":
        return None
    parts = ratio.split(":")
    try:
        mri, ct = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"ratio {ratio!r} is not MRI:CT like '1:2' or 'all'") from None
    if mri <= 0 or ct < 0:
        raise ValueError(f"ratio {ratio!r}: MRI must be > 0 and CT >= 0")
    return ct / mri


PRESETS = ("quick", "full-synthetic", "paper")
SCENARIOS = ("complete", "limited")


def preset_path(preset: str, scenario: str) -> Path:
    """The TOML file of a shipped preset (e.g. quick + complete -> presets/quick-complete.toml)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; choose complete or limited")
    return Path(str(resources.files("fedgin.study") / "presets" / f"{preset}-{scenario}.toml"))


def load_study(path: str | Path) -> StudyConfig:
    return load_toml(path, StudyConfig)
