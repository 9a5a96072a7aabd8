"""Source discovery and loading against each real layout, with label mapping checked voxel for voxel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedgin.errors import ConfigError, DataError
from fedgin.sources import MappedLabels, MaskLabels, discover, hash_split
from nifti_factory import NNUNET_LABEL_MAP, reorient, write_amos, write_meta, write_nnunet, write_totalseg


def test_totalseg_ct_bom_meta_splits_and_orientations(tmp_path: Path) -> None:
    codes = {"s0001": "RAS", "s0002": "LPS", "s0003": "ASL"}
    phantoms = write_totalseg(tmp_path, list(codes), splits=["train", "val", "test"], axcodes=codes)
    assert (tmp_path / "meta.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    cases = discover("totalseg-ct", tmp_path)
    assert [(c.case_id, c.split, c.modality, c.domain) for c in cases] == [
        ("s0001", "train", "ct", "ct"),
        ("s0002", "val", "ct", "ct"),
        ("s0003", "test", "ct", "ct"),
    ]
    assert cases[0].uid == "totalseg-ct-s0001"
    assert isinstance(cases[0].labels, MaskLabels)
    for case in cases:
        loaded = case.load()
        phantom = phantoms[case.case_id]
        expected, _ = reorient(phantom.label, phantom.affine, codes[case.case_id])
        assert loaded.label.dtype == np.uint8
        np.testing.assert_array_equal(loaded.label, expected)  # kidney_left + kidney_right -> 2
        assert loaded.image.shape == expected.shape
        assert np.asarray(loaded.image.dataobj).dtype == np.float32
    assert set(np.unique(cases[0].load().label)) == {0, 1, 2, 3, 4, 5}


def test_totalseg_mri_without_split_column_uses_hash_and_sequence(tmp_path: Path) -> None:
    ids = ["s0010", "s0011"]
    write_totalseg(tmp_path, ids, modality="mri", with_split_column=False, sequences=["T2", ""], bom=False)
    cases = discover("totalseg-mri", tmp_path)
    assert [c.split for c in cases] == [hash_split(i) for i in ids]
    assert [c.domain for c in cases] == ["mri_t2", "mri"]
    assert cases[0].image.name == "mri.nii.gz"
    assert cases[0].load().label.max() == 5
    assert {hash_split(f"s{i:04d}") for i in range(200)} == {"train", "val", "test"}


def test_amos_ids_modalities_splits_and_label_mapping(tmp_path: Path) -> None:
    phantoms = write_amos(tmp_path, train_ids=[5, 510], val_ids=[20], test_ids=[30])
    cases = discover("amos", tmp_path)
    assert [(c.case_id, c.modality, c.split) for c in cases] == [
        ("amos_0005", "ct", "train"),
        ("amos_0020", "ct", "val"),
        ("amos_0510", "mri", "train"),
    ]  # imagesTs has no labels: not a case
    assert [c.case_id for c in discover("amos", tmp_path, modality="mri")] == ["amos_0510"]
    assert {c.split for c in discover("amos", tmp_path, split_override="test")} == {"test"}
    case = cases[0]
    assert isinstance(case.labels, MappedLabels)
    phantom = phantoms["amos_0005"]
    amos, _ = reorient(phantom.amos_label, phantom.affine, "LPS")
    label = case.load().label
    for source_value, fedgin_class in {1: 3, 2: 2, 3: 2, 4: 5, 6: 1, 7: 0, 10: 4, 0: 0}.items():
        assert (label[amos == source_value] == fedgin_class).all(), source_value
    np.testing.assert_array_equal(label, reorient(phantom.label, phantom.affine, "LPS")[0])


def test_totalseg_protocol_from_meta_csv_or_empty(tmp_path: Path) -> None:
    ids = ["s0001", "s0002", "s0003"]
    write_totalseg(tmp_path, ids, splits=["train", "val", "test"])
    # The real meta.csv (as written by the factory) has no protocol column: every protocol is unknown.
    assert [c.protocol for c in discover("totalseg-ct", tmp_path)] == ["", "", ""]
    write_meta(
        tmp_path,
        ["image_id", "split", "protocol", "manufacturer"],
        [
            ["s0001", "train", "ct_pv_120kvp_soft_3mm", "Siemens"],
            ["s0002", "val", "", "GE"],
            ["s0003", "test", " ct_art_100kvp_sharp_1mm ", "Philips"],
        ],
    )
    cases = discover("totalseg-ct", tmp_path)
    assert [c.protocol for c in cases] == ["ct_pv_120kvp_soft_3mm", "", "ct_art_100kvp_sharp_1mm"]
    assert "protocol" not in cases[0].extra and cases[0].extra == {"manufacturer": "Siemens"}


def test_amos_protocol_from_dataset_json_or_empty(tmp_path: Path) -> None:
    write_amos(tmp_path, train_ids=[1, 501], val_ids=[502])
    assert [c.protocol for c in discover("amos", tmp_path)] == ["", "", ""]  # real AMOS: no protocol
    dataset = tmp_path / "dataset.json"
    meta = json.loads(dataset.read_text())
    meta["synthetic_modality"] = {"amos_0001": "ct", "amos_0501": "mri_t1", "amos_0502": "mri_t2"}
    meta["synthetic_protocol"] = {"amos_0001": "ct_pv_120kvp_soft_3mm", "amos_0501": "mr3t_t1_gre_opposed"}
    dataset.write_text(json.dumps(meta))
    cases = discover("amos", tmp_path)
    assert [(c.case_id, c.domain, c.protocol) for c in cases] == [
        ("amos_0001", "ct", "ct_pv_120kvp_soft_3mm"),
        ("amos_0501", "mri_t1", "mr3t_t1_gre_opposed"),
        ("amos_0502", "mri_t2", ""),  # not listed in synthetic_protocol
    ]
    meta["synthetic_protocol"] = ["ct_pv_120kvp_soft_3mm"]
    dataset.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="synthetic_protocol") as caught:
        discover("amos", tmp_path)
    assert "dataset.json" in str(caught.value) and "\n" not in str(caught.value)
    dataset.write_text('{"synthetic_protocol": {')
    with pytest.raises(DataError, match="not a valid JSON object") as caught:
        discover("amos", tmp_path)
    assert "dataset.json" in str(caught.value) and "\n" not in str(caught.value)


def test_nnunet_with_label_map_and_dataset_json(tmp_path: Path) -> None:
    phantoms = write_nnunet(tmp_path, ["liver_001", "liver_002"], channel="CT", test=["liver_100"])
    cases = discover("nnunet", tmp_path, label_map=NNUNET_LABEL_MAP)
    assert [(c.case_id, c.split, c.modality) for c in cases] == [
        ("liver_001", "train", "ct"),
        ("liver_002", "train", "ct"),
        ("liver_100", "test", "ct"),
    ]
    phantom = phantoms["liver_001"]
    np.testing.assert_array_equal(cases[0].load().label, reorient(phantom.label, phantom.affine, "ASL")[0])
    assert {c.protocol for c in cases} == {""}  # nnU-Net folders record no acquisition protocol
    assert discover("nnunet", tmp_path, label_map=NNUNET_LABEL_MAP, modality="mri")[0].modality == "mri"
    with pytest.raises(ConfigError, match="label map"):
        discover("nnunet", tmp_path)


def test_nnunet_modality_from_dataset_json_or_required(tmp_path: Path) -> None:
    write_nnunet(tmp_path / "t2", ["a"], channel="T2")
    assert discover("nnunet", tmp_path / "t2", label_map=NNUNET_LABEL_MAP)[0].domain == "mri_t2"
    write_nnunet(tmp_path / "none", ["a"], channel=None)
    with pytest.raises(ConfigError, match="modality"):
        discover("nnunet", tmp_path / "none", label_map=NNUNET_LABEL_MAP)


def test_unknown_source_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown source"):
        discover("kits", tmp_path)
