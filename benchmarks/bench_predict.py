"""Seconds per volume of `fedgin predict` (NIfTI in, labels + JSON + CSV out) for a ~256 x 256 x 100 CT."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import torch

from fedgin.config import ModelConfig, PreprocessConfig, RunConfig, SynthConfig
from fedgin.model import build_unet, count_parameters, resolve_device
from fedgin.prediction import export_model, load_prediction_model, predict_label, run_prediction
from fedgin.synth import make_subject
from fedgin.synth.layouts import image_data


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_volume(folder: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Path:
    """A synthetic abdominal CT as a gzipped int16 NIfTI, as scanners' converters write them."""
    config = SynthConfig(subjects=1, seed=0, shape=shape, spacing=spacing)
    image, _, affine = make_subject(config, 0, "ct")
    path = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image_data(image, "ct"), affine), path)
    return path


def write_model(folder: Path) -> Path:
    """An exported model with random weights at the default model and preprocessing configuration."""
    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(), preprocess=PreprocessConfig())
    checkpoint = folder / "random.pt"
    state = build_unet(config.model).state_dict()
    torch.save({"model": state, "config": config.model_dump(mode="json")}, checkpoint)
    return export_model(checkpoint, folder / "random.fedgin.pt").path


def measure(
    shape: tuple[int, int, int] = (256, 256, 100),
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0),
    repeats: int = 5,
    device: str = "auto",
) -> dict:
    """Median seconds per volume end to end (`run_prediction`) and of the in-memory part alone."""
    resolved = resolve_device(device)
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scan = write_volume(folder, shape, spacing)
        started = time.perf_counter()
        model = load_prediction_model(write_model(folder), resolved)  # loaded once, as for a folder of files
        load_s = time.perf_counter() - started
        image = nib.load(scan)
        image = nib.Nifti1Image(image.get_fdata(dtype="float32"), image.affine)
        totals, inference = [], []
        for index in range(repeats + 1):  # the first run warms up allocators and kernels
            sync(resolved)
            started = time.perf_counter()
            run_prediction(scan, folder / "out", model, device=resolved, overwrite=True, progress=False)
            sync(resolved)
            total = time.perf_counter() - started
            started = time.perf_counter()
            predict_label(model, image, "ct", resolved, amp=resolved.type == "cuda")
            sync(resolved)
            if index > 0:
                totals.append(total)
                inference.append(time.perf_counter() - started)
        preprocess = model.preprocess
        parameters = count_parameters(model.network)
    total, core = statistics.median(totals), statistics.median(inference)
    return {
        "shape": list(shape),
        "spacing": list(spacing),
        "model_parameters": parameters,
        "preprocess": f"{preprocess.spacing_mm} mm, {preprocess.size} x {preprocess.size}",
        "model_load_s": round(load_s, 3),
        "repeats": repeats,
        "seconds_per_volume": round(total, 3),
        "fastest": round(min(totals), 3),
        "in_memory_s": round(core, 3),
        "read_write_s": round(total - core, 3),
        "all_seconds": [round(t, 3) for t in totals],
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 100])
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 3.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    )
    r = measure(tuple(args.shape), tuple(args.spacing), args.repeats, args.device)
    load = " ".join(f"{v:.1f}" for v in r["load_before"])
    print(f"device: {name}; torch {torch.__version__}; load average before: {load}")
    print(
        f"volume {'x'.join(map(str, args.shape))} at {'x'.join(map(str, args.spacing))} mm; "
        f"model {ModelConfig().channels} ({r['model_parameters'] / 1e6:.2f} M parameters), "
        f"preprocessing {r['preprocess']}; model file load {r['model_load_s']:.2f} s"
    )
    print(f"{'runs':>5} {'s/volume':>9} {'fastest':>8} {'preprocess+net+restore':>23} {'read+write':>11}")
    print(
        f"{args.repeats:>5} {r['seconds_per_volume']:>9.2f} {r['fastest']:>8.2f} {r['in_memory_s']:>23.2f} "
        f"{r['read_write_s']:>11.2f}"
    )
    load = " ".join(f"{v:.1f}" for v in r["load_after"])
    print(
        f"all runs (s/volume): {', '.join(f'{t:.2f}' for t in r['all_seconds'])}; load average after: {load}"
    )


if __name__ == "__main__":
    main()
