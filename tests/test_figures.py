"""Figures: outlines where the organs are; overlays from the slices an evaluation kept, without a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fedgin.evaluation.evaluate import evaluate_checkpoint, keep_best_slices
from fedgin.evaluation.results import kept_slice_path, read_kept_slice
from fedgin.figures import (
    OverlayRow,
    _figure,
    draw_axial,
    draw_outlines,
    most_foreground_slice,
    most_organs_slice,
    plot_overlays,
)
from test_evaluate import _tiny_checkpoint  # an untrained 2D U-Net of two levels

PNG = b"\x89PNG\r\n\x1a\n"


def _outline_box(axis) -> tuple[float, float, float, float]:
    """(x min, x max, y min, y max) of the vertices of the last outline drawn on `axis`."""
    vertices = np.concatenate([path.vertices for path in axis.collections[-1].get_paths()])
    return vertices[:, 0].min(), vertices[:, 0].max(), vertices[:, 1].min(), vertices[:, 1].max()


def test_outlines_run_halfway_between_an_organs_pixels_and_the_rest() -> None:
    mask = np.zeros((9, 10), dtype=np.uint8)
    mask[3:6, 2:7] = 1  # rows 3..5, columns 2..6
    for origin in ("lower", "upper"):
        axis = _figure(3, 3).subplots()
        axis.imshow(np.zeros(mask.shape), origin=origin)
        draw_outlines(axis, mask, {1: "red", 2: "blue"}, linewidth=1.0)
        assert len(axis.collections) == 1  # label 2 is absent: nothing drawn for it
        # imshow puts pixel (row r, column c) at (c, r); the outline lies half a pixel outside the organ.
        assert _outline_box(axis) == (1.5, 6.5, 2.5, 5.5)


def test_axial_slices_show_the_patients_right_on_the_left_and_anterior_up() -> None:
    image = np.arange(10 * 8, dtype=np.float32).reshape(10, 8)  # (x, y) of a RAS+ volume
    labels = np.zeros((10, 8), dtype=np.uint8)
    labels[6:9, 4:7] = 3  # towards the patient's right (high x) and anterior (high y)
    axis = _figure(3, 3).subplots()
    draw_axial(axis, image, labels, (0.0, 80.0), {3: "blue"})
    shown = axis.images[0].get_array()
    assert shown.shape == (8, 10) and shown[5, 2] == image[7, 5]  # row y, column 9 - x
    assert _outline_box(axis) == (0.5, 3.5, 3.5, 6.5)  # on the left, in the upper half (origin lower)


def test_best_slices() -> None:
    labels = np.zeros((4, 3, 5), dtype=np.uint8)  # (x, y, z)
    labels[:, :, 1] = 1  # most voxels, one organ
    labels[0, 0, 3], labels[1, 0, 3] = 1, 2  # two organs
    assert most_organs_slice(labels) == 3
    assert most_foreground_slice(np.moveaxis(labels, 2, 0)) == 1  # (z, y, x): most organ voxels


def test_kept_slices_round_trip_and_overlay_without_a_model(caches: dict[str, Path], tmp_path: Path) -> None:
    from fedgin.cache import Cache
    from fedgin.checkpoints import load_model
    from fedgin.evaluation.inference import predict_volume

    checkpoint = _tiny_checkpoint(tmp_path / "model.pt")
    cache = Cache(caches["t2"])
    entry = cache.cases(split="test")[0]
    out = tmp_path / "eval"
    test_caches = [caches["ct"], caches["t2"]]
    result = evaluate_checkpoint(
        checkpoint,
        test_caches,
        out,
        device="cpu",
        progress=False,
        keep_slices=[entry.case_id, "no-such-case"],
    )
    assert result.kept_slices == [kept_slice_path(out, entry.case_id)]
    files = json.loads(result.summary_json.read_text())["files"]
    assert files["kept_slices"] == [f"{entry.case_id}.npz"]

    kept = read_kept_slice(result.kept_slices[0])
    image, reference = np.asarray(cache.load_image(entry)), np.asarray(cache.load_label(entry))
    z = int(np.argmax([(reference[k] > 0).sum() for k in range(len(reference))]))
    model, _ = load_model(checkpoint, "cpu")
    prediction = predict_volume(model, image, torch.device("cpu"))
    assert (kept.case_id, kept.domain, kept.modality, kept.z) == (
        entry.case_id,
        entry.domain,
        entry.modality,
        z,
    )
    assert np.array_equal(kept.image, image[z]) and np.array_equal(kept.reference, reference[z])
    assert np.array_equal(kept.prediction, prediction[z])

    # Another evaluation into the folder replaces what the last one kept; keep_best_slices (for evaluations
    # that kept none) writes the same slice without scoring anything again.
    again = evaluate_checkpoint(checkpoint, test_caches, out, device="cpu", progress=False)
    assert again.kept_slices == [] and not kept_slice_path(out, entry.case_id).exists()
    per_case = result.per_case_csv.read_bytes()
    assert keep_best_slices(checkpoint, test_caches, out, [entry.case_id], device="cpu") == result.kept_slices
    assert np.array_equal(read_kept_slice(result.kept_slices[0]).prediction, prediction[z])
    assert result.per_case_csv.read_bytes() == per_case

    # The overlay needs the kept files only.
    checkpoint.unlink()
    kept = read_kept_slice(result.kept_slices[0])
    row = OverlayRow(kept.case_id, kept.image, [("reference", kept.reference), ("tiny", kept.prediction)])
    png = plot_overlays([row], tmp_path / "figures" / "overlays.png")
    assert png.read_bytes()[:8] == PNG and not list(png.parent.glob("*.tmp"))
