"""One pooled model of the quick study with another recipe: how far and how fast it gets (test Dice, curve).

The quick study's budget is chosen where its pooled models' validation curves are flat; this script is how
the recipe was probed (docs/performance.md): one method of the quick preset (centralized by default, seed
42) on the demo's caches, with the step budget, base rate, schedule, image size and affine augmentation
given on the command line, then tested on the AMOS-like set. Needs `make demo` (or `fedgin demo
--no-study`) first; the 128 x 128 caches are the demo's own (`runs/demo/cache`), the 64 x 64 ones the quick
study's (`runs/demo/cache64`).

    python benchmarks/recipe_probe.py --steps 3000 --lr 2e-3 --schedule poly
    python benchmarks/recipe_probe.py --steps 5000 --affine --size 128
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console

from fedgin.evaluation.evaluate import evaluate_checkpoint
from fedgin.study import load_study, preset_path
from fedgin.study.plan import plan_study
from fedgin.study.report import last_quarter_gain
from fedgin.training.trainer import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="the demo's folder")
    parser.add_argument("--method", default="centralized")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--schedule", default="poly", choices=["poly", "cosine", "constant"])
    parser.add_argument("--size", type=int, default=64, choices=[64, 128])
    parser.add_argument("--affine", action="store_true", help="in-plane affine augmentation on")
    parser.add_argument("--validations", type=int, default=12, help="validations over the run")
    parser.add_argument("--out", type=Path, default=Path("runs/recipe_probe"))
    args = parser.parse_args()

    study = load_study(preset_path("quick", "complete"))
    cache = "cache64" if args.size == 64 else "cache"
    study = type(study).model_validate_json(
        study.model_dump_json().replace('"runs/demo/cache64/', f'"{args.demo.as_posix()}/{cache}/')
    )
    planned = next(run for run in plan_study(study) if run.method == args.method and run.seed == 42)
    name = f"{args.method}-{args.size}-{args.schedule}-{args.lr:g}-{args.steps}"
    name += "-affine" if args.affine else ""
    interval = max(1, args.steps // args.validations)
    config = planned.config.model_copy(
        update={
            "output": args.out / name,
            "train": planned.config.train.model_copy(
                update={
                    "steps": args.steps,
                    "lr": args.lr,
                    "lr_schedule": args.schedule,
                    "val_interval": interval,
                    "checkpoint_interval": interval,
                }
            ),
            "affine": planned.config.affine.model_copy(update={"enabled": args.affine}),
        }
    )
    started = time.perf_counter()
    result = run_training(config, overwrite=True, console=Console(file=io.StringIO()))
    seconds = time.perf_counter() - started
    test = config.output / "test"
    evaluate_checkpoint(
        config.output / "checkpoints" / "best.pt", [spec.cache for spec in study.test], test,
        split="test", device="cpu", progress=False, method=name,
    )  # fmt: skip
    per_case: dict[tuple[str, str], list[float]] = defaultdict(list)
    with open(test / "per_case.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            per_case[(row["modality"], row["case_id"])].append(float(row["dice"]))
    dice = {
        modality: statistics.fmean(statistics.fmean(v) for (m, _), v in per_case.items() if m == modality)
        for modality in ("ct", "mri")
    }
    curve = [round(float(row["val_score"]), 3) for row in result.history if "val_score" in row]
    print(
        f"{name}: {seconds:.0f} s training; test Dice CT {dice['ct']:.3f}, MRI {dice['mri']:.3f}; best "
        f"validation {result.best_score:.3f} at step {result.best_step}; last-quarter gain "
        f"{last_quarter_gain(curve):+.3f}; curve {curve}"
    )


if __name__ == "__main__":
    main()
