"""Deployment: fedgin's ServerApp on Flower's deployment engine (SuperLink + one SuperNode per site).

`server_app` does the app config's `task` with the run config whose path the app config names
(`fedgin.federation.flower.write_app`): fedgin's `FederationServer` (rounds.csv, best/last checkpoints in
`config.output`), or the federated statistics / cross-site evaluation (fedgin.federation.statistics,
.cross_site) on the same SuperNodes. The sites run fedgin's ClientApp (`fedgin.federation.client:app`),
their data read from the caches in their node config; what travels between them is declared in
`fedgin.federation.protocol`. Flower's commands, the app folder and the environment are built in
`fedgin.federation.flower`.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedgin.config import RunConfig, load_toml
from fedgin.federation import protocol

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Load the run's fedgin config (its path in the app config) and do the app config's task with the
    connected SuperNodes: the rounds as in simulation, federated statistics or cross-site evaluation."""
    run_config = dict(context.run_config)
    config = load_toml(str(run_config[protocol.APP_CONFIG_FILE]), RunConfig)
    config.federation.require_clients()
    task = str(run_config.get(protocol.APP_TASK, protocol.TASK_TRAIN))
    console = Console()
    if task == protocol.TASK_STATS:
        from fedgin.federation.statistics import StatisticsServer

        out = Path(str(run_config[protocol.APP_OUT]))
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
        out = Path(str(run_config[protocol.APP_OUT]))
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
