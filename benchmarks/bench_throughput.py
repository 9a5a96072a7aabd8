"""Training throughput of the local trainer on a real cache, and where a step's time goes.

`LocalTrainer.train_steps` (what centralized runs and federated clients use) at the default configuration
(2D U-Net 16-256 channels, batch 8, 128 x 128 slices, GIN on, DataLoader without worker processes) on a cache
prepared from synthetic CTs of the demo's size. It records, as metrics.csv does, slices per second, the share
of step time spent waiting for data (loading the batch) and the share spent in GIN. Medians over chunks.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import load_average, median, prepared_cache, synthetic_volumes
from fedgin.config import DataConfig, DataSpec, PreprocessConfig, RunConfig, TrainConfig
from fedgin.training.data import build_train_slices
from fedgin.training.trainer import LocalTrainer


def run(
    volumes: int = 6,
    steps: int = 20,
    chunks: int = 3,
    warmup: int = 5,
    num_workers: int = 0,
    cache: Path | None = None,
    work: Path | None = None,
) -> dict:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        if cache is None:
            data = synthetic_volumes(Path(tmp) / "data", volumes)
            cache = prepared_cache(data, Path(tmp) / "cache", PreprocessConfig())
        config = RunConfig(
            data=DataConfig(train=[DataSpec(cache=cache)]),
            train=TrainConfig(num_workers=num_workers),
        )
        trainer = LocalTrainer(config, build_train_slices(config))
        load_before = load_average()
        trainer.train_steps(warmup)
        stats = [trainer.train_steps(steps) for _ in range(chunks)]
        return {
            "slices": len(trainer.train_set),
            "batch": config.train.batch_size,
            "size": int(trainer.train_set[0]["image"].shape[-1]),
            "num_workers": num_workers,
            "steps": steps * chunks,
            "slices_per_s": round(median(s.slices_per_second for s in stats), 1),
            "step_ms": round(median(1e3 * s.seconds / s.steps for s in stats), 1),
            "data_wait_share": round(median(s.data_seconds / s.seconds for s in stats), 4),
            "gin_share": round(median(s.gin_seconds / s.seconds for s in stats), 4),
            "load_before": load_before,
            "load_after": load_average(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="steps per chunk")
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument(
        "--cache", type=Path, help="an existing cache (default: synthetic CTs generated here)"
    )
    args = parser.parse_args()
    r = run(steps=args.steps, chunks=args.chunks, num_workers=args.num_workers, cache=args.cache)
    print(
        f"{r['slices_per_s']} slices/s ({r['step_ms']} ms a step of {r['batch']} x {r['size']}^2), "
        f"data wait {r['data_wait_share']:.1%}, GIN {r['gin_share']:.1%}; "
        f"load {r['load_before']} -> {r['load_after']}"
    )


if __name__ == "__main__":
    main()
