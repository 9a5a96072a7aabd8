"""Report tables agree with the evaluation files they are built from."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedgin.config import SynthConfig
from fedgin.errors import DataError
from fedgin.evaluation.evaluate import evaluate_folders
from fedgin.evaluation.results import comparison_table
from fedgin.synth import make_subject


def write_pair(root: Path, shift: int) -> tuple[Path, Path]:
    ref, pred = root / "ref", root / "pred"
    ref.mkdir(parents=True)
    pred.mkdir()
    config = SynthConfig(shape=(40, 40, 12), spacing=(9, 9, 25))
    for index in range(2):
        _, label, affine = make_subject(config, index, "ct")
        nib.save(nib.Nifti1Image(label, affine), ref / f"c{index}.nii.gz")
        nib.save(
            nib.Nifti1Image(np.roll(label, shift * (index + 1), axis=0), affine), pred / f"c{index}.nii.gz"
        )
    return pred, ref


def test_comparison_table_matches_per_case_means(tmp_path: Path) -> None:
    summaries = {}
    for method, shift in (("exact", 0), ("shifted", 1)):
        pred, ref = write_pair(tmp_path / method, shift)
        result = evaluate_folders(
            pred, ref, tmp_path / method / "eval", method=method, domain="ct", progress=False
        )
        summaries[method] = result.summary_csv
    table = comparison_table(summaries)
    lines = table.splitlines()
    assert lines[0] == "| organ | ct: exact | ct: shifted |"
    liver = next(line for line in lines if line.startswith("| liver"))
    with open(tmp_path / "shifted" / "eval" / "per_case.csv", newline="") as handle:
        dices = [float(row["dice"]) for row in csv.DictReader(handle) if row["organ"] == "liver"]
    expected = f"{np.mean(dices):.3f} ± {np.std(dices, ddof=1):.3f}"
    assert liver == f"| liver | 1.000 ± 0.000 | {expected} |"
    assert any(line.startswith("| **mean over organs**") for line in lines)


def test_missing_summary_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"summary\.csv"):
        comparison_table({"x": tmp_path / "summary.csv"})
