"""One test per bad input: a one-line error naming the file and problem; good cases are still prepared."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedgin.cache import read_index
from fedgin.config import PreprocessConfig
from fedgin.errors import DataError
from fedgin.prepare import prepare
from nifti_factory import (
    NNUNET_LABEL_MAP,
    make_phantom,
    save,
    write_amos,
    write_meta,
    write_nnunet,
    write_totalseg,
)

CONFIG = PreprocessConfig(spacing_mm=None, size=24)
GOOD, BAD = "s0001", "s0002"


def _prepare_with_bad_case(tmp_path: Path, corrupt: Callable[[Path], Path], problem: str) -> None:
    """Two TotalSegmentator cases, the second corrupted; check the report, the message and the index."""
    root = tmp_path / "data"
    write_totalseg(root, [GOOD, BAD])
    bad_file = corrupt(root / BAD)
    out = tmp_path / "cache"
    report = prepare("totalseg-ct", root, out, CONFIG, workers=1, progress=False)
    assert not report.ok and len(report.failed) == 1
    message = report.failed[0]
    assert "\n" not in message
    assert message.startswith(f"{bad_file}: ") and problem in message, message
    assert report.prepared == [f"totalseg-ct-{GOOD}"]
    assert list(read_index(out)) == [f"totalseg-ct-{GOOD}"]
    with pytest.raises(DataError, match=re.escape(problem)):
        prepare("totalseg-ct", root, tmp_path / "cache2", CONFIG, workers=1, progress=False, fail_fast=True)


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, make_phantom().affine if affine is None else affine), path)
    return path


def test_missing_image(tmp_path: Path) -> None:
    def corrupt(case: Path) -> Path:
        (case / "ct.nii.gz").unlink()
        return case / "ct.nii.gz"

    _prepare_with_bad_case(tmp_path, corrupt, "file not found")


def test_case_folder_missing_from_disk(tmp_path: Path) -> None:
    def corrupt(case: Path) -> Path:
        for path in sorted(case.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        case.rmdir()
        return case / "ct.nii.gz"

    _prepare_with_bad_case(tmp_path, corrupt, "file not found")


def test_missing_mask(tmp_path: Path) -> None:
    def corrupt(case: Path) -> Path:
        (case / "segmentations" / "spleen.nii.gz").unlink()
        return case / "segmentations" / "spleen.nii.gz"

    _prepare_with_bad_case(tmp_path, corrupt, "file not found")


def test_shape_mismatch(tmp_path: Path) -> None:
    def corrupt(case: Path) -> Path:
        return _write(case / "segmentations" / "liver.nii.gz", np.zeros((24, 20, 5), np.uint8))

    _prepare_with_bad_case(tmp_path, corrupt, "shape (24, 20, 5) differs from the image's (24, 20, 6)")


def test_affine_mismatch(tmp_path: Path) -> None:
    def corrupt(case: Path) -> Path:
        affine = make_phantom().affine.copy()
        affine[0, 3] += 7.5
        return _write(case / "segmentations" / "liver.nii.gz", np.zeros((24, 20, 6), np.uint8), affine)

    _prepare_with_bad_case(tmp_path, corrupt, "affine differs")


def test_2d_image(tmp_path: Path) -> None:
    _prepare_with_bad_case(
        tmp_path, lambda case: _write(case / "ct.nii.gz", np.zeros((24, 20), np.float32)), "image is 2D"
    )


def test_4d_image(tmp_path: Path) -> None:
    _prepare_with_bad_case(
        tmp_path, lambda case: _write(case / "ct.nii.gz", np.zeros((24, 20, 6, 2), np.float32)), "image is 4D"
    )


def test_4d_image_with_trailing_singleton_is_squeezed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    phantoms = write_totalseg(root, [GOOD])
    _write(root / GOOD / "ct.nii.gz", phantoms[GOOD].image[..., None])
    assert prepare("totalseg-ct", root, tmp_path / "cache", CONFIG, workers=1, progress=False).ok


@pytest.mark.parametrize(("value", "problem"), [(np.nan, "1 NaN, 0 Inf"), (np.inf, "0 NaN, 1 Inf")])
def test_non_finite_voxels(tmp_path: Path, value: float, problem: str) -> None:
    def corrupt(case: Path) -> Path:
        data = make_phantom().image
        data[3, 4, 5] = value
        return _write(case / "ct.nii.gz", data)

    _prepare_with_bad_case(tmp_path, corrupt, problem)


def test_non_binary_totalseg_mask(tmp_path: Path) -> None:
    def corrupt(case: Path) -> Path:
        mask = np.zeros((24, 20, 6), np.uint8)
        mask[2, 2, 2] = 3
        return _write(case / "segmentations" / "pancreas.nii.gz", mask)

    _prepare_with_bad_case(tmp_path, corrupt, "mask is not binary: values [0, 3]")


def test_unknown_amos_label_values(tmp_path: Path) -> None:
    root = tmp_path / "amos"
    phantoms = write_amos(root, train_ids=[1, 2])
    label = phantoms["amos_0002"].amos_label.copy()
    label[0, 0, 0], label[1, 0, 0] = 16, 42
    bad = save(label, phantoms["amos_0002"].affine, root / "labelsTr" / "amos_0002.nii.gz", "LPS")
    report = prepare("amos", root, tmp_path / "cache", CONFIG, workers=1, progress=False)
    assert report.failed == [f"{bad}: label values outside the known map: [16, 42]"]
    assert list(read_index(tmp_path / "cache")) == ["amos-amos_0001"]


def test_label_values_that_are_not_whole_numbers(tmp_path: Path) -> None:
    """A float label file with 2.5 in it is an intensity image or a resampling accident, not classes."""
    root = tmp_path / "amos"
    phantoms = write_amos(root, train_ids=[1, 2])
    label = phantoms["amos_0002"].amos_label.astype(np.float32)
    label[0, 0, 0] = 2.5
    bad = save(label, phantoms["amos_0002"].affine, root / "labelsTr" / "amos_0002.nii.gz", "LPS")
    report = prepare("amos", root, tmp_path / "cache", CONFIG, workers=1, progress=False)
    assert report.failed == [f"{bad}: label has values that are not whole numbers (2.5)"]
    assert list(read_index(tmp_path / "cache")) == ["amos-amos_0001"]


def test_unknown_nnunet_label_values(tmp_path: Path) -> None:
    root = tmp_path / "nnunet"
    write_nnunet(root, ["a", "b"])
    report = prepare(
        "nnunet", root, tmp_path / "cache", CONFIG, workers=1, progress=False, label_map={0: 0, 10: 1, 20: 2}
    )
    assert len(report.failed) == 2 and all(
        "label values outside the known map: [30, 40, 50]" in line for line in report.failed
    )
    assert list(read_index(tmp_path / "cache")) == []
    good = prepare(
        "nnunet", root, tmp_path / "c2", CONFIG, workers=1, progress=False, label_map=NNUNET_LABEL_MAP
    )
    assert good.ok and len(good.prepared) == 2


def test_empty_file(tmp_path: Path) -> None:
    def corrupt(case: Path) -> Path:
        (case / "ct.nii.gz").write_bytes(b"")
        return case / "ct.nii.gz"

    _prepare_with_bad_case(tmp_path, corrupt, "empty file (0 bytes)")


def test_truncated_gzip(tmp_path: Path) -> None:
    def corrupt(case: Path) -> Path:
        path = case / "ct.nii.gz"
        content = path.read_bytes()
        assert gzip.decompress(content)  # a valid file before truncation
        path.write_bytes(content[: len(content) // 2])
        return path

    _prepare_with_bad_case(tmp_path, corrupt, "unreadable (truncated or corrupt gzip?)")


def test_meta_csv_missing_columns(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_totalseg(root, [GOOD])
    meta = write_meta(root, ["image_id", "age"], [[GOOD, "50"]])
    with pytest.raises(DataError) as error:
        prepare("totalseg-ct", root, tmp_path / "cache", CONFIG, workers=1, progress=False)
    assert str(error.value).startswith(f"{meta}: meta.csv lacks the columns ['split']")


def test_unknown_split_value(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_totalseg(root, [GOOD], splits=["training"])
    with pytest.raises(DataError, match="unknown split 'training'"):
        prepare("totalseg-ct", root, tmp_path / "cache", CONFIG, workers=1, progress=False)


@pytest.mark.parametrize("source", ["totalseg-ct", "totalseg-mri", "amos"])
def test_root_with_no_cases(tmp_path: Path, source: str) -> None:
    with pytest.raises(DataError) as error:
        prepare(source, tmp_path, tmp_path / "cache", CONFIG, workers=1, progress=False)
    assert str(error.value) == f"{tmp_path}: no {source} cases found"
    assert not (tmp_path / "cache" / "index.csv").exists()
