"""Tests of the embedded synthetic abdomen generator (small grids, so the whole file runs in seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedgin.config import SynthConfig
from fedgin.errors import ConfigError
from fedgin.labels import AMOS_LABEL_NAMES, ORGAN_INDEX, TOTALSEG_MASKS
from fedgin.synth import Tissue, generate, make_subject, save_preview, subject_anatomy, subject_image

SMALL = {"shape": (64, 64, 24), "spacing": (6.0, 6.0, 13.0)}


def small_config(**overrides: object) -> SynthConfig:
    return SynthConfig(**{"subjects": 3, "seed": 7, **SMALL, **overrides})  # type: ignore[arg-type]


def test_make_subject_is_deterministic_and_seed_dependent() -> None:
    config = small_config()
    image_a, labels_a, affine = make_subject(config, 0, "ct")
    image_b, labels_b, _ = make_subject(config, 0, "ct")
    assert image_a.dtype == np.float32 and labels_a.dtype == np.uint8
    assert image_a.shape == labels_a.shape == (64, 64, 24)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    np.testing.assert_allclose(np.diag(affine)[:3], SMALL["spacing"])
    other_image, other_labels, _ = make_subject(small_config(seed=8), 0, "ct")
    assert not np.array_equal(labels_a, other_labels)
    assert not np.array_equal(image_a, other_image)
    assert not np.array_equal(labels_a, make_subject(config, 1, "ct")[1])


def test_modalities_share_the_anatomy_of_a_subject() -> None:
    config = small_config()
    _, labels_ct, _ = make_subject(config, 2, "ct")
    _, labels_t2, _ = make_subject(config, 2, "mri_t2")
    np.testing.assert_array_equal(labels_ct, labels_t2)


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_labels_cover_every_organ_on_the_right_side(index: int) -> None:
    config = small_config()
    anatomy = subject_anatomy(config, index)
    labels = anatomy.labels()
    assert set(np.unique(labels)) == set(range(6))
    centre_x = (labels.shape[0] - 1) / 2
    # RAS+ voxel axes: the patient's right is high x. Liver right (high x), spleen left (low x).
    assert np.argwhere(labels == ORGAN_INDEX["liver"])[:, 0].mean() > centre_x
    assert np.argwhere(labels == ORGAN_INDEX["spleen"])[:, 0].mean() < centre_x
    assert np.argwhere(labels == ORGAN_INDEX["gallbladder"])[:, 0].mean() > centre_x
    assert np.argwhere(anatomy.structure == 3)[:, 0].mean() < centre_x  # AMOS 3 = left kidney
    assert np.argwhere(anatomy.structure == 2)[:, 0].mean() > centre_x  # AMOS 2 = right kidney
    # Organs stay clear of the volume border (a slice or two of margin everywhere).
    organs = labels > 0
    for axis in range(3):
        moved = np.moveaxis(organs, axis, 0)
        assert not moved[0].any() and not moved[-1].any()


def test_contrasts_differ_between_modalities() -> None:
    """Literature relaxation times give MRI contrasts that partly invert relative to CT."""
    config = small_config(shape=(96, 96, 32), spacing=(4.0, 4.0, 10.0))
    anatomy = subject_anatomy(config, 0)
    labels = anatomy.labels()
    means = {}
    # The single mix's protocols (portal-venous CT, spin-echo T1 and T2 without gadolinium or fat saturation):
    # the realistic mixes also draw fat-saturated and post-gadolinium MRI, whose contrasts differ.
    protocols = {"ct": "ct_pv_120kvp_standard_5mm", "mri_t1": "mr15t_t1_se_a", "mri_t2": "mr15t_t2_tse_a"}
    for modality, protocol in protocols.items():
        image = subject_image(config, 0, modality, anatomy, protocol)
        organ = {name: float(image[labels == ORGAN_INDEX[name]].mean()) for name in ("liver", "spleen")}
        organ["gallbladder"] = float(image[labels == ORGAN_INDEX["gallbladder"]].mean())
        organ["fat"] = float(image[anatomy.tissue == Tissue.FAT].mean())
        organ["muscle"] = float(image[anatomy.tissue == Tissue.MUSCLE].mean())
        means[modality] = organ
    ct, t1, t2 = means["ct"], means["mri_t1"], means["mri_t2"]
    assert t1["liver"] > t1["spleen"] and t2["spleen"] > t2["liver"]  # liver/spleen ranking inverts
    assert ct["fat"] < ct["muscle"] and t1["fat"] > t1["muscle"]  # fat dark on CT, bright on T1
    assert ct["gallbladder"] < ct["liver"] and t2["gallbladder"] > 2 * t2["liver"]  # bile bright on T2
    assert t1["gallbladder"] < t1["liver"]


def test_mri_is_positive_and_ct_in_hounsfield_range() -> None:
    config = small_config()
    ct, _, _ = make_subject(config, 0, "ct")
    t1, _, _ = make_subject(config, 0, "mri_t1")
    assert ct.min() >= -1024 and ct.max() <= 3071 and ct.min() < -900
    assert t1.min() >= 0 and 100 < t1.max() < 5000


def read_meta(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def test_totalseg_layout(tmp_path: Path) -> None:
    config = small_config(subjects=4, modalities=["mri_t2"])
    out = tmp_path / "ts"
    summary = generate(config, "totalseg", out, progress=False)
    assert [case.case_id for case in summary.cases] == ["s0000", "s0001", "s0002", "s0003"]
    rows = read_meta(out / "meta.csv")
    assert [row["image_id"] for row in rows] == ["s0000", "s0001", "s0002", "s0003"]
    splits = [row["split"] for row in rows]
    assert "train" in splits and "val" in splits and set(splits) <= {"train", "val", "test"}
    assert {row["sequence"] for row in rows} == {"t2"}
    case = out / "s0001"
    assert not (case / "ct.nii.gz").exists()
    image = nib.load(case / "mri.nii.gz")
    np.testing.assert_allclose(image.header.get_zooms(), SMALL["spacing"])
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert sorted(p.name for p in (case / "segmentations").iterdir()) == sorted(
        f"{name}.nii.gz" for name in TOTALSEG_MASKS
    )
    left = np.asarray(nib.load(case / "segmentations" / "kidney_left.nii.gz").dataobj)
    right = np.asarray(nib.load(case / "segmentations" / "kidney_right.nii.gz").dataobj)
    assert left.dtype == np.uint8 and set(np.unique(left)) == {0, 1}
    assert np.argwhere(left)[:, 0].mean() < np.argwhere(right)[:, 0].mean()  # RAS+: patient's right = high x
    # The written masks are the labels of make_subject.
    _, labels, _ = make_subject(config, summary.cases[1].subject, "mri_t2")
    liver = np.asarray(nib.load(case / "segmentations" / "liver.nii.gz").dataobj)
    np.testing.assert_array_equal(liver, labels == ORGAN_INDEX["liver"])


def test_totalseg_output_is_deterministic(tmp_path: Path) -> None:
    config = small_config(subjects=1)
    generate(config, "totalseg", tmp_path / "a", progress=False)
    generate(config, "totalseg", tmp_path / "b", progress=False)
    for name in ("s0000/ct.nii.gz", "s0000/segmentations/pancreas.nii.gz", "meta.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert nib.load(tmp_path / "a" / "s0000/ct.nii.gz").get_data_dtype() == np.int16


def test_totalseg_refuses_ct_and_mri_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one image kind"):
        generate(small_config(modalities=["ct", "mri_t1"]), "totalseg", tmp_path / "x", progress=False)


def test_amos_layout(tmp_path: Path) -> None:
    config = small_config(subjects=3, modalities=["ct", "mri_t1"])
    out = tmp_path / "amos"
    summary = generate(config, "amos", out, progress=False)
    ids = {case.case_id: case.modality for case in summary.cases}
    assert len(ids) == 6
    for case_id, modality in ids.items():
        number = int(case_id.removeprefix("amos_"))
        assert (number < 500) == (modality == "ct") and number >= 1
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {str(k): v for k, v in AMOS_LABEL_NAMES.items()}
    listed = dataset["training"] + dataset["validation"]
    assert len(dataset["training"]) >= 2 and len(dataset["validation"]) >= 2
    assert len(listed) == 6
    for entry in listed:
        assert (out / entry["image"]).is_file() and (out / entry["label"]).is_file()
    label = nib.load(out / listed[0]["label"])
    values = set(np.unique(np.asarray(label.dataobj)))
    assert {1, 2, 3, 4, 6, 10} <= values <= set(AMOS_LABEL_NAMES)
    np.testing.assert_allclose(label.header.get_zooms(), SMALL["spacing"])


def test_refuses_non_empty_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "something.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="busy"):
        generate(small_config(subjects=1), "amos", out, progress=False)
    generate(small_config(subjects=1), "amos", out, progress=False, overwrite=True)
    assert (out / "something.txt").read_text() == "keep me"
    assert (out / "dataset.json").is_file()


def test_preview_png(tmp_path: Path) -> None:
    png = save_preview(tmp_path / "p.png", small_config(modalities=["ct", "mri_t2"]), subjects=1, slices=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
