"""Federated statistics on Flower: every site describes its caches, only aggregates travel.

The server (`StatisticsServer.main`, a ServerApp main for either engine) reaches the sites, then asks in
two passes, each a `query.stats` message per site:

1. `ranges`: each site's intensity range per group (modality / domain / protocol), raw and preprocessed;
   the server makes the federation's histogram edges from them, so all sites bin alike;
2. `statistics`: each site's counts, sums, ranges and histograms on those edges (fedgin.statistics.site),
   with counts below `stats.min_count` suppressed and optional Laplace noise, both applied on the site.

The server merges them (fedgin.statistics.merge), checks for sites unlike the others
(fedgin.statistics.report.check_sites, one line each) and writes stats.json, stats.md and the figures into
a staging folder that replaces the output folder once complete. No image, case id or file name leaves a
site; the request carries only the site's own data specification and the stats settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from rich.console import Console

from fedgin import statistics
from fedgin.config import ClientSpec, RunConfig, StatsConfig
from fedgin.errors import ConfigError
from fedgin.federation.site_requests import SiteRequests
from fedgin.folders import check_replaceable
from fedgin.training.seeding import derive_seed

#: The ClientApp's action for statistics requests: message type "query.stats".
ACTION = "stats"
MESSAGE_TYPE = f"{MessageType.QUERY}.{ACTION}"
#: The request's ConfigRecord and its keys.
REQUEST = "fedgin-stats-request"
PASS = "pass"
SITE_SPEC = "client-spec"
SETTINGS = "stats-settings"
EDGES = "edges"
SEED = "seed"
#: The reply's ConfigRecord and its key: the site's aggregates as JSON.
REPLY = "fedgin-stats"
RESULT = "result"
PASS_RANGES = "ranges"
PASS_STATISTICS = "statistics"


def site_reply(message: Message, context: Context) -> Message:
    """The ClientApp's answer to a statistics request: this site's aggregates, computed on its caches
    (the node config's `cache` applied, as for training)."""
    from fedgin.federation.client import local_caches

    request = message.content[REQUEST]
    spec = local_caches(ClientSpec.model_validate_json(str(request[SITE_SPEC])), context.node_config)
    try:
        settings = StatsConfig.model_validate_json(str(request[SETTINGS]))
        if str(request[PASS]) == PASS_RANGES:
            result = statistics.site_ranges(spec.data, settings)
        else:
            edges = json.loads(str(request[EDGES]))
            result = statistics.site_statistics(spec.data, settings, edges, seed=int(request[SEED]))
    except Exception as error:
        raise RuntimeError(f"client {spec.name}: {type(error).__name__}: {error}") from error
    return Message(RecordDict({REPLY: ConfigRecord({RESULT: json.dumps(result)})}), reply_to=message)


@dataclass
class StatisticsResult:
    """Where the statistics went, the sites described and the warnings (also in stats.json)."""

    out_dir: Path
    sites: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


class StatisticsServer(SiteRequests):
    """The ServerApp main of `fedgin stats` (simulation and deployment)."""

    def __init__(self, config: RunConfig, console: Console, out_dir: Path) -> None:
        super().__init__(config, console)
        self.out_dir = Path(out_dir)
        check_replaceable(self.out_dir, "stats")  # before any site is asked: nothing else is replaced
        self.result: StatisticsResult | None = None

    def request(self, grid: Grid, step: str, edges: dict | None = None) -> dict[str, dict]:
        """One pass over every reached site: its JSON result by site name (problems in `unreached`)."""
        settings = self.config.stats.model_dump_json()
        contents = {}
        for node, spec in self.nodes.items():
            record = {PASS: step, SITE_SPEC: spec.model_dump_json(), SETTINGS: settings}
            if edges is not None:
                record[EDGES] = json.dumps(edges)
                record[SEED] = derive_seed(self.config.seed, "stats", spec.name)
            contents[node] = RecordDict({REQUEST: ConfigRecord(record)})
        answers = self.ask(grid, MESSAGE_TYPE, contents)
        self.unreached.update(answers.problems)
        for name, problem in answers.problems.items():
            self.console.print(f"[yellow]warning:[/] site {name!r} left out of the statistics: {problem}")
        return {name: json.loads(str(reply[REPLY][RESULT])) for name, reply in answers.replies.items()}

    def main(self, grid: Grid, context: Context) -> None:
        self.reach(grid)
        ranges = self.request(grid, PASS_RANGES)
        edges = statistics.edges_from_ranges(ranges, self.config.stats)
        described = self.request(grid, PASS_STATISTICS, edges)
        if not described:
            from fedgin.federation.screening import FederationError

            reasons = "; ".join(f"{name}: {problem}" for name, problem in self.unreached.items())
            raise FederationError(f"no site returned statistics ({reasons})")
        merged = statistics.merge(described, edges)
        merged["sites_missing"] = dict(self.unreached)
        warnings = [
            *(f"site {name!r}: not described ({problem})" for name, problem in self.unreached.items()),
            *statistics.check_sites(merged),
        ]
        files = write_staged(self.out_dir, merged, self.config.stats, warnings)
        self.result = StatisticsResult(self.out_dir, sorted(described), warnings, files)


def write_staged(out_dir: Path, merged: dict, settings: StatsConfig, warnings: list[str]) -> list[Path]:
    """Write the statistics into a staging folder that then takes the place of `out_dir` (a failure
    half-way leaves the previous statistics untouched); only a statistics folder fedgin made is replaced."""
    from fedgin.io_utils import staged_folder

    with staged_folder(out_dir, "stats") as staging:
        written = statistics.write_outputs(staging, merged, settings, warnings)
    return [out_dir / Path(path).name for path in written]


def default_out(config: RunConfig) -> Path:
    """Where `fedgin stats` writes by default: `stats` in the run's output folder."""
    return Path(config.output) / "stats"


def check_site_caches(config: RunConfig) -> None:
    """Simulation: every site's caches open and select cases of the stats splits, before Ray starts (one
    line naming the site and the cache otherwise; in a deployment such a site is reported, not refused)."""
    from fedgin.errors import DataError, FedginError
    from fedgin.training.data import select_cases

    for spec in config.federation.clients:
        for data in spec.data:
            try:
                select_cases(data, config.stats.splits)
            except DataError as error:
                raise DataError(error.path, f"{error.problem} (site {spec.name!r})") from None
            except FedginError as error:
                raise ConfigError(f"site {spec.name!r}: {error}") from None


def run_statistics(
    config: RunConfig, console: Console | None = None, out: Path | None = None
) -> StatisticsResult:
    """Federated statistics of the federation's sites on Flower's simulation engine."""
    from fedgin.federation.client import app
    from fedgin.federation.simulation import simulate

    console = console or Console()
    config.federation.require_clients()
    check_site_caches(config)
    server = StatisticsServer(config, console, out or default_out(config))
    try:
        simulate(
            config,
            server.main,
            app,
            server.interrupt,
            Path(config.output) / ".flwr",
            interrupted=lambda: "interrupted before the statistics were complete; run the same command again",
        )
    except KeyboardInterrupt:
        if server.result is None:
            raise
        # The statistics were written before the Ctrl-C took effect: the run is complete.
    if server.result is None:
        from fedgin.federation.screening import FederationError

        raise FederationError("the statistics did not finish (see the messages above)")
    return server.result


__all__ = [
    "MESSAGE_TYPE",
    "StatisticsResult",
    "StatisticsServer",
    "default_out",
    "run_statistics",
    "site_reply",
    "write_staged",
]
