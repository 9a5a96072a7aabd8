"""Evaluation runs: folders of NIfTI labels and a checkpoint on a prepared synthetic cache."""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from rich.console import Console

from fedgin.errors import DataError
from fedgin.evaluation.evaluate import (
    MEAN_ORGAN,
    evaluate_checkpoint,
    evaluate_folders,
    summary_table,
)
from fedgin.evaluation.metrics import evaluate_case
from fedgin.labels import ORGANS
from nifti_factory import write_meta, write_totalseg

SPACING = (0.8, 1.2, 3.0)  # anisotropic, in array axis order
SHAPE = (12, 10, 8)


def _affine(spacing=SPACING) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 20.0]
    return affine


def _save(label: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label.astype(np.uint8), _affine() if affine is None else affine), path)
    return path


def _phantom() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2:8, 2:7, 1:5] = 1  # liver
    label[8:11, 6:9, 4:7] = 3  # spleen; kidneys, pancreas, gallbladder absent
    return label


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _check_summary_against_csv(out: Path, group_by: str = "domain") -> None:
    """summary.csv means for every group (domain, or `group_by`) x organ equal the means of per_case.csv
    computed by hand; cases with an empty value of `group_by` are in no group."""
    per_case = _read_csv(out / "per_case.csv")
    summary = _read_csv(out / "summary.csv")
    checked = 0
    for entry in summary:
        if entry["group_by"] != group_by or entry["organ"] == MEAN_ORGAN:
            continue
        rows = [r for r in per_case if r[group_by] == entry["group"] and r["organ"] == entry["organ"]]
        assert int(entry["n_cases"]) == len(rows)
        assert int(entry["n_both_empty"]) == sum(r["both_empty"] == "True" for r in rows)
        for metric in ("dice", "nsd", "hd95"):
            values = [float(r[metric]) for r in rows if not math.isnan(float(r[metric]))]
            expected = float(np.mean(values)) if values else math.nan
            assert float(entry[f"{metric}_mean"]) == pytest.approx(expected, nan_ok=True)
        assert int(entry["n_hd95_undefined"]) == sum(math.isnan(float(r["hd95"])) for r in rows)
        checked += 1
    assert checked == len(ORGANS) * len({r[group_by] for r in per_case if r[group_by]})
    # The "mean over organs" row of each group: per case the mean Dice over organs, then over cases.
    for entry in (e for e in summary if e["group_by"] == group_by and e["organ"] == MEAN_ORGAN):
        cases = {r["case_id"] for r in per_case if r[group_by] == entry["group"]}
        per_case_means = [
            np.mean([float(r["dice"]) for r in per_case if r["case_id"] == case]) for case in cases
        ]
        assert float(entry["dice_mean"]) == pytest.approx(float(np.mean(per_case_means)))


# ------------------------------------------------------------------------------------------------------
# Folders


def test_identical_folders_score_perfectly(tmp_path: Path) -> None:
    for name in ("a.nii.gz", "b.nii"):
        _save(_phantom(), tmp_path / "ref" / name)
        _save(_phantom(), tmp_path / "pred" / name)
    _save(_phantom(), tmp_path / "pred" / "extra.nii.gz")  # no reference: ignored, listed
    result = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)

    assert result.n_cases == 2
    assert len(result.rows) == 2 * len(ORGANS)
    assert {r["case_id"] for r in result.rows} == {"a", "b"}
    assert all(r["dice"] == 1.0 and r["nsd"] == 1.0 and r["hd95"] == 0.0 for r in result.rows)
    # kidneys, pancreas, gallbladder are absent from both sides in both cases
    assert result.n_both_empty == 2 * 3
    assert result.n_hd95_undefined == 0
    kidneys = next(e for e in result.summary if e["group_by"] == "all" and e["organ"] == "kidneys")
    assert kidneys["n_both_empty"] == 2 and kidneys["dice_mean"] == 1.0

    per_case = _read_csv(result.per_case_csv)
    assert list(per_case[0]) == [
        "case_id", "source", "modality", "domain", "split", "protocol",
        "organ", "dice", "hd95", "nsd", "ref_voxels", "pred_voxels", "both_empty",
    ]  # fmt: skip
    assert len(per_case) == 2 * len(ORGANS)
    assert {r["domain"] for r in per_case} == {"unknown"}
    assert {r["protocol"] for r in per_case} == {""}  # folders carry no protocol: no protocol groups
    assert not any(e["group_by"] == "protocol" for e in result.summary)
    _check_summary_against_csv(result.per_case_csv.parent)
    document = json.loads(result.summary_json.read_text())
    assert document["n_both_empty"] == 6 and document["unmatched_predictions"] == ["extra.nii.gz"]


def test_shifted_organs_give_known_hd95_with_anisotropic_spacing(tmp_path: Path) -> None:
    ref = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    # One-voxel-thick slabs: every surface voxel is exactly `shift` voxels from the other slab.
    ref[0:6, 0:5, 2] = 1
    pred[0:6, 0:5, 4] = 1  # liver: 2 voxels along axis 2 (3.0 mm) -> 6.0 mm
    ref[7, 5:9, 5:8] = 3
    pred[9, 5:9, 5:8] = 3  # spleen: 2 voxels along axis 0 (0.8 mm) -> 1.6 mm
    ref[3:5, 7:9, 0] = 4  # pancreas missing from the prediction -> HD95 undefined
    _save(ref, tmp_path / "ref" / "case.nii.gz")
    _save(pred, tmp_path / "pred" / "case.nii.gz")
    result = evaluate_folders(
        tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False, method="m", domain="ct"
    )
    by_organ = {r["organ"]: r for r in result.rows}
    assert by_organ["liver"]["hd95"] == pytest.approx(6.0)
    assert by_organ["spleen"]["hd95"] == pytest.approx(1.6)
    assert by_organ["liver"]["dice"] == 0.0 and by_organ["liver"]["nsd"] == 0.0
    assert by_organ["spleen"]["nsd"] == 1.0  # 1.6 mm is within the 2 mm tolerance
    assert math.isnan(by_organ["pancreas"]["hd95"]) and by_organ["pancreas"]["dice"] == 0.0
    assert result.n_hd95_undefined == 1 and result.n_both_empty == 2
    per_case = _read_csv(result.per_case_csv)
    assert per_case[0]["method"] == "m" and per_case[0]["domain"] == "ct"
    mean_row = next(e for e in result.summary if e["group_by"] == "domain" and e["organ"] == MEAN_ORGAN)
    assert mean_row["hd95_mean"] == pytest.approx((6.0 + 1.6 + 0.0 + 0.0) / 4)
    _check_summary_against_csv(tmp_path / "out")

    console = Console(record=True, width=160)
    console.print(summary_table(result))
    text = console.export_text()
    assert "liver" in text and "mean over organs" in text and "ct" in text
    caption = str(summary_table(result).caption)
    assert "(2 case-organ pairs)" in caption and "(1 case-organ pair)" in caption


def _bad_missing(ref_dir: Path, pred_dir: Path) -> str:
    _save(_phantom(), ref_dir / "lost.nii.gz")
    return "lost.nii.gz"


def _bad_shape(ref_dir: Path, pred_dir: Path) -> str:
    _save(_phantom()[:, :, :6], pred_dir / "case.nii.gz")
    return "case.nii.gz"


def _bad_affine(ref_dir: Path, pred_dir: Path) -> str:
    _save(_phantom(), pred_dir / "case.nii.gz", affine=_affine((0.8, 1.2, 2.5)))
    return "case.nii.gz"


def _bad_values(ref_dir: Path, pred_dir: Path) -> str:
    label = _phantom()
    label[0, 0, 0] = 7
    _save(label, pred_dir / "odd.nii.gz")
    _save(_phantom(), ref_dir / "odd.nii.gz")
    return "odd.nii.gz"


def _bad_truncated_header(ref_dir: Path, pred_dir: Path) -> str:
    path = pred_dir / "case.nii.gz"
    data = path.read_bytes()
    assert gzip.decompress(data)  # a valid gzip before: the damage is the truncation
    path.write_bytes(data[: len(data) // 2])
    return "case.nii.gz"


def _bad_truncated_data(ref_dir: Path, pred_dir: Path) -> str:
    # Noise compresses poorly, so that half the file keeps the header and loses part of the data.
    noise = np.random.default_rng(0).integers(0, 6, (40, 40, 40)).astype(np.uint8)
    _save(noise, ref_dir / "noise.nii.gz")
    path = _save(noise, pred_dir / "noise.nii.gz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert nib.load(path).shape == noise.shape  # the header still reads; the data do not
    return "noise.nii.gz"


def _bad_duplicate(ref_dir: Path, pred_dir: Path) -> str:
    _save(_phantom(), ref_dir / "case.nii")  # the same case as case.nii.gz
    return "case.nii"


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (_bad_missing, "prediction missing"),
        (_bad_duplicate, "same case name"),
        (_bad_shape, "shape"),
        (_bad_affine, "affine"),
        (_bad_values, "7"),
        (_bad_truncated_header, "unreadable"),
        (_bad_truncated_data, "truncated or corrupt gzip"),
    ],
)
def test_bad_folder_inputs_raise_data_errors_naming_the_file(tmp_path: Path, breaker, expected) -> None:
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    _save(_phantom(), ref_dir / "case.nii.gz")
    _save(_phantom(), pred_dir / "case.nii.gz")
    name = breaker(ref_dir, pred_dir)
    with pytest.raises(DataError) as caught:
        evaluate_folders(pred_dir, ref_dir, tmp_path / "out", progress=False)
    assert name in str(caught.value) and expected in str(caught.value)
    assert not (tmp_path / "out" / "per_case.csv").exists()


# ------------------------------------------------------------------------------------------------------
# A checkpoint on a prepared synthetic cache


@pytest.fixture(scope="module")
def cache_and_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    from fedgin.config import PreprocessConfig, SynthConfig
    from fedgin.prepare import prepare
    from fedgin.synth import generate

    root = tmp_path_factory.mktemp("evaluate")
    synth = SynthConfig(subjects=3, seed=1, shape=(48, 48, 16), spacing=(8, 8, 20), modalities=["ct"])
    generate(synth, "totalseg", root / "raw", progress=False)
    report = prepare(
        "totalseg-ct", root / "raw", root / "cache", PreprocessConfig(spacing_mm=8.0, size=48), workers=1,
        progress=False,
    )  # fmt: skip
    assert not report.failed
    return root / "cache", _tiny_checkpoint(root / "model.pt")


def _tiny_checkpoint(path: Path) -> Path:
    """An untrained 2D U-Net of two levels, saved as a checkpoint."""
    from fedgin.config import ModelConfig, RunConfig
    from fedgin.model import build_unet

    torch.manual_seed(0)
    model_config = ModelConfig(channels=(4, 8), strides=(2,))
    model = build_unet(model_config)
    torch.save({"model": model.state_dict(), "config": RunConfig(model=model_config).model_dump(mode="json")},
               path)  # fmt: skip
    return path


def test_checkpoint_evaluation_matches_metrics_by_hand(cache_and_checkpoint, tmp_path: Path) -> None:
    from fedgin.cache import Cache
    from fedgin.checkpoints import load_model
    from fedgin.evaluation.inference import predict_volume

    cache_dir, checkpoint = cache_and_checkpoint
    cache = Cache(cache_dir)
    result = evaluate_checkpoint(
        checkpoint, [cache_dir], tmp_path / "all", split=None, device="cpu", progress=False, method="tiny"
    )
    assert result.n_cases == len(cache.cases()) == 3
    assert len(result.rows) == 3 * len(ORGANS)
    per_case = _read_csv(result.per_case_csv)
    assert len(per_case) == 3 * len(ORGANS)
    assert list(per_case[0])[:7] == ["method", "case_id", "source", "modality", "domain", "split", "protocol"]
    assert {r["split"] for r in per_case} == {e.split for e in cache.cases()}
    _check_summary_against_csv(tmp_path / "all")
    groupings = {(e["group_by"], e["group"]) for e in result.summary}
    protocols = {("protocol", e.protocol) for e in cache.cases() if e.protocol}  # if synth records them
    assert groupings == {("all", "all"), ("domain", "ct"), ("modality", "ct"), *protocols}

    # The same model, predicted and scored by hand with the (z, y, x) spacing, gives the same numbers.
    model, _ = load_model(checkpoint, "cpu")
    for entry in cache.cases():
        pred = predict_volume(model, cache.load_image(entry), torch.device("cpu"))
        spacing_zyx = tuple(reversed(entry.spacing))
        expected = evaluate_case(pred, np.asarray(cache.load_label(entry)), spacing_zyx)
        got = [r for r in result.rows if r["case_id"] == entry.case_id]
        assert [r["organ"] for r in got] == [m.organ for m in expected]
        for row, metrics in zip(got, expected, strict=True):
            assert row["dice"] == pytest.approx(metrics.dice)
            assert row["nsd"] == pytest.approx(metrics.nsd)
            assert row["hd95"] == pytest.approx(metrics.hd95, nan_ok=True)
            assert row["pred_voxels"] == metrics.pred_voxels and row["ref_voxels"] == metrics.ref_voxels


def test_checkpoint_split_filter_and_errors(cache_and_checkpoint, tmp_path: Path) -> None:
    from fedgin.cache import Cache

    cache_dir, checkpoint = cache_and_checkpoint
    val_ids = {e.case_id for e in Cache(cache_dir).cases(split="val")}
    assert val_ids
    result = evaluate_checkpoint(checkpoint, [cache_dir], tmp_path / "val", split="val", progress=False)
    assert {r["case_id"] for r in result.rows} == val_ids
    assert len(_read_csv(result.per_case_csv)) == len(val_ids) * len(ORGANS)
    assert json.loads(result.summary_json.read_text())["split"] == "val"

    with pytest.raises(DataError, match="no cases with split 'nope'"):
        evaluate_checkpoint(checkpoint, [cache_dir], tmp_path / "x", split="nope", progress=False)
    with pytest.raises(DataError, match="pass each cache once"):
        evaluate_checkpoint(checkpoint, [cache_dir, cache_dir], tmp_path / "x", split=None, progress=False)
    with pytest.raises(DataError, match="checkpoint not found"):
        evaluate_checkpoint(tmp_path / "none.pt", [cache_dir], tmp_path / "x", split=None, progress=False)


def test_protocol_in_per_case_and_summary_groups(tmp_path: Path) -> None:
    from fedgin.cache import Cache
    from fedgin.config import PreprocessConfig
    from fedgin.prepare import prepare

    ids = ["s0001", "s0002", "s0003", "s0004"]
    protocols = ["ct_pv_120kvp_soft_3mm", "ct_art_100kvp_sharp_1mm", "", "ct_pv_120kvp_soft_3mm"]
    write_totalseg(tmp_path / "raw", ids, splits=["test"] * 4)
    write_meta(
        tmp_path / "raw",
        ["image_id", "split", "protocol"],
        [[case_id, "test", protocol] for case_id, protocol in zip(ids, protocols, strict=True)],
    )
    config = PreprocessConfig(spacing_mm=2.0, size=16)
    assert prepare("totalseg-ct", tmp_path / "raw", tmp_path / "cache", config, workers=1, progress=False).ok
    checkpoint = _tiny_checkpoint(tmp_path / "model.pt")
    result = evaluate_checkpoint(
        checkpoint, [tmp_path / "cache"], tmp_path / "out", device="cpu", progress=False
    )

    per_case = _read_csv(result.per_case_csv)
    by_case = {r["case_id"]: r["protocol"] for r in per_case}
    assert by_case == {e.case_id: e.protocol for e in Cache(tmp_path / "cache").cases()}
    assert sorted(by_case.values()) == sorted(protocols)
    # The protocol groups hold only the cases with a protocol; `all` holds every case.
    summary = _read_csv(result.summary_csv)
    liver = {(e["group_by"], e["group"]): int(e["n_cases"]) for e in summary if e["organ"] == "liver"}
    assert liver == {
        ("all", "all"): 4,
        ("domain", "ct"): 4,
        ("modality", "ct"): 4,
        ("protocol", "ct_pv_120kvp_soft_3mm"): 2,
        ("protocol", "ct_art_100kvp_sharp_1mm"): 1,
    }
    _check_summary_against_csv(tmp_path / "out", group_by="protocol")
    console = Console(record=True, width=200)
    console.print(summary_table(result, by="protocol"))
    assert "ct_pv_120kvp_soft_3mm" in console.export_text()
