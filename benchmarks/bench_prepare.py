"""Preprocessing throughput: `fedgin.prepare.prepare` on synthetic CTs of the demo's size, 1 and 2 workers.

Each repetition prepares every volume into an empty cache (default preprocessing: RAS+, 3 mm in-plane,
CT window, z-score, 128 x 128), so nothing is skipped; volumes per second are medians of the repetitions.
With 2 workers the time includes starting the worker processes (spawned, each imports torch).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import load_average, median, prepared_cache, synthetic_volumes
from fedgin.config import PreprocessConfig


def run(
    volumes: int = 16,
    workers: tuple[int, ...] = (1, 2),
    repeats: int = 3,
    shape: tuple[int, int, int] = (128, 128, 64),
    work: Path | None = None,
) -> dict:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        data = synthetic_volumes(Path(tmp) / "data", volumes, shape)
        results: dict = {
            "volumes": volumes,
            "shape": list(shape),
            "repeats": repeats,
            "load_before": load_average(),
        }
        for count in workers:
            seconds = []
            for _ in range(repeats):
                out = Path(tmp) / f"cache_{count}"
                shutil.rmtree(out, ignore_errors=True)
                started = time.perf_counter()
                prepared_cache(data, out, PreprocessConfig(), workers=count)
                seconds.append(time.perf_counter() - started)
            results[f"workers_{count}"] = {
                "seconds": round(median(seconds), 3),
                "volumes_per_s": round(volumes / median(seconds), 2),
                "all_seconds": [round(value, 3) for value in seconds],
            }
        results["load_after"] = load_average()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--volumes", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = run(args.volumes, tuple(args.workers), args.repeats)
    print(f"{args.volumes} volumes of 128x128x64; load average before {result['load_before']}")
    for count in args.workers:
        entry = result[f"workers_{count}"]
        print(
            f"workers {count}: {entry['volumes_per_s']:.2f} volumes/s "
            f"({entry['seconds']:.2f} s; all runs {entry['all_seconds']})"
        )
    print(f"load average after {result['load_after']}")


if __name__ == "__main__":
    main()
