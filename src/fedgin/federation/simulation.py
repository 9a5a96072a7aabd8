"""Simulation: the whole federation on one machine on Flower's simulation engine (Ray backend)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from rich.console import Console

from fedgin.config import RunConfig, dump_toml
from fedgin.errors import ConfigError
from fedgin.federation.server import FederationResult, FederationServer
from fedgin.training.trainer import prepare_run_dir


def check_federation(config: RunConfig) -> None:
    """Refuse configurations that cannot run: no clients, duplicate names, min_clients above the count."""
    federation = config.federation
    if not federation.clients:
        raise ConfigError("federation.clients: no clients (add [[federation.clients]] tables)")
    names = [client.name for client in federation.clients]
    if len(set(names)) != len(names):
        raise ConfigError(f"federation.clients: client names must be unique, got {names}")
    if federation.min_clients > len(names):
        raise ConfigError(
            f"federation.min_clients is {federation.min_clients} but only {len(names)} clients are configured"
        )


def flower_environment(run_dir: Path) -> dict[str, str]:
    """Flower's pitfalls switched off: no telemetry, no runtime installs, FLWR_HOME inside the run."""
    env = {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_HOME": str((run_dir / ".flwr").resolve()),
        "RAY_DEDUP_LOGS": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # Ray's FutureWarning about GPU env vars
    }
    os.environ.update(env)
    Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
    return env


def backend_config(config: RunConfig) -> dict:
    """Ray resources: at most two clients train at a time (one on a GPU), each built inside its call."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    use_gpu = torch.cuda.is_available() and config.train.device != "cpu"
    return {
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": 1 if use_gpu else 0,
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": True,
        },
        "client_resources": {"num_cpus": max(1, cpus // 2), "num_gpus": 1.0 if use_gpu else 0.0},
    }


def run_federation(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    *,
    stop_after: int | None = None,
    client_app: ClientApp | None = None,
) -> FederationResult:
    """Run (or with `resume`, continue) a federation on Flower's simulation engine.

    One virtual SuperNode per entry of `federation.clients` (partition id = position in the list).
    `stop_after` ends the call after that round (as if the server were killed; used to test resuming);
    `client_app` replaces fedgin's ClientApp (fault injection in tests).
    """
    from flwr.simulation import run_simulation

    from fedgin.federation.client import app as default_client_app

    console = console or Console()
    check_federation(config)
    run_dir = config.output
    resume_from = prepare_run_dir(run_dir, resume, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_toml(config, run_dir / "config.toml")
    flower_environment(run_dir)

    server = FederationServer(config, console, resume_from=resume_from, stop_after=stop_after)
    if resume_from is not None:
        console.print(f"resuming {run_dir} after round {server.round}")
    federation = config.federation
    console.print(
        f"[bold]{config.name}[/]: {len(federation.clients)} clients "
        f"({', '.join(client.name for client in federation.clients)}), {federation.strategy}"
        f"{' + FedBN' if federation.fedbn else ''}, {federation.rounds} rounds, GIN "
        f"{'on' if config.gin.enabled else 'off'}"
    )
    server_app = ServerApp()
    server_app.main()(server.main)
    started = time.perf_counter()
    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    # Flower's own notices (run_simulation's deprecation, skipped federated evaluation) are not the user's
    # concern; fedgin reports left-out clients and failed rounds itself.
    flwr_logger.setLevel(logging.ERROR)
    try:
        if server.round < federation.rounds:
            run_simulation(
                server_app=server_app,
                client_app=client_app or default_client_app,
                num_supernodes=len(federation.clients),
                backend_config=backend_config(config),
            )
    finally:
        flwr_logger.setLevel(previous_level)
        _stop_ray()
    server.write_summary(time.perf_counter() - started, engine="simulation")
    return server.result


def _stop_ray() -> None:
    """Flower shuts Ray down at the end of a simulation; make sure of it when a run fails half-way."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


def load_federation_config(path: Path, output: Path | None = None, rounds: int | None = None) -> RunConfig:
    """A federation's run config from TOML with the command line's overrides, checked to be runnable."""
    from fedgin.config import load_toml

    config = load_toml(path, RunConfig)
    if output is not None:
        config.output = output
    if rounds is not None:
        config.federation.rounds = rounds
    check_federation(config)
    return config


def federate_command(
    config_path: Path,
    resume: bool = False,
    overwrite: bool = False,
    output: Path | None = None,
    rounds: int | None = None,
    console: Console | None = None,
) -> FederationResult:
    """What `fedgin federate --config fl.toml [--resume] [--overwrite]` runs."""
    config = load_federation_config(config_path, output, rounds)
    console = console or Console()
    result = run_federation(config, resume=resume, overwrite=overwrite, console=console)
    console.print(
        f"federation {result.run_dir}: {result.rounds} rounds in {result.seconds:.1f} s, best validation "
        f"score {result.best_score:.4f} at round {result.best_round}; checkpoints in "
        f"{result.run_dir / 'checkpoints'}"
    )
    return result
