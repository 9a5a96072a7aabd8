"""Patient orientation of the synthetic abdomen: organs on their anatomical side in RAS+ world coordinates.

RAS+ (the NIfTI / nibabel convention): world x grows to the patient's Right, y to Anterior, z to Superior.
The centroids are taken through each written file's own affine, so the tests hold whatever the voxel order.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

import fedgin.prepare as prepare_module
from fedgin.cache import Cache
from fedgin.config import PreprocessConfig, SynthConfig
from fedgin.labels import ORGAN_INDEX
from fedgin.synth import Structure, generate

SEEDS = [0, 1, 2, 3, 4]
GRID = {"shape": (64, 64, 32), "spacing": (6.0, 6.0, 10.0)}


def synth_config(seed: int, modalities: list[str]) -> SynthConfig:
    return SynthConfig(subjects=2, seed=seed, modalities=modalities, **GRID)  # type: ignore[arg-type]


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The centroid of `mask` in world (scanner) mm through `affine`."""
    voxels = np.argwhere(mask)
    assert len(voxels), "structure missing"
    return apply_affine(affine, voxels.mean(axis=0))


def assert_anatomical_sides(centre: dict[str, np.ndarray]) -> None:
    """Right-sided organs at world x > 0, left-sided at x < 0; the liver above and in front of the kidneys."""
    for name in ("liver", "gallbladder", "kidney_right"):
        assert centre[name][0] > 0, f"{name} should be on the patient's right (x > 0): {centre[name]}"
    for name in ("spleen", "kidney_left"):
        assert centre[name][0] < 0, f"{name} should be on the patient's left (x < 0): {centre[name]}"
    assert centre["liver"][0] > centre["spleen"][0] + 50.0
    assert centre["kidney_right"][0] > centre["kidney_left"][0] + 50.0
    kidneys = (centre["kidney_right"] + centre["kidney_left"]) / 2
    assert centre["liver"][2] > kidneys[2] + 20.0  # superior
    assert centre["liver"][1] > kidneys[1]  # anterior: the kidneys are retroperitoneal


@pytest.mark.parametrize("seed", SEEDS)
def test_totalseg_masks_sit_on_their_anatomical_side(seed: int, tmp_path: Path) -> None:
    out = tmp_path / "ts"
    generate(synth_config(seed, ["ct"]), "totalseg", out, progress=False)
    cases = sorted(path for path in out.iterdir() if path.is_dir())
    assert len(cases) == 2
    for case in cases:
        image = nib.load(case / "ct.nii.gz")
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        centre = {}
        for name in ("liver", "gallbladder", "kidney_right", "kidney_left", "spleen"):
            mask = nib.load(case / "segmentations" / f"{name}.nii.gz")
            np.testing.assert_array_equal(mask.affine, image.affine)
            centre[name] = world_centroid(np.asarray(mask.dataobj) > 0, mask.affine)
        assert_anatomical_sides(centre)


@pytest.mark.parametrize("seed", SEEDS)
def test_amos_labels_sit_on_their_anatomical_side(seed: int, tmp_path: Path) -> None:
    out = tmp_path / "amos"
    summary = generate(synth_config(seed, ["ct", "mri_t1"]), "amos", out, progress=False)
    assert len(summary.cases) == 4
    labels = sorted([*out.glob("labelsTr/*.nii.gz"), *out.glob("labelsVa/*.nii.gz")])
    assert len(labels) == 4
    codes = {
        "liver": Structure.LIVER,
        "gallbladder": Structure.GALLBLADDER,
        "kidney_right": Structure.KIDNEY_RIGHT,
        "kidney_left": Structure.KIDNEY_LEFT,
        "spleen": Structure.SPLEEN,
        "ivc": Structure.IVC,
        "aorta": Structure.AORTA,
    }
    for path in labels:
        label = nib.load(path)
        image = nib.load(path.parent.parent / path.parent.name.replace("labels", "images") / path.name)
        np.testing.assert_array_equal(label.affine, image.affine)
        data = np.asarray(label.dataobj)
        centre = {name: world_centroid(data == code, label.affine) for name, code in codes.items()}
        assert_anatomical_sides(centre)
        assert centre["ivc"][0] > 0, f"IVC should be on the patient's right: {centre['ivc']}"
        assert centre["aorta"][0] < centre["ivc"][0]  # the aorta runs left of the IVC


def test_prepared_cache_has_the_liver_at_high_x(tmp_path: Path) -> None:
    """The cache's (z, y, x) arrays are RAS+: right = high column, anterior = high row, superior = last."""
    data = tmp_path / "ts"
    generate(synth_config(0, ["ct"]), "totalseg", data, progress=False)
    config = PreprocessConfig(spacing_mm=4.0, size=100)  # resampled (96 x 96) and padded: a real transform
    report = prepare_module.prepare(
        "totalseg-ct", data, tmp_path / "cache", config, workers=1, progress=False
    )
    assert report.ok, report.failed
    cache = Cache(tmp_path / "cache")
    entries = cache.cases()
    assert len(entries) == 2
    for entry in entries:
        label = cache.load_label(entry, mmap=False)
        assert label.shape[1:] == (100, 100)
        width = label.shape[2]
        geometry = cache.geometry(entry)

        def centroid(organ: str, label: np.ndarray = label) -> np.ndarray:
            z, y, x = np.argwhere(label == ORGAN_INDEX[organ]).mean(axis=0)
            return np.array([x, y, z])  # RAS voxel indices

        liver, spleen, kidneys = centroid("liver"), centroid("spleen"), centroid("kidneys")
        assert liver[0] > (width - 1) / 2 > spleen[0]  # liver at high x (patient's right), spleen low
        assert liver[1] > kidneys[1] and liver[2] > kidneys[2]  # anterior and superior to the kidneys
        # The cached geometry maps the cache's voxels back to the same world positions as the source file.
        case_id = entry.case_id.removeprefix("totalseg-ct-")
        mask = nib.load(data / case_id / "segmentations" / "liver.nii.gz")
        source_liver = world_centroid(np.asarray(mask.dataobj) > 0, mask.affine)
        cached_liver = apply_affine(np.array(geometry.affine), liver)
        assert cached_liver[0] > 0
        np.testing.assert_allclose(cached_liver, source_liver, atol=4.0)
