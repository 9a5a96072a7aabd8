"""Deployment: fedgin's ServerApp on Flower's deployment engine (SuperLink + one SuperNode per site).

`server_app` runs fedgin's `FederationServer` (rounds.csv, best/last checkpoints in `config.output`) with
the run config whose path the app config names (`fedgin.federation.flower.write_app`). The sites run
fedgin's ClientApp (`fedgin.federation.client:app`), their data read from the caches in their node config;
what travels between them is declared in `fedgin.federation.protocol`. Flower's commands, the app folder
and the environment are built in `fedgin.federation.flower`.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedgin.config import RunConfig, load_toml
from fedgin.federation import protocol

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Load the run's fedgin config (its path in the app config) and run the rounds as in simulation."""
    from fedgin.federation.server import FederationServer

    run_config = dict(context.run_config)
    config = load_toml(str(run_config[protocol.APP_CONFIG_FILE]), RunConfig)
    config.federation.require_clients()
    server = FederationServer.open(
        config,
        Console(),
        resume=bool(run_config.get(protocol.APP_RESUME)),
        overwrite=bool(run_config.get(protocol.APP_OVERWRITE)),
    )
    server.main(grid, context)
    server.write_summary(server.seconds, engine="deployment")


__all__ = ["server_app"]
