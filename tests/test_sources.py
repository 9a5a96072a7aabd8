"""Source discovery and loading against each real layout, with label mapping checked voxel for voxel."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from fedgin.cache import case_files
from fedgin.case_ids import MAX_CASE_ID_LENGTH, check_case_id
from fedgin.cli import app
from fedgin.errors import ConfigError, DataError
from fedgin.sources import MappedLabels, MaskLabels, discover, hash_split
from nifti_factory import (
    NNUNET_LABEL_MAP,
    make_phantom,
    reorient,
    save,
    write_amos,
    write_meta,
    write_nnunet,
    write_totalseg,
)


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


# Case ids are data, never paths: every layout's ids are refused with one line naming the file and row,
# and the data set is read only below its root. Each corrupt layout below is one the old `prepare` read
# (and, for the traversal, wrote outside the cache from).


def _totalseg_traversal(tmp: Path, root: Path) -> tuple[Path, str]:
    write_totalseg(root, ["s0001"])
    write_totalseg(tmp / "escape", ["s0"])  # what a/../../../../escape/s0 reaches from the root
    (root / "a").mkdir()
    meta = write_meta(root, ["image_id", "split"], [["s0001", "train"], ["a/../../../../escape/s0", "train"]])
    return meta, "line 3: image_id 'a/../../../../escape/s0' is not a plain name (it holds a path separator"


def _totalseg_absolute(tmp: Path, root: Path) -> tuple[Path, str]:
    write_totalseg(root, ["s0001"])
    write_totalseg(tmp / "outside", ["s9"])
    outside = str(tmp / "outside" / "s9")
    meta = write_meta(root, ["image_id", "split"], [["s0001", "train"], [outside, "train"]])
    return meta, f"line 3: image_id '{outside}' is not a plain name (it is an absolute path"


def _totalseg_separator(tmp: Path, root: Path) -> tuple[Path, str]:
    write_totalseg(root / "sub", ["s0001"])  # inside the root, but an id is a name, not a path
    meta = write_meta(root, ["image_id", "split"], [["sub/s0001", "train"]])
    return meta, "line 2: image_id 'sub/s0001' is not a plain name (it holds a path separator"


def _totalseg_duplicate(tmp: Path, root: Path) -> tuple[Path, str]:
    write_totalseg(root, ["s0001", "s0002"])
    rows = [["s0001", "train"], ["s0002", "val"], ["s0001", "test"]]
    return write_meta(root, ["image_id", "split"], rows), "lines 2 and 4 both list image_id 's0001'"


def _totalseg_mri_traversal(tmp: Path, root: Path) -> tuple[Path, str]:
    write_totalseg(root, ["s0001"], modality="mri", with_split_column=False)
    write_totalseg(root.parent, ["escape"], modality="mri", with_split_column=False)
    meta = write_meta(root, ["image_id"], [["s0001"], ["../escape"]])
    return meta, "line 3: image_id '../escape' is not a plain name (it holds a path separator"


def _totalseg_folder_without_meta(tmp: Path, root: Path) -> tuple[Path, str]:
    write_totalseg(root, ["s0001", "s 2"])
    (root / "meta.csv").unlink()
    return root / "s 2", "folder name 's 2' is not a plain name (it holds ' '"


def _totalseg_symlinked_folder(tmp: Path, root: Path) -> tuple[Path, str]:
    write_totalseg(root, ["s0001"])
    write_totalseg(tmp / "outside", ["s0002"])
    (root / "s0002").symlink_to(tmp / "outside" / "s0002", target_is_directory=True)
    write_meta(root, ["image_id", "split"], [["s0001", "train"], ["s0002", "train"]])
    return root / "s0002" / "ct.nii.gz", f"case s0002: resolves to {tmp / 'outside' / 's0002' / 'ct.nii.gz'}"


def _totalseg_symlink_loop(tmp: Path, root: Path) -> tuple[Path, str]:
    write_totalseg(root, ["s0001"])
    (root / "s0002").symlink_to(root / "s0002", target_is_directory=True)
    write_meta(root, ["image_id", "split"], [["s0001", "train"], ["s0002", "train"]])
    return root / "s0002" / "ct.nii.gz", "case s0002: cannot be resolved"


def _amos_dataset_json_key(tmp: Path, root: Path) -> tuple[Path, str]:
    write_amos(root, train_ids=[1])
    dataset = root / "dataset.json"
    meta = json.loads(dataset.read_text())
    meta["synthetic_modality"] = {"amos_0001": "ct", "../../escape/amos_0001": "ct"}
    dataset.write_text(json.dumps(meta))
    return dataset, "synthetic_modality: case id '../../escape/amos_0001' is not a plain name"


def _amos_duplicate(tmp: Path, root: Path) -> tuple[Path, str]:
    write_amos(root, train_ids=[1], val_ids=[1])
    first = root / "imagesTr" / "amos_0001.nii.gz"
    return root / "imagesVa" / "amos_0001.nii.gz", f"case id 'amos_0001' also names {first}"


def _amos_symlinked_file(tmp: Path, root: Path) -> tuple[Path, str]:
    write_amos(root, train_ids=[1])
    write_amos(tmp / "outside", train_ids=[2])
    for folder in ("imagesTr", "labelsTr"):
        (root / folder / "amos_0002.nii.gz").symlink_to(tmp / "outside" / folder / "amos_0002.nii.gz")
    return root / "imagesTr" / "amos_0002.nii.gz", "case amos_0002: resolves to"


def _nnunet_separator(tmp: Path, root: Path) -> tuple[Path, str]:
    write_nnunet(root, ["liver_1", "a\\..\\..\\x"])  # a legal file name on Linux, a path on Windows
    return (
        root / "imagesTr" / "a\\..\\..\\x_0000.nii.gz",
        "case name 'a\\\\..\\\\..\\\\x' is not a plain name",
    )


def _nnunet_hidden(tmp: Path, root: Path) -> tuple[Path, str]:
    write_nnunet(root, ["liver_1", ".x"])
    return root / "imagesTr" / ".x_0000.nii.gz", "case name '.x' is not a plain name (it starts with '.'"


def _nnunet_duplicate(tmp: Path, root: Path) -> tuple[Path, str]:
    write_nnunet(root, ["liver_1"])
    for folder, name in (("imagesTr", "liver_1_0000"), ("labelsTr", "liver_1")):
        nib.save(nib.load(root / folder / f"{name}.nii.gz"), root / folder / f"{name}.nii")
    return root / "imagesTr" / "liver_1_0000.nii.gz", f"case id 'liver_1' also names {root / 'imagesTr'}"


def _nnunet_symlinked_labels(tmp: Path, root: Path) -> tuple[Path, str]:
    write_nnunet(root, ["liver_1"])
    write_nnunet(tmp / "outside", ["liver_1"])
    shutil.rmtree(root / "labelsTr")
    (root / "labelsTr").symlink_to(tmp / "outside" / "labelsTr", target_is_directory=True)
    return root / "labelsTr" / "liver_1.nii.gz", "case liver_1: resolves to"


REFUSED_LAYOUTS = {
    "totalseg traversal": ("totalseg-ct", _totalseg_traversal),
    "totalseg absolute": ("totalseg-ct", _totalseg_absolute),
    "totalseg separator": ("totalseg-ct", _totalseg_separator),
    "totalseg duplicate row": ("totalseg-ct", _totalseg_duplicate),
    "totalseg-mri traversal": ("totalseg-mri", _totalseg_mri_traversal),
    "totalseg folder name": ("totalseg-ct", _totalseg_folder_without_meta),
    "totalseg symlink out": ("totalseg-ct", _totalseg_symlinked_folder),
    "totalseg symlink loop": ("totalseg-ct", _totalseg_symlink_loop),
    "amos dataset.json": ("amos", _amos_dataset_json_key),
    "amos duplicate": ("amos", _amos_duplicate),
    "amos symlink out": ("amos", _amos_symlinked_file),
    "nnunet separator": ("nnunet", _nnunet_separator),
    "nnunet hidden": ("nnunet", _nnunet_hidden),
    "nnunet duplicate": ("nnunet", _nnunet_duplicate),
    "nnunet symlink out": ("nnunet", _nnunet_symlinked_labels),
}


def _tree(folder: Path) -> set[str]:
    """Every path below `folder` (symlinks not followed), to show that nothing was written anywhere."""
    return {
        str(Path(base, name).relative_to(folder))
        for base, folders, files in os.walk(folder)
        for name in (*folders, *files)
    }


@pytest.mark.parametrize("layout", list(REFUSED_LAYOUTS))
def test_prepare_refuses_case_ids_that_are_paths_and_files_outside_the_root(
    tmp_path: Path, layout: str
) -> None:
    source, corrupt = REFUSED_LAYOUTS[layout]
    root, cache = tmp_path / "w" / "data" / "ts", tmp_path / "w" / "caches" / "site" / "cache"
    named, problem = corrupt(tmp_path, root)
    before = _tree(tmp_path)
    nnunet = ["--label-map", json.dumps(NNUNET_LABEL_MAP)] if source == "nnunet" else []
    result = CliRunner().invoke(
        app, ["prepare", "--source", source, "--root", str(root), "-o", str(cache), "--workers", "1", *nnunet]
    )
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {named}: ") and problem in line, line
    assert _tree(tmp_path) == before  # nothing written, inside the cache or outside it


def test_source_ids_that_are_plain_names_are_kept(tmp_path: Path) -> None:
    write_totalseg(tmp_path, ["s0001", "Case-2.b_x"])
    write_meta(tmp_path, ["image_id", "split"], [["s0001", "train"], ["Case-2.b_x", "val"], ["", ""]])
    assert [c.case_id for c in discover("totalseg-ct", tmp_path)] == [
        "Case-2.b_x",
        "s0001",
    ]  # ;; row: skipped
    write_meta(tmp_path, ["image_id", "split"], [["s0001", "train"], ["", "val"]])
    with pytest.raises(DataError, match="line 3: image_id '' is not a plain name \\(it is empty"):
        discover("totalseg-ct", tmp_path)
    with pytest.raises(DataError, match=f"it is {MAX_CASE_ID_LENGTH + 1} characters long"):
        check_case_id("s" * (MAX_CASE_ID_LENGTH + 1), tmp_path)
    with pytest.raises(DataError, match="it is an absolute path"):
        check_case_id("C:x", tmp_path)
    with pytest.raises(ValueError, match=re.escape("holds '..'")):
        case_files("totalseg-ct-a..b")


def test_predict_names_outputs_in_a_folder_only_after_plain_input_names(tmp_path: Path) -> None:
    phantom = make_phantom()
    save(phantom.image, phantom.affine, tmp_path / "in" / "scan 1.nii.gz")
    result = CliRunner().invoke(
        app, ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "none.pt"]
    )
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert f"{tmp_path / 'in' / 'scan 1.nii.gz'}: its case name 'scan 1' is not a plain name" in line
    assert "-o NAME.nii.gz" in line and not (tmp_path / "out").exists()
