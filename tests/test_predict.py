"""`fedgin predict` and `fedgin export`: real NIfTI files and DICOM series, in the input's own geometry."""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nibabel.affines import from_matvec
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from fedgin.cli import app
from fedgin.config import DataSpec, ModelConfig, PreprocessConfig, RunConfig, SynthConfig
from fedgin.errors import ConfigError, DataError
from fedgin.evaluation.metrics import dice
from fedgin.labels import LABEL_NAMES, ORGANS
from fedgin.model import build_loss, build_unet
from fedgin.prediction import (
    EXPORT_FORMAT,
    choose_modality,
    export_model,
    load_prediction_model,
    run_prediction,
)
from fedgin.prediction.dicom import LPS_TO_RAS, find_series, read_series
from fedgin.synth import make_subject
from fedgin.synth.layouts import image_data
from fedgin.training.seeding import rng_state
from nifti_factory import reorient

runner = CliRunner()
#: The conftest caches were prepared with this; the tiny model's run config keeps the defaults on purpose.
CACHE_PREPROCESS = PreprocessConfig(spacing_mm=8.0, size=48)
MODEL = ModelConfig(channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
#: A test subject: same body size in mm as the training subjects (48 x 8 mm), anisotropic voxels.
SUBJECT = SynthConfig(subjects=1, seed=11, shape=(96, 64, 12), spacing=(4.0, 6.0, 25.0))
TRAIN_STEPS = 200


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def organ_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {name: dice(pred == index, ref == index) for index, name in LABEL_NAMES.items() if index > 0}


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def write_dicom_series(
    folder: Path,
    data: np.ndarray,
    affine: np.ndarray,
    modality: str = "CT",
    uid: str = "1.2.826.0.1.3680043.8.498.1",
    description: str = "abdomen axial",
    number: int = 1,
) -> Path:
    """One file per slice along the third voxel axis, with the geometry of the RAS+ `affine`."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection(direction.reshape(-1).tolist())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1]))
    for k in range(data.shape[2]):
        slice_k = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": modality,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.8.498.99",
            "0020|000e": uid,
            "0008|103e": description,
            "0020|0011": str(number),
            "0020|0013": str(k + 1),
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.8f}" for v in position),
        }
        for key, value in tags.items():
            slice_k.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{number:02d}_{k:03d}.dcm"))
        writer.Execute(slice_k)
    return folder


def subject(modality: str = "ct", seed: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(on-disk image, label, RAS affine) of a synthetic subject: CT int16 HU or MRI uint16."""
    config = SUBJECT.model_copy(update={"seed": seed})
    image, label, affine = make_subject(config, 0, modality)  # type: ignore[arg-type]
    return image_data(image, modality), label, affine


def oblique(affine: np.ndarray) -> np.ndarray:
    """`affine` turned 8 degrees about an oblique axis around the scanner origin."""
    axis = np.array([0.6, -0.3, 0.74])
    rotation = Rotation.from_rotvec(np.deg2rad(8.0) * axis / np.linalg.norm(axis)).as_matrix()
    return from_matvec(rotation, [0.0, 0.0, 0.0]) @ affine


# --------------------------------------------------------------------------------------------------------
# A tiny model trained on the conftest caches (a few seconds), saved as a trainer-style checkpoint


@pytest.fixture(scope="module")
def checkpoint(caches: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a tiny 2D U-Net trained on the CT and T2 caches, in the trainer's checkpoint format.

    The run config keeps the default [preprocess] (3 mm, 128) while the caches were prepared at 8 mm and
    48 x 48, as with the other tests' runs: prediction must take the caches' settings.
    """
    from fedgin.cache import Cache

    images, labels = [], []
    for cache_dir in caches.values():
        cache = Cache(cache_dir)
        for entry in cache.cases():
            images.append(np.array(cache.load_image(entry)))
            labels.append(np.array(cache.load_label(entry)))
    x = torch.from_numpy(np.concatenate(images))[:, None]
    y = torch.from_numpy(np.concatenate(labels).astype(np.int64))[:, None]
    torch.manual_seed(0)
    model = build_unet(MODEL)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_fn = build_loss("dice_ce")
    generator = torch.Generator().manual_seed(0)
    steps = TRAIN_STEPS
    for _ in range(steps):
        batch = torch.randint(0, len(x), (16,), generator=generator)
        loss = loss_fn(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    config = RunConfig(
        name="tiny-predict",
        model=MODEL,
        data={"train": [DataSpec(cache=caches["ct"]), DataSpec(cache=caches["t2"])]},
    )
    path = tmp_path_factory.mktemp("predict_model") / "run" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save(
        {
            "format": "fedgin-checkpoint/1",
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": steps,
            "config": config.model_dump(mode="json"),
            "rng": rng_state(),  # tensors and plain values: loads with weights_only=True
            "best_score": 0.8,
            "best_step": steps,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model.fedgin.pt"
    export_model(checkpoint, out)
    return out


# --------------------------------------------------------------------------------------------------------
# Geometry and quality


def test_oblique_anisotropic_nifti_keeps_its_geometry_and_the_cache_dice(
    checkpoint: Path, tmp_path: Path
) -> None:
    """Written non-canonically (PLI voxel order, turned 8 degrees, 4 x 6 x 25 mm voxels), the prediction
    comes back on exactly the input's grid, with a Dice close to the same case evaluated in a cache."""
    from fedgin.evaluation.evaluate import evaluate_checkpoint
    from fedgin.prepare import prepare

    image, label, affine = subject("ct")
    image, disk_affine = reorient(image, oblique(affine), "PLI")
    label, _ = reorient(label, oblique(affine), "PLI")
    root = tmp_path / "nnunet"
    source = save_nifti(root / "imagesTs" / "case_0000.nii.gz", image, disk_affine)
    save_nifti(root / "labelsTs" / "case.nii.gz", label, disk_affine)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {}}))
    identity = {index: index for index in LABEL_NAMES}
    report = prepare("nnunet", root, tmp_path / "cache", CACHE_PREPROCESS, workers=1, progress=False,
                     label_map=identity)  # fmt: skip
    assert report.ok, report.failed
    in_cache = evaluate_checkpoint(checkpoint, [tmp_path / "cache"], tmp_path / "eval", split="test",
                                   device="cpu", progress=False)  # fmt: skip
    cache_dice = {row["organ"]: row["dice"] for row in in_cache.rows}

    out = tmp_path / "pred" / "case_labels.nii.gz"
    result = run_prediction(source, out, checkpoint, device="cpu", progress=False)
    written = nib.load(out)
    on_disk = nib.load(source)
    assert written.shape == on_disk.shape == image.shape
    assert np.array_equal(written.affine, on_disk.affine)  # exactly: same sform, same orientation
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(on_disk.affine) == ("P", "L", "I")
    assert written.get_data_dtype() == np.uint8
    pred = np.asarray(written.dataobj)
    assert set(np.unique(pred)) <= set(LABEL_NAMES)

    grid_dice = organ_dice(pred, label)
    assert cache_dice["liver"] > 0.35 and np.mean(list(cache_dice.values())) > 0.2, cache_dice  # it learned
    for organ in ORGANS:
        assert abs(grid_dice[organ] - cache_dice[organ]) < 0.08, (organ, grid_dice, cache_dice)
    assert abs(np.mean(list(grid_dice.values())) - np.mean(list(cache_dice.values()))) < 0.03

    # Sidecars: label names and provenance in the JSON, volumes (mL) in the CSV.
    (case,) = result.cases
    info = json.loads((tmp_path / "pred" / "case_labels.json").read_text())
    assert info["labels"] == {str(k): v for k, v in LABEL_NAMES.items()}
    assert info["modality"] == "ct" and info["modality_reason"].startswith("auto: Hounsfield range")
    assert info["preprocess"] == CACHE_PREPROCESS.model_dump(mode="json")
    assert info["model"]["provenance"]["run_name"] == "tiny-predict"
    with open(tmp_path / "pred" / "case_labels_volumes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["organ"] for row in rows] == list(ORGANS)
    voxel_ml = 4.0 * 6.0 * 25.0 / 1000
    for row in rows:
        expected = int((pred == int(row["label"])).sum())
        assert int(row["voxels"]) == expected == case.voxels[row["organ"]]
        assert float(row["volume_ml"]) == pytest.approx(expected * voxel_ml, abs=1e-3)


def test_dicom_series_gives_the_same_labels_as_its_nifti_twin(checkpoint: Path, tmp_path: Path) -> None:
    image, _, affine = subject("ct", seed=12)
    image, disk_affine = reorient(image, affine, "PLI")  # right-handed in LPS, as scanners write
    dicom = write_dicom_series(tmp_path / "dicom" / "ct_series", image, disk_affine)
    twin = save_nifti(tmp_path / "twin.nii.gz", image, disk_affine)

    (series,) = find_series(dicom)
    volume = read_series(series)
    assert volume.modality == "CT"
    np.testing.assert_allclose(volume.image.affine, disk_affine, atol=1e-4)
    assert np.array_equal(np.asarray(volume.image.dataobj), image.astype(np.float32))

    from_dicom = run_prediction(dicom, tmp_path / "out_dicom", checkpoint, device="cpu", progress=False)
    from_nifti = run_prediction(twin, tmp_path / "out_nifti", checkpoint, device="cpu", progress=False)
    label_dicom = nib.load(tmp_path / "out_dicom" / "ct_series.nii.gz")
    label_nifti = nib.load(tmp_path / "out_nifti" / "twin.nii.gz")
    assert label_dicom.shape == label_nifti.shape == image.shape
    np.testing.assert_allclose(label_dicom.affine, label_nifti.affine, atol=1e-4)
    assert np.array_equal(np.asarray(label_dicom.dataobj), np.asarray(label_nifti.dataobj))
    assert np.asarray(label_dicom.dataobj).any()
    assert from_dicom.cases[0].modality_reason == "auto: DICOM Modality tag CT"
    assert from_dicom.cases[0].volumes_ml == pytest.approx(from_nifti.cases[0].volumes_ml, rel=1e-5)


def test_folder_batch_auto_modality_preview_and_one_model_load(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedgin.prediction.run as run_module

    for modality, seed in (("ct", 13), ("mri_t2", 14)):
        image, _, affine = subject(modality, seed)
        save_nifti(tmp_path / "scans" / f"{modality}_case.nii.gz", image, affine)
    (tmp_path / "scans" / "notes.txt").write_text("not an image, ignored in a folder")
    loads = []
    original = run_module.load_prediction_model
    monkeypatch.setattr(run_module, "load_prediction_model", lambda *a: loads.append(a) or original(*a))

    report = run_prediction(tmp_path / "scans", tmp_path / "out", checkpoint, preview=True, device="cpu",
                            progress=False)  # fmt: skip
    assert len(loads) == 1
    assert {case.name: case.modality for case in report.cases} == {"ct_case": "ct", "mri_t2_case": "mri"}
    assert "not Hounsfield units" in report.cases[1].modality_reason
    names = sorted(p.name for p in files_under(tmp_path / "out"))
    assert names == sorted(
        [
            f"{n}{suffix}"
            for n in ("ct_case", "mri_t2_case")
            for suffix in (".nii.gz", ".json", "_preview.png")
        ]
        + ["volumes.csv"]
    )
    assert (tmp_path / "out" / "ct_case_preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "out" / "volumes.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * len(ORGANS)
    # Forcing the modality is honoured and the disagreement with the intensities is said.
    forced = run_prediction(tmp_path / "scans" / "mri_t2_case.nii.gz", tmp_path / "forced", checkpoint,
                            modality="ct", device="cpu", progress=False)  # fmt: skip
    assert forced.cases[0].modality == "ct" and "look like MRI" in forced.cases[0].modality_reason


def test_choose_modality() -> None:
    ct = np.full((10, 10, 10), -1000.0)
    ct[2:8, 2:8] = 40.0
    mri = np.abs(np.random.default_rng(0).normal(300, 100, (10, 10, 10)))
    assert choose_modality("auto", ct)[0] == "ct"
    assert choose_modality("auto", mri)[0] == "mri"
    assert choose_modality("auto", ct, "MR") == ("mri", "auto: DICOM Modality tag MR")
    assert choose_modality("auto", mri, "OT")[0] == "mri"
    assert choose_modality("mri", mri) == ("mri", "given with --modality")
    with pytest.raises(ConfigError, match="ct, mri or auto"):
        choose_modality("pet", ct)


# --------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the problem, exit 2, nothing written


def _good_scan(folder: Path) -> Path:
    image, _, affine = subject("ct", seed=15)
    return save_nifti(folder / "scan.nii.gz", image, affine)


def _truncated(folder: Path) -> Path:
    good = _good_scan(folder)
    data = good.read_bytes()
    bad = folder / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def _nan(folder: Path) -> Path:
    image, _, affine = subject("ct", seed=15)
    data = image.astype(np.float32)
    data[3, 4, 5] = np.nan
    return save_nifti(folder / "nan.nii.gz", data, affine)


def _single_dicom_file(folder: Path) -> Path:
    image, _, affine = subject("ct", seed=15)
    write_dicom_series(folder / "series", image[:, :, :2], affine)
    return next((folder / "series").iterdir())


def _dicom_missing_slice(folder: Path) -> Path:
    image, _, affine = subject("ct", seed=15)
    series = write_dicom_series(folder / "series", image[:, :, :6], affine)
    (series / "01_003.dcm").unlink()
    return series


BAD_INPUTS = {
    "missing": (lambda folder: folder / "nowhere.nii.gz", "input not found"),
    "not an image": (lambda folder: _write_text(folder / "report.txt"), "not a NIfTI file"),
    "garbage named NIfTI": (lambda folder: _write_text(folder / "fake.nii.gz"), "unreadable NIfTI"),
    "truncated": (_truncated, "unreadable (truncated or corrupt gzip?)"),
    "NaN voxels": (_nan, "non-finite voxels (1 NaN, 0 Inf)"),
    "2D image": (
        lambda folder: save_nifti(folder / "flat.nii.gz", np.zeros((20, 20), np.int16), np.eye(4)),
        "image is 2D",
    ),
    "single slice": (
        lambda folder: save_nifti(folder / "slice.nii.gz", np.zeros((20, 20, 1), np.int16), np.eye(4)),
        "single 2D slice",
    ),
    "one DICOM file": (_single_dicom_file, "is a single DICOM file; give the folder"),
    "DICOM missing slice": (_dicom_missing_slice, "slices are unevenly spaced (25 to 50 mm apart"),
    "empty folder": (lambda folder: _mkdir(folder / "empty"), "no NIfTI files (*.nii, *.nii.gz) or DICOM"),
}


def _write_text(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("patient notes, not an image\n")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file(case: str, exported: Path, tmp_path: Path) -> None:
    make, problem = BAD_INPUTS[case]
    bad = make(tmp_path / "in")
    out = tmp_path / "out"
    result = invoke("predict", "-i", bad, "-o", out, "--model", exported, "--device", "cpu")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {bad}: ") and problem in lines[0], lines[0]
    assert not out.exists()


def test_a_bad_file_in_a_folder_leaves_no_output_at_all(exported: Path, tmp_path: Path) -> None:
    _good_scan(tmp_path / "in").rename(tmp_path / "in" / "a_good.nii.gz")  # predicted first, then staged
    bad = _nan(tmp_path / "in")
    (tmp_path / "in" / "zz.nii.gz").write_bytes(b"")  # and an empty file is found before any prediction
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'in' / 'zz.nii.gz'}: empty file")):
        run_prediction(tmp_path / "in", tmp_path / "out", exported, device="cpu", progress=False)
    (tmp_path / "in" / "zz.nii.gz").unlink()
    existing = tmp_path / "out"
    existing.mkdir()
    with pytest.raises(DataError, match=re.escape(f"{bad}: image has non-finite voxels")):
        run_prediction(tmp_path / "in", existing, exported, device="cpu", progress=False)
    assert list(existing.iterdir()) == []  # not even the staging folder


def test_mixed_dicom_series_are_listed_and_one_is_chosen(exported: Path, tmp_path: Path) -> None:
    image, _, affine = subject("ct", seed=16)
    folder = tmp_path / "study"
    write_dicom_series(
        folder, image[:, :, :4], affine, uid="1.2.3.4.1", description="portal venous", number=2
    )
    write_dicom_series(folder, image[:, :, 4:7], affine, uid="1.2.3.4.2", description="arterial", number=3)
    result = invoke("predict", "-i", folder, "-o", tmp_path / "out", "--model", exported)
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith(f"error: {folder}: holds 2 DICOM series; choose one")
    for expected in ("--series 1.2.3.4.1 ('portal venous', series number 2, CT, 4 files)",
                     "--series 1.2.3.4.2 ('arterial', series number 3, CT, 3 files)"):  # fmt: skip
        assert expected in message, message
    assert not (tmp_path / "out").exists()

    result = invoke(
        "predict", "-i", folder, "-o", tmp_path / "out", "--model", exported, "--series", "1.2.3.4.2"
    )
    assert result.exit_code == 0, result.output
    assert nib.load(tmp_path / "out" / "study_3.nii.gz").shape == (*image.shape[:2], 3)
    result = invoke("predict", "-i", folder, "-o", tmp_path / "x", "--model", exported, "--series", "9.9")
    assert result.exit_code == 2 and "no DICOM series with SeriesInstanceUID 9.9" in result.stderr


def test_existing_output_is_refused_unless_overwrite(exported: Path, tmp_path: Path) -> None:
    scan = _good_scan(tmp_path / "in")
    out = tmp_path / "labels.nii.gz"
    args = ("predict", "-i", scan, "-o", out, "--model", exported, "--device", "cpu")
    assert invoke(*args).exit_code == 0
    first = out.read_bytes()
    (tmp_path / "labels_volumes.csv").write_text("edited by hand\n")
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {out}: already exists (and 2 more output files); pass --overwrite to replace"
    )
    assert (tmp_path / "labels_volumes.csv").read_text() == "edited by hand\n"
    assert invoke(*args, "--overwrite").exit_code == 0
    assert out.read_bytes() == first and "liver" in (tmp_path / "labels_volumes.csv").read_text()
    # Never over an input, not even with --overwrite.
    result = invoke("predict", "-i", scan, "-o", scan, "--model", exported, "--overwrite")
    assert result.exit_code == 2 and "is one of the inputs" in result.stderr
    # A folder input needs a folder output.
    result = invoke("predict", "-i", tmp_path / "in", "-o", tmp_path / "many.nii.gz", "--model", exported)
    assert result.exit_code == 0  # one file in the folder: a single output file is fine
    _nan(tmp_path / "in")
    result = invoke("predict", "-i", tmp_path / "in", "-o", tmp_path / "two.nii.gz", "--model", exported)
    assert result.exit_code == 2 and "give a folder as output" in result.stderr


# --------------------------------------------------------------------------------------------------------
# Models: checkpoint or export


def test_export_round_trip(checkpoint: Path, exported: Path, tmp_path: Path) -> None:
    payload = torch.load(exported, weights_only=True)  # plain tensors and values: safe to load
    assert payload["format"] == EXPORT_FORMAT
    assert set(payload) == {"format", "model", "model_config", "preprocess", "preprocess_source", "labels",
                            "provenance"}  # fmt: skip
    assert payload["labels"] == {str(k): v for k, v in LABEL_NAMES.items()}
    assert payload["preprocess"] == CACHE_PREPROCESS.model_dump(mode="json")  # the caches', not the config's
    assert payload["model_config"] == MODEL.model_dump(mode="json")
    provenance = payload["provenance"]
    assert provenance["run_name"] == "tiny-predict" and provenance["step"] == TRAIN_STEPS
    assert provenance["score"] == 0.8 and provenance["checkpoint"] == "best.pt"
    assert len(provenance["source_sha256"]) == 64
    assert exported.stat().st_size < checkpoint.stat().st_size / 2  # no optimizer state, no history

    from_checkpoint = load_prediction_model(checkpoint)
    from_export = load_prediction_model(exported)
    assert from_export.kind == "export" and from_checkpoint.kind == "checkpoint"
    assert from_export.preprocess == from_checkpoint.preprocess == CACHE_PREPROCESS
    for key, value in from_checkpoint.network.state_dict().items():
        assert torch.equal(value, from_export.network.state_dict()[key]), key
    scan = _good_scan(tmp_path / "in")
    run_prediction(scan, tmp_path / "a.nii.gz", checkpoint, device="cpu", progress=False)
    run_prediction(scan, tmp_path / "b.nii.gz", exported, device="cpu", progress=False)
    assert np.array_equal(nib.load(tmp_path / "a.nii.gz").dataobj, nib.load(tmp_path / "b.nii.gz").dataobj)

    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        export_model(checkpoint, exported)


def test_export_command_and_models_without_their_run(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.fedgin.pt"
    result = invoke("export", "--checkpoint", checkpoint, "-o", out)
    assert result.exit_code == 0, result.output
    assert "preprocessing from prepare.json of the training cache" in result.output

    # The run config's [preprocess] differs from its caches': said, and the caches win.
    model = load_prediction_model(checkpoint)
    assert model.preprocess == CACHE_PREPROCESS and "differs from the training caches" in model.notes[0]
    # A federated checkpoint whose caches are gone: the run config's preprocessing, round as provenance.
    state = torch.load(checkpoint, weights_only=True)
    config = RunConfig.model_validate(state["config"])
    config.data.train = [DataSpec(cache=tmp_path / "gone")]
    config.preprocess = CACHE_PREPROCESS
    federated = tmp_path / "federated.pt"
    torch.save({"format": "fedgin-checkpoint/1", "kind": "federated", "model": state["model"],
                "config": config.model_dump(mode="json"), "round": 7, "step": 7, "history": [{"round": 7}],
                "best_score": 0.5, "best_round": 3}, federated)  # fmt: skip
    model = load_prediction_model(federated)
    assert model.preprocess == CACHE_PREPROCESS and "training caches not found" in model.preprocess_source
    assert model.provenance["round"] == 7 and model.provenance["score"] is None  # best was round 3

    scan = _good_scan(tmp_path / "in")
    for bad, problem in (
        (tmp_path / "none.pt", "model file not found"),
        (_write_text(tmp_path / "notes.pt"), "not a readable checkpoint"),
    ):
        result = invoke("export", "--checkpoint", bad, "-o", tmp_path / "x.pt")
        assert result.exit_code == 2 and result.stderr.startswith(f"error: {bad}: {problem}"), result.stderr
        result = invoke("predict", "-i", scan, "-o", tmp_path / "y", "--model", bad)
        assert result.exit_code == 2 and f"{bad}: {problem}" in result.stderr, result.stderr
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y").exists()
    torch.save({"format": "fedgin-model/9", "model": {}}, tmp_path / "future.pt")
    with pytest.raises(DataError, match="format 'fedgin-model/9' is unknown"):
        load_prediction_model(tmp_path / "future.pt")


def test_predict_command_prints_volumes_and_writes_gz_nifti(exported: Path, tmp_path: Path) -> None:
    scan = _good_scan(tmp_path / "in")
    result = invoke("predict", "-i", scan, "-o", tmp_path / "out", "-m", exported, "--preview", "--device",
                    "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "scan: CT (auto: Hounsfield range" in result.output
    assert "Predicted organ volumes (mL)" in result.output and "liver" in result.output
    label = tmp_path / "out" / "scan.nii.gz"
    assert gzip.decompress(label.read_bytes())[344:348] == b"n+1\x00"  # a gzipped single-file NIfTI-1
    assert nib.load(label).header.get_intent()[0] == "label"
    assert (tmp_path / "out" / "scan_preview.png").exists()
    assert (label.stat().st_mode & 0o777) == 0o644
    for option, problem in (
        ("--modality", "--modality must be ct, mri or auto"),
        ("--device", "--device gpu"),
    ):
        result = invoke("predict", "-i", scan, "-o", tmp_path / "other", "-m", exported, option, "gpu")
        assert result.exit_code == 2 and problem in result.stderr, result.output
