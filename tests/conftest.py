"""Shared fixtures: small real caches of the synthetic abdomen (CT and MRI T2) for training and federation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgin.config import PreprocessConfig, SynthConfig
from fedgin.prepare import prepare
from fedgin.synth import generate


@pytest.fixture(scope="session")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"ct": cache, "t2": cache}: 4 subjects each at 48 x 48 x 12 voxels, prepared at 8 mm and 48 x 48."""
    base = tmp_path_factory.mktemp("synthetic_caches")
    preprocess = PreprocessConfig(spacing_mm=8.0, size=48)
    out = {}
    for name, source, modality, seed in (("ct", "totalseg-ct", "ct", 1), ("t2", "totalseg-mri", "mri_t2", 2)):
        synth = SynthConfig(
            subjects=4, seed=seed, shape=(48, 48, 12), spacing=(8, 8, 25), modalities=[modality]
        )
        generate(synth, "totalseg", base / f"data_{name}", progress=False)
        report = prepare(
            source, base / f"data_{name}", base / f"cache_{name}", preprocess, workers=1, progress=False
        )
        assert report.ok, report.failed
        out[name] = base / f"cache_{name}"
    return out
