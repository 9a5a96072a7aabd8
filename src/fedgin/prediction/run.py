"""`fedgin predict`: NIfTI files or a DICOM series in, label NIfTI files in each input's own geometry out.

Inputs are found and checked by `fedgin.prediction.inputs`, outputs planned, staged and written by
`fedgin.prediction.outputs`; this module runs the model over every case and reports progress.
"""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedgin.config import Modality
from fedgin.errors import ConfigError
from fedgin.io_utils import atomic_write_json, atomic_write_text
from fedgin.model import resolve_amp, resolve_device
from fedgin.nifti import write_nifti
from fedgin.prediction.inputs import (
    MODALITY_CHOICES,
    check_input,
    check_looks_like_image,
    choose_modality,
    find_inputs,
    load_input,
)
from fedgin.prediction.model_file import PredictionModel, load_prediction_model
from fedgin.prediction.outputs import (
    CaseResult,
    PredictionReport,
    StagedOutputs,
    case_info,
    label_image,
    organ_volumes,
    plan_outputs,
    volumes_csv,
)

PREVIEW_SLICES = 4


def predict_label(
    model: PredictionModel,
    image: nib.Nifti1Image,
    modality: Modality,
    device: torch.device,
    amp: bool = False,
    batch_size: int = 32,
) -> np.ndarray:
    """Segment an in-memory image: uint8 labels on exactly the image's voxel grid (shape and order).

    Preprocessing is the model's own (reorient, resample in-plane, normalise, crop/pad); the prediction is
    mapped back with nearest-neighbour resampling by `restore_label`.
    """
    from fedgin.evaluation.inference import predict_volume
    from fedgin.preprocessing import preprocess, restore_label

    volume = preprocess(image, None, modality, model.preprocess)
    cached = predict_volume(
        model.network,
        volume.image,
        device,
        dimensions=model.model_config.dimensions,
        batch_size=batch_size,
        amp=amp,
        roi_size=model.model_config.patch_size,
    )
    label = restore_label(cached, volume.geometry)
    if label.shape != tuple(image.shape[:3]):  # restore_label's contract; a mismatch is a fedgin bug
        raise RuntimeError(f"restored label shape {label.shape} differs from the image's {image.shape}")
    return label


def _resolve_device(name: str) -> torch.device:
    """`resolve_device` with its error reworded for the `--device` option."""
    try:
        return resolve_device(name)
    except (ConfigError, RuntimeError) as error:  # torch.device("gpu") is a RuntimeError
        problem = str(error).split(": ", 1)[-1] if isinstance(error, ConfigError) else "unknown device"
        raise ConfigError(f"--device {name}: {problem} (use auto, cpu or cuda[:N])") from None


def run_prediction(
    input_path: str | Path,
    output: str | Path,
    model: str | Path | PredictionModel,
    modality: str = "auto",
    series: str | None = None,
    preview: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    amp: bool | None = None,
    batch_size: int = 32,
    progress: bool = True,
    console: Console | None = None,
    force: bool = False,
) -> PredictionReport:
    """Segment every input volume and write labels (input geometry), JSON sidecars, volumes CSV, previews.

    Everything that can be checked without reading voxels is checked first (inputs, series, outputs,
    model); outputs are staged and moved into place only after every case succeeded, so an error (e.g. a
    truncated file halfway through a folder) leaves nothing behind. The model is loaded once for all files.
    An input that looks like a label map rather than a scan is refused unless `force`.
    """
    if modality not in MODALITY_CHOICES:
        raise ConfigError(f"--modality must be ct, mri or auto, got {modality!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    inputs = find_inputs(input_path, series)
    for item in inputs:
        check_input(item, force=force)
    plan = plan_outputs(inputs, Path(output), preview, overwrite)
    torch_device = device if isinstance(device, torch.device) else _resolve_device(device)
    use_amp = resolve_amp(amp, torch_device)
    if isinstance(model, PredictionModel):  # already loaded (e.g. by a caller segmenting many folders)
        from fedgin.checkpoints import require_finite_weights

        loaded_model = model
        require_finite_weights(loaded_model.path, loaded_model.network.state_dict())
        loaded_model.network.to(torch_device)
    else:
        loaded_model = load_prediction_model(model, torch_device)
    say = console.print if console is not None else (lambda *args, **kwargs: None)
    say(
        escape(
            f"model {loaded_model.describe()} on {torch_device}{' with mixed precision' if use_amp else ''}; "
            f"preprocessing from {loaded_model.preprocess_source}"
        ),
        highlight=False,
        soft_wrap=True,
    )
    for note in loaded_model.notes:
        say(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)

    staging = StagedOutputs(plan.directory)
    results: list[CaseResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
            task = bar.add_task("predict", total=len(inputs))
            for item, outputs in zip(inputs, plan.cases, strict=True):
                bar.update(task, description=f"predict {item.name}")
                started = time.perf_counter()
                source = load_input(item)
                data = np.asarray(source.image.dataobj)
                if not force:
                    check_looks_like_image(item.path, data)
                chosen, reason = choose_modality(modality, data, source.dicom_modality)
                if console is not None:
                    bar.console.print(
                        escape(f"{item.name}: {chosen.upper()} ({reason})"), highlight=False, soft_wrap=True
                    )
                label = predict_label(loaded_model, source.image, chosen, torch_device, use_amp, batch_size)
                affine = np.asarray(source.image.affine)
                voxels, volumes, voxel_ml = organ_volumes(label, affine, loaded_model.labels)
                case = CaseResult(
                    name=item.name,
                    input=item.path,
                    outputs=outputs,
                    modality=chosen,
                    modality_reason=reason,
                    shape=tuple(int(v) for v in label.shape),
                    voxel_volume_ml=voxel_ml,
                    voxels=voxels,
                    volumes_ml=volumes,
                    seconds=time.perf_counter() - started,
                    series_uid=item.series.uid if item.series is not None else None,
                )
                write_nifti(staging.path(outputs.label), label_image(label, source, loaded_model.labels))
                atomic_write_json(
                    staging.path(outputs.info_json), case_info(case, loaded_model, torch_device, affine)
                )
                if outputs.preview is not None:
                    from fedgin.figures import save_prediction_preview

                    save_prediction_preview(
                        staging.path(outputs.preview), data, label, affine, chosen, loaded_model.labels,
                        f"{item.name} ({chosen.upper()})", PREVIEW_SLICES,
                    )  # fmt: skip
                results.append(case)
                bar.advance(task)
        atomic_write_text(staging.path(plan.volumes_csv), volumes_csv(results, loaded_model.labels))
        staging.commit()
    finally:
        staging.discard()
    return PredictionReport(results, plan.volumes_csv, loaded_model, str(torch_device))
