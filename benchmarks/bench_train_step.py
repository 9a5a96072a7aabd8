"""Time of one training step (2D U-Net, batch 8) and GIN's share of it; prints medians of repeated runs."""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fedgin.augment import RandGIN
from fedgin.config import ModelConfig
from fedgin.evaluation.inference import autocast_context
from fedgin.model import build_loss, build_unet, count_parameters, resolve_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(size: int, batch: int, repeats: int, device: torch.device, shared: bool) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_unet(ModelConfig()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    loss_fn = build_loss("dice_ce")
    gin = RandGIN(shared_network=shared)
    amp = device.type == "cuda"
    image = torch.randn(batch, 1, size, size, device=device)
    label = torch.randint(0, 6, (batch, 1, size, size), device=device)
    generator = torch.Generator().manual_seed(0)
    step_times, gin_times = [], []
    for index in range(repeats + 3):  # the first steps warm up allocators and kernels
        sync(device)
        started = time.perf_counter()
        augmented = gin(image, generator=generator)
        sync(device)
        augmented_at = time.perf_counter()
        with autocast_context(device, amp):
            loss = loss_fn(model(augmented).float(), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        finished = time.perf_counter()
        if index >= 3:
            step_times.append(finished - started)
            gin_times.append(augmented_at - started)
    step, gin_time = statistics.median(step_times), statistics.median(gin_times)
    return {
        "step_ms": step * 1e3,
        "gin_ms": gin_time * 1e3,
        "gin_share": gin_time / step,
        "slices_per_s": batch / step,
        "parameters": count_parameters(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    )
    print(f"device: {name}; torch {torch.__version__}")
    print(f"{'size':>5} {'GIN':>10} {'step ms':>9} {'GIN ms':>8} {'GIN share':>10} {'slices/s':>9}")
    for size in args.sizes:
        for shared in (False, True):
            result = measure(size, args.batch, args.repeats, device, shared)
            variant = "shared" if shared else "per-sample"
            print(
                f"{size:>5} {variant:>10} {result['step_ms']:>9.1f} {result['gin_ms']:>8.2f} "
                f"{result['gin_share']:>10.1%} {result['slices_per_s']:>9.1f}"
            )


if __name__ == "__main__":
    main()
