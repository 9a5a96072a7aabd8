"""Federation overhead and memory: Flower's simulation engine against the same work in a plain loop.

For each number of clients, two fresh processes run the same federation: `plain` trains every client in turn
in one process (same local steps, FedAvg by hand, the same client and server validations), `flower` runs
`fedgin.federation.run_federation` (Ray start-up and shut-down included). Sizes are the quick study preset's
(64 x 64 slices at 6 mm, a 4-level U-Net of 16-128 channels, batch 8, 50 local steps), with a few rounds.
The parent samples the summed RSS (and PSS, which counts shared pages once) of each process and all its
descendants (Ray's GCS, raylet and workers) every half second and keeps the peak.

Reasons for the difference are measured too: the time outside rounds (Ray and the simulation engine starting
and stopping), round 1 against later rounds (Ray workers importing torch and fedgin), and the server's
per-round bookkeeping that the plain loop does not do (checkpoints, rounds.csv, learning-curve PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TreeMemory, load_average, median, prepared_cache, synthetic_volumes
from fedgin.config import DataSpec, PreprocessConfig, RunConfig

#: The quick study preset's sizes (src/fedgin/study/presets/quick-*.toml).
QUICK_PREPROCESS = PreprocessConfig(spacing_mm=6.0, size=64)
QUICK_MODEL = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2)}
QUICK_LOCAL_STEPS = 50
QUICK_ROUNDS = 12


def build_config(
    cache: Path, clients: int, rounds: int, local_steps: int, output: Path, update_dtype: str = "float32"
) -> RunConfig:
    """`clients` sites, each training on one case of the cache (cases reused round-robin)."""
    from fedgin.training.data import select_cases

    cases = len(select_cases(DataSpec(cache=cache), ["train"]))
    return RunConfig(
        name=f"bench-{clients}-clients",
        seed=42,
        output=output,
        model=QUICK_MODEL,
        train={"batch_size": 8, "lr": 1e-3, "val_max_cases": 1},
        federation={
            "rounds": rounds,
            "local_steps": local_steps,
            "min_clients": 2,
            "update_dtype": update_dtype,
            "clients": [
                {"name": f"site{i:02d}", "data": [{"cache": cache, "skip_cases": i % cases, "max_cases": 1}]}
                for i in range(clients)
            ],
            "server_eval": [{"cache": cache, "splits": ["val"], "max_cases": 1}],
        },
    )


# -- the two modes, each run in a fresh process ---------------------------------------------------------
def plain_loop(config: RunConfig) -> dict:
    """The same rounds without Flower: every site trains in turn, FedAvg by hand, the same validations."""
    import torch
    from rich.console import Console

    from fedgin.config import DataConfig
    from fedgin.federation.client import client_run_config
    from fedgin.federation.server import FederationServer, initial_state, server_validation
    from fedgin.training.data import build_train_slices, build_validation_set
    from fedgin.training.trainer import LocalTrainer

    started = time.perf_counter()
    federation = config.federation
    state = initial_state(config)
    validation = server_validation(config)
    round_seconds, bookkeeping = [], []
    bookkeeper = FederationServer(config, Console(quiet=True))
    for server_round in range(1, federation.rounds + 1):
        round_started = time.perf_counter()
        updates, weights = [], []
        for spec in federation.clients:
            local = client_run_config(config, spec, server_round)
            trainer = LocalTrainer(local, build_train_slices(local))
            trainer.model.load_state_dict(state)
            trainer.train_steps(federation.local_steps or trainer.batches_per_epoch * federation.local_epochs)
            if federation.client_validation:
                site = build_validation_set(local.model_copy(update={"data": DataConfig(train=spec.data)}))
                site.evaluate(trainer.model, trainer.device, trainer.amp, local.model)
            updates.append({key: value.detach().clone() for key, value in trainer.model.state_dict().items()})
            weights.append(len(trainer.train_set))
        total = sum(weights)
        state = {
            key: sum(
                update[key].float() * (weight / total)
                for update, weight in zip(updates, weights, strict=True)
            ).to(updates[0][key].dtype)
            for key in state
        }
        trainer.model.load_state_dict(state)
        columns, score = validation.record(trainer.model, trainer.device, trainer.amp, config.model)
        round_seconds.append(time.perf_counter() - round_started)
        # Measured apart, not counted in the plain loop's time: what the server writes every round.
        kept = time.perf_counter()
        bookkeeper.state, bookkeeper.round = state, server_round
        bookkeeper.history.append({"round": server_round, "val_score": score, **columns})
        bookkeeper.save("best.pt")
        bookkeeper.save("last.pt")
        bookkeeper.run.write_history(bookkeeper.history)
        bookkeeping.append(time.perf_counter() - kept)
    seconds = time.perf_counter() - started - sum(bookkeeping)
    return {
        "seconds": seconds,
        "round_seconds": round_seconds,
        "bookkeeping_seconds": bookkeeping,
        "torch_threads": torch.get_num_threads(),
    }


def flower(config: RunConfig) -> dict:
    import csv

    from rich.console import Console

    from fedgin.federation import run_federation

    started = time.perf_counter()
    run_federation(config, overwrite=True, console=Console(quiet=True))
    seconds = time.perf_counter() - started
    with open(config.output / "rounds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    clients = len(config.federation.clients)
    round_seconds = [float(row["seconds"]) for row in rows]
    return {
        "seconds": seconds,
        "round_seconds": round_seconds,
        "outside_rounds_seconds": seconds - sum(round_seconds),
        "bytes_down_per_client": median(int(row["bytes_down"]) / clients for row in rows),
        "bytes_up_per_client": median(int(row["bytes_up"]) / clients for row in rows),
        "clients_per_round": [int(row["clients"]) for row in rows],
    }


def ray_probe(config: RunConfig) -> dict:
    """Flower's fixed cost taken apart: Ray starting, a Ray worker importing the ClientApp, Ray stopping."""
    import ray

    from fedgin.federation.flower import flower_env
    from fedgin.federation.simulation import backend_config

    os.environ.update(flower_env(config.output / ".flwr"))
    started = time.perf_counter()
    ray.init(**backend_config(config)["init_args"])
    initialised = time.perf_counter()

    @ray.remote(num_cpus=1)
    def import_client_app() -> float:
        began = time.perf_counter()
        import fedgin.federation.client  # noqa: F401  (torch, MONAI, Flower and fedgin)

        return time.perf_counter() - began

    imports = ray.get([import_client_app.remote() for _ in range(2)])
    imported = time.perf_counter()
    ray.shutdown()
    return {
        "ray_init_s": initialised - started,
        "two_workers_start_and_import_s": imported - initialised,
        "import_in_worker_s": median(imports),
        "ray_shutdown_s": time.perf_counter() - imported,
    }


def worker(mode: str, spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    config = build_config(
        Path(spec["cache"]),
        spec["clients"],
        spec["rounds"],
        spec["local_steps"],
        Path(spec["output"]),
        spec.get("update_dtype", "float32"),
    )
    result = {"plain": plain_loop, "flower": flower, "ray": ray_probe}[mode](config)
    Path(spec["result"]).write_text(json.dumps(result))


# -- the parent: one fresh process per configuration, memory sampled from outside ------------------------
def run_one(mode: str, spec: dict, folder: Path, repeat: int = 0) -> dict:
    name = f"{mode}_{spec['clients']}_{spec.get('update_dtype', 'float32')}_{repeat}"
    spec = {**spec, "output": str(folder / name), "result": str(folder / f"{name}.json")}
    spec_path = folder / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    load = load_average()
    started = time.perf_counter()
    with open(folder / f"{name}.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, __file__, "--worker", mode, "--spec", str(spec_path)], stdout=log, stderr=log
        )
        with TreeMemory(process.pid) as memory:
            code = process.wait()
    if code != 0:
        tail = (folder / f"{name}.log").read_text()[-3000:]
        raise RuntimeError(f"{name} failed with exit code {code}:\n{tail}")
    result = json.loads(Path(spec["result"]).read_text())
    return {
        **result,
        **memory.as_dict(),
        "process_seconds": time.perf_counter() - started,
        "load_before": load,
        "load_after": load_average(),
    }


def summarise(clients: int, plain: dict, flwr: dict) -> dict:
    """The figures of one configuration: wall times, ratio, memory and where Flower's extra time goes."""
    rounds = len(flwr["round_seconds"])
    later_flower = median(flwr["round_seconds"][1:]) if rounds > 1 else flwr["round_seconds"][0]
    later_plain = median(plain["round_seconds"][1:]) if rounds > 1 else plain["round_seconds"][0]
    plain_outside = plain["seconds"] - sum(plain["round_seconds"])
    bookkeeping = median(plain["bookkeeping_seconds"])
    startup = flwr["outside_rounds_seconds"] + flwr["round_seconds"][0] - later_flower
    # The quick preset's 12 rounds from the measured parts: fixed start-up once, then rounds of either kind.
    flower_12 = startup + QUICK_ROUNDS * later_flower
    plain_12 = plain_outside + plain["round_seconds"][0] + (QUICK_ROUNDS - 1) * later_plain
    return {
        "clients": clients,
        "rounds": rounds,
        "flower_startup_s": round(startup, 2),
        "ratio_without_bookkeeping": round((flwr["seconds"] - rounds * bookkeeping) / plain["seconds"], 3),
        "projected_ratio_12_rounds": round(flower_12 / plain_12, 3),
        "plain_s": round(plain["seconds"], 2),
        "flower_s": round(flwr["seconds"], 2),
        "ratio": round(flwr["seconds"] / plain["seconds"], 3),
        "flower_outside_rounds_s": round(flwr["outside_rounds_seconds"], 2),
        "flower_round1_s": round(flwr["round_seconds"][0], 2),
        "flower_round_s": round(later_flower, 2),
        "plain_round1_s": round(plain["round_seconds"][0], 2),
        "plain_round_s": round(later_plain, 2),
        "round_ratio": round(later_flower / later_plain, 3),
        "server_bookkeeping_s": round(median(plain["bookkeeping_seconds"]), 3),
        "plain_peak_rss_mb": plain["peak_rss_mb"],
        "flower_peak_rss_mb": flwr["peak_rss_mb"],
        "plain_peak_pss_mb": plain["peak_pss_mb"],
        "flower_peak_pss_mb": flwr["peak_pss_mb"],
        "flower_peak_processes": flwr["peak_processes"],
        "bytes_down_per_client": flwr["bytes_down_per_client"],
        "bytes_up_per_client": flwr["bytes_up_per_client"],
        "load_before": plain["load_before"],
        "load_after": flwr["load_after"],
        "plain": plain,
        "flower": flwr,
    }


def combine(runs: list[dict]) -> dict:
    """The median of each figure over repeated runs of one configuration (the runs kept beside)."""
    ratio_range = [min(run["ratio"] for run in runs), max(run["ratio"] for run in runs)]
    if len(runs) == 1:
        return {**runs[0], "repeats": 1, "ratio_range": ratio_range}
    row: dict = {}
    for key, value in runs[0].items():
        values = [run[key] for run in runs]
        if isinstance(value, int | float) and not isinstance(value, bool) and len(set(values)) > 1:
            row[key] = median(values)
        elif key not in ("plain", "flower"):
            row[key] = value
    row["load_after"] = runs[-1]["load_after"]
    return {**row, "ratio_range": ratio_range, "repeats": len(runs), "runs": runs}


def measure_configuration(count: int, spec: dict, folder: Path, repeats: int) -> dict:
    """`repeats` runs of plain and Flower, alternating, each in a fresh process; their medians."""
    return combine(
        [
            summarise(count, run_one("plain", spec, folder, repeat), run_one("flower", spec, folder, repeat))
            for repeat in range(repeats)
        ]
    )


def run(
    clients: tuple[int, ...] = (2, 4, 8, 16),
    rounds: int = 3,
    local_steps: int = QUICK_LOCAL_STEPS,
    float16_clients: int | None = 2,
    repeats: int = 1,
    preset: tuple[int, int] | None = (3, QUICK_ROUNDS),
    subjects: int = 10,
    work: Path | None = None,
    log=print,
) -> dict:
    """All configurations (medians of `repeats` runs each, plain and Flower alternating); `preset`
    (clients, rounds) adds the quick study preset's own federation (3 sites, 12 rounds), the overhead
    target's configuration; `float16_clients` adds a Flower run with float16 updates at that size."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        folder = Path(tmp)
        data = synthetic_volumes(folder / "data", subjects)
        cache = prepared_cache(data, folder / "cache", QUICK_PREPROCESS)
        base = {"cache": str(cache), "rounds": rounds, "local_steps": local_steps}
        results: dict = {
            "rounds": rounds,
            "local_steps": local_steps,
            "repeats": repeats,
            "configurations": [],
        }
        probe = run_one("ray", {**base, "clients": 2}, folder)
        results["ray_probe"] = {key: value for key, value in probe.items() if key != "at_peak_mb"}
        log(
            f"Ray: init {probe['ray_init_s']:.1f} s, two workers started and importing fedgin's ClientApp "
            f"{probe['two_workers_start_and_import_s']:.1f} s (the import alone "
            f"{probe['import_in_worker_s']:.1f} s), shutdown {probe['ray_shutdown_s']:.1f} s; "
            f"load {probe['load_before']} -> {probe['load_after']}"
        )
        for count in clients:
            spec = {**base, "clients": count}
            row = measure_configuration(count, spec, folder, repeats)
            results["configurations"].append(row)
            log(
                f"{count:>3} clients: plain {row['plain_s']:.1f} s, Flower {row['flower_s']:.1f} s "
                f"(ratio {row['ratio']:.2f}; outside rounds {row['flower_outside_rounds_s']:.1f} s), "
                f"peak RSS plain {row['plain_peak_rss_mb']:.0f} MB, "
                f"Flower {row['flower_peak_rss_mb']:.0f} MB; "
                f"load {row['load_before']} -> {row['load_after']}"
            )
        if preset:
            count, preset_rounds = preset
            spec = {**base, "clients": count, "rounds": preset_rounds}
            row = measure_configuration(count, spec, folder, repeats)
            results["quick_preset"] = row
            log(
                f"quick preset, {count} clients x {preset_rounds} rounds: plain {row['plain_s']:.1f} s, "
                f"Flower {row['flower_s']:.1f} s (ratio {row['ratio']:.2f}); load {row['load_before']} -> "
                f"{row['load_after']}"
            )
        if float16_clients:
            spec = {**base, "clients": float16_clients, "update_dtype": "float16"}
            half = run_one("flower", spec, folder)
            results["float16"] = {
                "clients": float16_clients,
                "flower_s": round(half["seconds"], 2),
                "bytes_down_per_client": half["bytes_down_per_client"],
                "bytes_up_per_client": half["bytes_up_per_client"],
                "peak_rss_mb": half["peak_rss_mb"],
                "load_before": half["load_before"],
                "load_after": half["load_after"],
                "flower": half,
            }
            log(
                f"{float16_clients:>3} clients, float16 updates: Flower {half['seconds']:.1f} s, "
                f"{half['bytes_down_per_client'] / 1e6:.3f} MB down / "
                f"{half['bytes_up_per_client'] / 1e6:.3f} MB up per client and round"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=QUICK_LOCAL_STEPS)
    parser.add_argument("--float16-clients", type=int, default=2, help="0: no float16 run")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration (medians)")
    parser.add_argument("--worker", choices=["plain", "flower", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.spec)
        return
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    print(
        f"quick-preset sizes (64 x 64, 16-128 channels, batch 8), {args.rounds} rounds x {args.local_steps} "
        f"local steps; load average {load_average()}"
    )
    run(tuple(args.clients), args.rounds, args.local_steps, args.float16_clients or None, args.repeats)


if __name__ == "__main__":
    main()
