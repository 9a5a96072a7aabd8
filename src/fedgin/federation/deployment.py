"""Deployment: fedgin's ServerApp on Flower's deployment engine (SuperLink + one SuperNode per site).

`server_app` does the app config's `task` with the run config whose path the app config names
(`fedgin.federation.flower.write_app`): fedgin's `FederationServer` (rounds.csv, best/last checkpoints in
`config.output`), or the federated statistics / cross-site evaluation (fedgin.federation.statistics,
.cross_site) on the same SuperNodes. The sites run fedgin's ClientApp (`fedgin.federation.client:app`),
their data read from the caches in their node config; what travels between them is declared in
`fedgin.federation.protocol`. Flower's commands, the app folder and the environment are built in
`fedgin.federation.flower`.

The ServerApp reads the config file only if its SHA-256 is the one in the (signed) app config. Whatever
the run configuration says, it reads its config file and writes (and, with
`overwrite`, deletes) only strictly below the runs root its SuperLink was given
(`fedgin deploy superlink --runs-root`, passed down as FEDGIN_RUNS_ROOT; default: the folder the SuperLink
runs in).
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedgin.config import RunConfig, validate
from fedgin.errors import ConfigError
from fedgin.federation import protocol
from fedgin.federation.flower import APP_CONFIG_SHA256, RUNS_ROOT_ENV, below_runs_root, runs_root

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Load the run's fedgin config (its path in the app config) and do the app config's task with the
    connected SuperNodes: the rounds as in simulation, federated statistics or cross-site evaluation."""
    run_config = dict(context.run_config)
    root = runs_root(os.environ.get(RUNS_ROOT_ENV) or Path.cwd())
    config_file = below_runs_root(root, str(run_config[protocol.APP_CONFIG_FILE]), "the run's config file")
    try:
        content = config_file.read_bytes()
    except OSError as error:
        raise ConfigError(f"{config_file}: cannot read the run's config file ({error.strerror})") from None
    if hashlib.sha256(content).hexdigest() != str(run_config.get(APP_CONFIG_SHA256, "")):
        raise ConfigError(f"{config_file} is not the config file the run was signed with: run refused")
    # parsed from the bytes just checked (the file could change after)
    config = validate(tomllib.loads(content.decode("utf-8")), RunConfig, source=str(config_file))
    config.federation.require_clients()
    task = str(run_config.get(protocol.APP_TASK, protocol.TASK_TRAIN))
    if task not in (protocol.TASK_TRAIN, protocol.TASK_STATS, protocol.TASK_CROSS_SITE):
        raise ConfigError(f"unknown task {task!r} in the run configuration")
    # the folder the task writes (and may replace): the run's output, or the stats/cross-site folder
    out = below_runs_root(
        root,
        config.output if task == protocol.TASK_TRAIN else str(run_config[protocol.APP_OUT]),
        f"the {task} output",
    )
    if config.tracking.tensorboard is not None:
        below_runs_root(root, config.tracking.tensorboard, "tracking.tensorboard")
    console = Console()
    if task == protocol.TASK_STATS:
        from fedgin.federation.statistics import StatisticsServer

        statistics = StatisticsServer(config, console, out)
        statistics.main(grid, context)
        for warning in statistics.result.warnings if statistics.result else []:
            console.print(f"warning: {warning}", highlight=False, soft_wrap=True)
        console.print(f"statistics written to {out}")
        return
    if task == protocol.TASK_CROSS_SITE:
        from fedgin.federation.cross_site import CrossSiteServer, Model, matrix_table

        models = [
            Model.from_checkpoint(name, Path(path))
            for name, path in json.loads(str(run_config[protocol.APP_MODELS])).items()
        ]
        evaluation = CrossSiteServer(
            config, console, models, out, str(run_config.get(protocol.APP_SPLIT, "test"))
        )
        evaluation.main(grid, context)
        if evaluation.result is not None:
            console.print(matrix_table(evaluation.result))
        return
    from fedgin.federation.server import FederationServer

    server = FederationServer.open(
        config,
        console,
        resume=bool(run_config.get(protocol.APP_RESUME)),
        overwrite=bool(run_config.get(protocol.APP_OVERWRITE)),
    )
    server.main(grid, context)
    server.write_summary(server.seconds, engine="deployment")


__all__ = ["server_app"]
