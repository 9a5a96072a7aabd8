"""Wall time of a simulated Flower federation against the same work in a plain loop (the overhead ratio)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console

from fedgin.config import DataConfig, RunConfig, load_toml
from fedgin.federation import run_federation
from fedgin.federation.client import client_run_config
from fedgin.federation.server import initial_state, server_validation
from fedgin.training.data import build_train_slices, build_validation_set
from fedgin.training.trainer import LocalTrainer


def plain_loop(config: RunConfig) -> float:
    """The same rounds without Flower: every site trains in turn, FedAvg by hand, the same validations."""
    started = time.perf_counter()
    federation = config.federation
    state = initial_state(config)
    validation = server_validation(config)
    for server_round in range(1, federation.rounds + 1):
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
        validation.evaluate(trainer.model, trainer.device, trainer.amp, config.model)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("examples/fedgin_three_sites.toml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=50)
    args = parser.parse_args()
    config = load_toml(args.config, RunConfig)
    config.federation.rounds = args.rounds
    config.federation.local_steps = args.local_steps
    config.output = Path("runs/bench/federation_overhead")
    torch.set_num_threads(torch.get_num_threads())
    plain = plain_loop(config)
    started = time.perf_counter()
    run_federation(config, overwrite=True, console=Console(quiet=True))
    flower = time.perf_counter() - started
    sites, steps = len(config.federation.clients), args.local_steps
    print(f"{sites} sites x {args.rounds} rounds x {steps} local steps, batch {config.train.batch_size}")
    print(
        f"plain loop: {plain:.1f} s; Flower simulation: {flower:.1f} s; overhead ratio {flower / plain:.2f}"
    )


if __name__ == "__main__":
    main()
