"""The quick study's training step on this machine: eager, channels-last and torch.compile, side by side,
and what the in-plane affine augmentation adds (fedgin's batched form beside MONAI's per-sample RandAffined).

Usage: python benchmarks/bench_step_variants.py [--size 64] [--batch 8] [--repeats 30]

All variants train the same U-Net (the quick preset's channels and strides) on the same batch, one after
the other in one process; medians of the repetitions after a warm-up (torch.compile's compilation is in the
warm-up and reported separately).
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.data import set_track_meta
from monai.transforms import RandAffined

from common import load_average, median
from fedgin.augment import RandAffine
from fedgin.config import ModelConfig
from fedgin.model import build_loss, build_unet

QUICK_MODEL = ModelConfig(channels=(16, 32, 64, 128), strides=(2, 2, 2))


def step_times(variant: str, image: torch.Tensor, label: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(median seconds per step, seconds of the warm-up) of one variant."""
    torch.manual_seed(0)
    model = build_unet(QUICK_MODEL)
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if variant == "compile" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = build_loss("dice_ce")

    def step() -> None:
        loss = loss_fn(forward(image).float(), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    for _ in range(3):
        step()
    warmup = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return median(times), warmup


def affine_times(image: torch.Tensor, label: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms per batch: fedgin's batched RandAffine and MONAI's RandAffined sample by sample."""
    batched = RandAffine(prob=1.0, rotate_deg=15, scale=0.15, translate=0.05)
    monai = RandAffined(
        keys=("image", "label"), prob=1.0, rotate_range=(0.26,), scale_range=(0.15, 0.15),
        translate_range=(3, 3), mode=("bilinear", "nearest"), padding_mode=("border", "zeros"),
    )  # fmt: skip
    monai.set_random_state(0)
    generator = torch.Generator().manual_seed(0)
    set_track_meta(False)
    ours, theirs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        batched(image, label, generator=generator)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        for index in range(image.shape[0]):
            monai({"image": image[index], "label": label[index]})
        theirs.append(time.perf_counter() - started)
    set_track_meta(True)
    return {"affine_batched_ms": median(ours) * 1e3, "affine_monai_per_sample_ms": median(theirs) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--variants", default="eager,channels_last,compile")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, 1, args.size, args.size, generator=generator)
    label = torch.randint(0, 6, (args.batch, 1, args.size, args.size), generator=generator)
    print(f"{args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"load {load_average()}")  # fmt: skip
    eager = None
    for variant in args.variants.split(","):
        seconds, warmup = step_times(variant, image, label, args.repeats)
        eager = eager or seconds
        print(f"  {variant:<14} {seconds * 1e3:7.1f} ms/step  x{eager / seconds:4.2f} of eager  "
              f"(warm-up {warmup:.1f} s)")  # fmt: skip
    affine = affine_times(image, label, args.repeats)
    step = eager or 1.0
    for name, ms in affine.items():
        print(f"  {name:<28} {ms:7.2f} ms/batch = {100 * ms / 1e3 / step:5.1f} % of an eager step")


if __name__ == "__main__":
    main()
