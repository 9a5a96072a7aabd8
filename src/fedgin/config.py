"""Configuration objects: every setting has a default, and a run's settings load from one TOML file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal, TypeVar

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedgin.errors import ConfigError

Modality = Literal["ct", "mri"]
#: Synthetic contrasts the embedded generator renders (SPEC section 5).
SynthModality = Literal["ct", "mri_t1", "mri_t2"]


class Settings(BaseModel):
    """Base of every configuration section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PreprocessConfig(Settings):
    """How a source volume becomes a cached volume (SPEC section 4).

    The defaults suit the embedded synthetic data set (128 x 128 slices at 3 mm); the `paper` preset uses
    1.5 mm and 256 x 256 as the authors did.
    """

    canonical: bool = Field(True, description="Reorient to RAS+ so that the last axis is axial (S).")
    spacing_mm: float | None = Field(
        3.0, gt=0, description="In-plane spacing to resample to; None keeps the source spacing."
    )
    size: int | None = Field(
        128, ge=8, description="Crop or pad every axial slice to size x size; None keeps the resampled size."
    )
    ct_window: tuple[float, float] = Field((-125.0, 275.0), description="CT intensity window in HU.")
    mri_percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="MRI intensities are clipped to these percentiles."
    )
    zscore: bool = Field(True, description="Per-volume z-score normalisation after windowing/clipping.")


class SynthConfig(Settings):
    """The embedded synthetic abdomen generator (SPEC section 5)."""

    subjects: int = Field(10, ge=1)
    seed: int = 0
    shape: tuple[int, int, int] = Field((128, 128, 64), description="Voxels along x, y, z (z axial).")
    spacing: tuple[float, float, float] = Field((3.0, 3.0, 5.0), description="Voxel size in mm.")
    modalities: list[SynthModality] = Field(default_factory=lambda: ["ct"])


SettingsT = TypeVar("SettingsT", bound=Settings)


def load_toml(path: str | Path, model: type[SettingsT]) -> SettingsT:
    """Load `model` from a TOML file, with errors that name the file and the offending key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return validate(raw, model, source=str(path))


def validate(raw: dict, model: type[SettingsT], source: str = "configuration") -> SettingsT:
    """Validate a dictionary into `model`, turning pydantic's report into a short ConfigError."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(root)'}: {item['msg']}"
            for item in error.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def dump_toml(settings: Settings, path: str | Path) -> None:
    """Write the resolved settings as TOML (atomically), so a run records exactly what it used."""
    from fedgin.io_utils import atomic_write_text

    data = settings.model_dump(mode="json", exclude_none=True)
    atomic_write_text(Path(path), tomli_w.dumps(data))
