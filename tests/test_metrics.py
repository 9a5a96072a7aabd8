"""Tests of the per-organ metrics: known answers, empty-organ conventions, MONAI agreement and summaries."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from fedgin.evaluation import (
    OrganMetrics,
    dice,
    evaluate_case,
    hd95,
    normalized_surface_dice,
    summarize,
    surface_distances,
    write_csv,
)
from fedgin.labels import ORGANS

ANISOTROPIC = (0.8, 0.8, 3.0)


def box(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def smooth_labels(shape: tuple[int, ...], seed: int, n_labels: int = 3) -> np.ndarray:
    """Random smooth blobs with labels 1..n_labels (later labels overwrite earlier ones)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int16)
    for label in range(1, n_labels + 1):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=3.0)
        labels[field > np.quantile(field, 0.85)] = label
    return labels


def test_identical_masks_are_perfect() -> None:
    mask = box((20, 20, 10), (4, 5, 2), (15, 12, 8))
    assert dice(mask, mask) == 1.0
    assert hd95(mask, mask, ANISOTROPIC) == 0.0
    assert normalized_surface_dice(mask, mask, ANISOTROPIC) == 1.0


def test_disjoint_masks_have_zero_dice() -> None:
    a = box((20, 20, 10), (0, 0, 0), (5, 5, 5))
    b = box((20, 20, 10), (10, 10, 5), (15, 15, 10))
    assert dice(a, b) == 0.0
    assert normalized_surface_dice(a, b, (1.0, 1.0, 1.0), tolerance_mm=2.0) == 0.0


def test_known_dice_of_overlapping_boxes() -> None:
    a = box((10, 10, 10), (0, 0, 0), (4, 4, 4))  # 64 voxels
    b = box((10, 10, 10), (2, 0, 0), (6, 4, 4))  # 64 voxels, 32 shared
    assert dice(a, b) == pytest.approx(2 * 32 / 128)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_plate_shifted_along_the_coarse_axis_has_exact_hd95(k: int) -> None:
    """A one-slice plate shifted by k slices: every surface distance is exactly k * 3.0 mm."""
    shape = (30, 30, 12)
    plate = box(shape, (5, 5, 3), (25, 25, 4))
    shifted = np.roll(plate, k, axis=2)
    expected = k * ANISOTROPIC[2]
    assert hd95(plate, shifted, ANISOTROPIC) == pytest.approx(expected, abs=1e-12)
    assert hd95(plate, shifted, ANISOTROPIC, percentile=100) == pytest.approx(expected, abs=1e-12)
    to_ref, to_pred = surface_distances(plate, shifted, ANISOTROPIC)
    np.testing.assert_allclose(np.concatenate([to_ref, to_pred]), expected)
    # The tolerance is inclusive: exactly at the distance counts as within.
    assert normalized_surface_dice(plate, shifted, ANISOTROPIC, tolerance_mm=expected) == 1.0
    assert normalized_surface_dice(plate, shifted, ANISOTROPIC, tolerance_mm=expected - 0.1) == 0.0


def test_spacing_order_follows_the_array_axes() -> None:
    shape = (12, 30, 30)  # same plate with the coarse axis first
    plate = box(shape, (3, 5, 5), (4, 25, 25))
    shifted = np.roll(plate, 2, axis=0)
    assert hd95(plate, shifted, (3.0, 0.8, 0.8)) == pytest.approx(6.0)
    assert hd95(plate, shifted, (0.8, 0.8, 3.0)) == pytest.approx(1.6)


def test_cube_shifted_along_the_coarse_axis_has_exact_hausdorff_distance() -> None:
    cube = box((24, 24, 16), (6, 6, 4), (16, 16, 10))
    shifted = np.roll(cube, 2, axis=2)
    assert hd95(cube, shifted, ANISOTROPIC, percentile=100) == pytest.approx(2 * 3.0)


def test_nsd_counts_the_fraction_of_surface_within_tolerance() -> None:
    """Two one-voxel-thick lines, the reference one voxel longer: only that voxel is out of tolerance."""
    ref = box((10, 40, 3), (4, 5, 1), (5, 16, 2))  # a line of 11 voxels along y
    pred = box((10, 40, 3), (4, 5, 1), (5, 15, 2))  # the same line, 10 voxels
    # Every voxel is a surface voxel; d(ref voxel at y=15 -> pred) = 1 voxel = 2.0 mm, the rest 0.
    spacing = (1.0, 2.0, 1.0)
    assert normalized_surface_dice(pred, ref, spacing, tolerance_mm=1.9) == pytest.approx(20 / 21)
    assert normalized_surface_dice(pred, ref, spacing, tolerance_mm=2.0) == 1.0


def test_both_empty_organ_is_perfect_and_flagged() -> None:
    empty = np.zeros((8, 8, 8), np.uint8)
    assert dice(empty, empty) == 1.0
    assert hd95(empty, empty, (1.0, 1.0, 1.0)) == 0.0
    assert normalized_surface_dice(empty, empty, (1.0, 1.0, 1.0)) == 1.0
    results = evaluate_case(empty, empty, (1.0, 1.0, 1.0))
    assert [r.organ for r in results] == list(ORGANS)
    assert all(r.both_empty and r.dice == 1.0 and r.nsd == 1.0 and r.hd95 == 0.0 for r in results)


def test_organ_missing_on_one_side_scores_zero_with_undefined_hd95() -> None:
    present = box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    empty = np.zeros_like(present)
    for pred, ref in [(present, empty), (empty, present)]:
        assert dice(pred, ref) == 0.0
        assert normalized_surface_dice(pred, ref, (1.0, 1.0, 1.0)) == 0.0
        assert math.isnan(hd95(pred, ref, (1.0, 1.0, 1.0)))
    ref_labels = present.astype(np.uint8) * 3  # spleen in the reference only
    spleen = next(
        r for r in evaluate_case(empty.astype(np.uint8), ref_labels, (1, 1, 1)) if r.organ == "spleen"
    )
    assert spleen == OrganMetrics("spleen", 0.0, spleen.hd95, 0.0, 27, 0, both_empty=False)
    assert math.isnan(spleen.hd95)


def test_evaluate_case_matches_the_single_organ_functions_and_crop_keeps_results() -> None:
    ref = smooth_labels((40, 36, 20), seed=1, n_labels=5)
    pred = smooth_labels((40, 36, 20), seed=2, n_labels=5)
    pred[ref == 2] = 2  # some overlap for one organ
    spacing = (0.9, 1.1, 2.5)
    for label, result in enumerate(evaluate_case(pred, ref, spacing, nsd_tolerance_mm=1.5), start=1):
        p, r = pred == label, ref == label
        assert result.dice == pytest.approx(dice(p, r))
        assert result.hd95 == pytest.approx(hd95(p, r, spacing))
        assert result.nsd == pytest.approx(normalized_surface_dice(p, r, spacing, tolerance_mm=1.5))
        assert (result.ref_voxels, result.pred_voxels) == (int(r.sum()), int(p.sum()))


def test_organ_touching_the_volume_border() -> None:
    ref = box((12, 12, 6), (0, 0, 0), (6, 12, 6))
    pred = box((12, 12, 6), (0, 0, 0), (7, 12, 6))
    # The border face counts as surface (like MONAI); the only mismatch is one slab of 1 voxel along x.
    assert hd95(pred, ref, (1.0, 1.0, 1.0), percentile=100) == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
def test_hd95_is_the_larger_directed_percentile_not_medpys_pooled_one() -> None:
    """A false-positive blob far from the reference: only the pred -> ref distances have a tail. fedgin (and
    MONAI with directed=False) take the larger directed 95th percentile; medpy's `hd95` pools both
    directions' distances first and so reports less. The documentation states fedgin's convention."""
    ref = box((40, 40, 10), (5, 5, 2), (20, 20, 8))
    pred = ref | box((40, 40, 10), (30, 30, 2), (36, 36, 8))
    spacing = (1.0, 1.0, 1.0)
    to_ref, to_pred = surface_distances(pred, ref, spacing)
    directed = (float(np.percentile(to_ref, 95)), float(np.percentile(to_pred, 95)))
    pooled = float(np.percentile(np.concatenate([to_ref, to_pred]), 95))  # medpy's hd95
    assert directed[1] == 0.0 and directed[0] > pooled + 1.0
    assert hd95(pred, ref, spacing) == pytest.approx(directed[0])
    one_hot = [torch.from_numpy(mask[None, None].astype(np.float32)) for mask in (pred, ref)]
    monai_hd = compute_hausdorff_distance(*one_hot, percentile=95, spacing=spacing, directed=False)
    assert hd95(pred, ref, spacing) == pytest.approx(float(monai_hd[0, 0]), rel=1e-5)

    import fedgin.evaluation.metrics as metrics_module

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    for text in (" ".join(str(metrics_module.__doc__).split()), " ".join(readme.split())):
        assert "larger of the two directed 95th percentiles" in text
        assert "as MONAI and medpy" not in text and "medpy's `hd95`" in text


def monai_metrics(
    pred: np.ndarray, ref: np.ndarray, labels: list[int], spacing: tuple[float, ...], tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    def one_hot(volume: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([volume == label for label in labels])[None].astype(np.float32))

    p, r = one_hot(pred), one_hot(ref)
    dsc = compute_dice(p, r, include_background=True)[0].numpy()
    hd = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing)[0].numpy()
    nsd = compute_surface_dice(p, r, [tol] * len(labels), include_background=True, spacing=spacing)[0].numpy()
    return dsc, hd, nsd


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_monai_on_random_smooth_shapes(seed: int) -> None:
    """MONAI uses the same surface-voxel definition (KD-tree distances, torch.quantile): agreement to 1e-4."""
    shape = (36, 32, 16)
    ref = smooth_labels(shape, seed=10 + seed)
    # A prediction that is a perturbed version of the reference: dilate one organ, erode another, shift one.
    pred = ref.copy()
    pred[ndimage.binary_dilation(ref == 1, iterations=2)] = 1
    pred[(ref == 2) & ~ndimage.binary_erosion(ref == 2)] = 0
    pred[pred == 3] = 0
    pred[np.roll(ref == 3, 3, axis=0)] = 3
    spacing = (0.7, 0.9, 2.5)
    ours = {r.organ: r for r in evaluate_case(pred, ref, spacing, labels={1: "a", 2: "b", 3: "c"})}
    dsc, hd, nsd = monai_metrics(pred, ref, [1, 2, 3], spacing, tol=2.0)
    for i, organ in enumerate(["a", "b", "c"]):
        assert ours[organ].dice == pytest.approx(float(dsc[i]), rel=1e-5)
        assert ours[organ].hd95 == pytest.approx(float(hd[i]), rel=1e-4)
        assert ours[organ].nsd == pytest.approx(float(nsd[i]), abs=1e-6)
    assert all(not r.both_empty for r in ours.values())


def case_row(
    modality: str, case: str, organ: str, dice: float, hd95: float, nsd: float, both_empty: bool = False
) -> dict[str, object]:
    return {"modality": modality, "case": case, "organ": organ, "both_empty": both_empty} | {
        "dice": dice,
        "hd95": hd95,
        "nsd": nsd,
    }


def test_summarize_counts_and_aggregates_per_group_and_organ(tmp_path: Path) -> None:
    rows = [
        case_row("CT", "c1", "liver", 0.8, 4.0, 0.9),
        case_row("CT", "c2", "liver", 0.6, 6.0, 0.7),
        case_row("CT", "c3", "liver", 0.0, math.nan, 0.0),
        case_row("CT", "c1", "gallbladder", 1.0, 0.0, 1.0, both_empty=True),
        case_row("MRI", "m1", "liver", 0.5, 9.0, 0.4),
    ]
    summary = summarize(rows, group_keys=["modality"])
    by_key = {(s["modality"], s["organ"]): s for s in summary}
    ct_liver = by_key[("CT", "liver")]
    assert ct_liver["n_cases"] == 3 and ct_liver["n_both_empty"] == 0 and ct_liver["n_hd95_undefined"] == 1
    assert ct_liver["dice_mean"] == pytest.approx(np.mean([0.8, 0.6, 0.0]))
    assert ct_liver["dice_std"] == pytest.approx(np.std([0.8, 0.6, 0.0], ddof=1))
    assert ct_liver["hd95_mean"] == pytest.approx(5.0) and ct_liver["hd95_n"] == 2
    gallbladder = by_key[("CT", "gallbladder")]
    assert gallbladder["n_both_empty"] == 1 and gallbladder["dice_mean"] == 1.0
    assert math.isnan(gallbladder["dice_std"])  # a single value has no sample std
    skipped = summarize(rows, group_keys=["modality"], skip_both_empty=True)
    gb_skipped = next(s for s in skipped if s["organ"] == "gallbladder")
    assert (
        gb_skipped["dice_n"] == 0 and math.isnan(gb_skipped["dice_mean"]) and gb_skipped["n_both_empty"] == 1
    )
    assert by_key[("MRI", "liver")]["dice_mean"] == 0.5

    # Round trip through a CSV: strings are parsed back, so the summary is the same.
    path = write_csv(rows, tmp_path / "per_case.csv")
    with path.open(newline="") as handle:
        from_csv = summarize(list(csv.DictReader(handle)), group_keys=["modality"])
    csv_liver = next(s for s in from_csv if (s["modality"], s["organ"]) == ("CT", "liver"))
    assert csv_liver["n_hd95_undefined"] == 1 and csv_liver["dice_mean"] == pytest.approx(
        ct_liver["dice_mean"]
    )
    assert next(s for s in from_csv if s["organ"] == "gallbladder")["n_both_empty"] == 1


def test_summarize_from_evaluate_case_rows() -> None:
    ref = smooth_labels((24, 24, 12), seed=5, n_labels=2)
    rows = [
        {"case": case, "method": "fedgin", **m.as_dict()}
        for case in ("a", "b")
        for m in evaluate_case(ref, ref, (1.0, 1.0, 2.0))
    ]
    summary = summarize(rows, group_keys=["method"])
    assert len(summary) == len(ORGANS)
    # Labels 3..5 are absent from both volumes: perfect by convention and counted.
    assert [s["n_both_empty"] for s in summary] == [0, 0, 2, 2, 2]
    assert all(s["dice_mean"] == 1.0 and s["hd95_mean"] == 0.0 for s in summary)


def test_invalid_inputs_are_rejected() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError):
        evaluate_case(a, np.zeros((4, 4, 5), np.uint8), (1, 1, 1))
    with pytest.raises(ValueError):
        evaluate_case(a, a, (1, 1))
    with pytest.raises(TypeError):
        evaluate_case(a.astype(float), a.astype(float), (1, 1, 1))
    with pytest.raises(ValueError):
        hd95(a, a, (1, 1, 0))
