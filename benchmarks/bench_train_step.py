"""One training step of the default U-Net and what GIN adds to it, beside MONAI's intensity augmentations.

Per repetition, on the same batch: GIN with per-sample networks (the default), GIN with one network for the
batch (`gin.shared_network`), MONAI's RandHistogramShift and RandBiasField (per sample, as a data pipeline
applies them), then the optimizer step itself (forward, Dice + CE loss, backward, AdamW). Each augmentation's
share is its time over (its time + the step's): what it adds to a step of training. GIN-IPA (`gin.ipa`) is
measured in the same repetitions: its augmentation (three GIN draws and the blend mask) and its step (the
three views as one batch of 3B, segmentation loss on the blended view plus the consistency term), whose ratio
to the plain step is what IPA costs a run. Medians of the repetitions; all figures of a configuration come
from the same run, side by side.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from monai.transforms import RandBiasField, RandHistogramShift

from common import load_average, machine_info, median
from fedgin.augment import RandGIN, RandIPA
from fedgin.config import ModelConfig
from fedgin.evaluation.inference import autocast_context
from fedgin.model import build_loss, build_unet, count_parameters, resolve_device
from fedgin.training.consistency import consistency_loss

#: The augmentations compared, in the order they run in each repetition.
AUGMENTATIONS = ("gin", "gin_shared", "hist_shift", "bias_field", "ipa")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def augmenters(seed: int = 0) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    gin, shared = RandGIN(), RandGIN(shared_network=True)
    ipa = RandIPA(RandGIN())
    generator = torch.Generator().manual_seed(seed)
    hist = RandHistogramShift(num_control_points=10, prob=1.0)
    bias = RandBiasField(degree=3, coeff_range=(0.0, 0.1), prob=1.0)
    hist.set_random_state(seed)
    bias.set_random_state(seed)

    def per_sample(transform: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda batch: torch.stack([torch.as_tensor(transform(sample)) for sample in batch])

    return {
        "gin": lambda batch: gin(batch, generator=generator),
        "gin_shared": lambda batch: shared(batch, generator=generator),
        "hist_shift": per_sample(hist),
        "bias_field": per_sample(bias),
        "ipa": lambda batch: ipa(batch, generator=generator).stacked(),
    }


def measure(
    dimensions: int, size: int, batch: int, repeats: int, device: torch.device, warmup: int = 2
) -> dict[str, float]:
    """Median ms of the step and of each augmentation, and each augmentation's share of a step."""
    torch.manual_seed(0)
    config = ModelConfig(dimensions=dimensions)
    model = build_unet(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    loss_fn = build_loss("dice_ce")
    augment = augmenters()
    amp = device.type == "cuda"
    spatial = (size,) * dimensions
    image = torch.randn(batch, 1, *spatial, device=device)
    label = torch.randint(0, 6, (batch, 1, *spatial), device=device)
    times: dict[str, list[float]] = {name: [] for name in (*AUGMENTATIONS, "step", "ipa_step")}

    def ipa_loss(logits: torch.Tensor) -> torch.Tensor:
        """Segmentation on the blended view, consistency over the three (the trainer's weight 10)."""
        return loss_fn(logits[:batch].float(), label) + 10.0 * consistency_loss(logits.chunk(3))

    def optimizer_step(inputs: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """Seconds of one forward, loss, backward and AdamW step."""
        sync(device)
        started = time.perf_counter()
        with autocast_context(device, amp):
            loss = loss_of(model(inputs))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        return time.perf_counter() - started

    for index in range(repeats + warmup):  # the first repetitions warm up allocators and kernels
        augmented = image
        for name in AUGMENTATIONS:
            sync(device)
            started = time.perf_counter()
            out = augment[name](image)
            sync(device)
            if index >= warmup:
                times[name].append(time.perf_counter() - started)
            if name == "gin":
                augmented = out
            if name == "ipa":
                views = out
        sync(device)
        plain = optimizer_step(augmented, lambda logits: loss_fn(logits.float(), label))
        with_ipa = optimizer_step(views, ipa_loss)
        if index >= warmup:
            times["step"].append(plain)
            times["ipa_step"].append(with_ipa)
    step = median(times["step"])
    ipa_step = median(times["ipa_step"])
    result: dict[str, float] = {
        "dimensions": dimensions,
        "size": size,
        "batch": batch,
        "repeats": repeats,
        "parameters": count_parameters(model),
        "step_ms": round(step * 1e3, 2),
        "slices_per_s": round(batch / step, 1),
        "ipa_step_ms": round(ipa_step * 1e3, 2),
        "ipa_step_ratio": round((ipa_step + median(times["ipa"])) / (step + median(times["gin"])), 3),
    }
    for name in AUGMENTATIONS:
        aug = median(times[name])
        result[f"{name}_ms"] = round(aug * 1e3, 3)
        # IPA's share is of the step it feeds (three views), the others' of the plain step.
        result[f"{name}_share"] = round(aug / (aug + (ipa_step if name == "ipa" else step)), 4)
    return result


def run(
    sizes: list[int],
    batch: int = 8,
    repeats: int = 20,
    size_3d: int | None = 64,
    batch_3d: int = 2,
    repeats_3d: int = 5,
    device: str = "auto",
) -> list[dict]:
    resolved = resolve_device(device)
    results = []
    for size in sizes:
        load = load_average()
        results.append({**measure(2, size, batch, repeats, resolved), "load_before": load})
    if size_3d:
        load = load_average()
        results.append({**measure(3, size_3d, batch_3d, repeats_3d, resolved), "load_before": load})
    for result in results:
        result["load_after"] = load_average()
    return results


def print_table(results: list[dict]) -> None:
    print(
        f"{'config':>16} {'step ms':>8} "
        + " ".join(f"{name + ' ms':>14} {'share':>6}" for name in AUGMENTATIONS)
        + f" {'slices/s':>9}"
    )
    for r in results:
        config = f"{r['dimensions']}D b{r['batch']} {r['size']}^{r['dimensions']}"
        print(
            f"{config:>16} {r['step_ms']:>8.1f} "
            + " ".join(f"{r[f'{name}_ms']:>14.2f} {r[f'{name}_share']:>6.1%}" for name in AUGMENTATIONS)
            + f" {r['slices_per_s']:>9.1f}"
        )
    for r in results:
        config = f"{r['dimensions']}D b{r['batch']} {r['size']}^{r['dimensions']}"
        print(
            f"{config:>16} GIN-IPA: step {r['ipa_step_ms']:.1f} ms, augmentation {r['ipa_ms']:.2f} ms "
            f"({r['ipa_share']:.1%}); augmentation + step {r['ipa_step_ratio']:.2f}x GIN's"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="2D slice sizes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size-3d", type=int, default=64, help="3D patch edge; 0 skips the 3D model")
    parser.add_argument("--batch-3d", type=int, default=2)
    parser.add_argument("--repeats-3d", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    info = machine_info()
    print(f"{info['cpu']} ({info['cores']} cores, {info['torch_threads']} threads); torch {info['torch']}")
    results = run(
        args.sizes, args.batch, args.repeats, args.size_3d, args.batch_3d, args.repeats_3d, args.device
    )
    print_table(results)
    print(f"load average before: {results[0]['load_before']}, after: {results[-1]['load_after']}")


if __name__ == "__main__":
    main()
