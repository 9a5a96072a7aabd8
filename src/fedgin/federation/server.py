"""The ServerApp's round loop: broadcast, screened FedAvg/FedProx, server-side evaluation, checkpoints."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedgin.checkpoints import load_weights
from fedgin.config import ClientSpec, DataConfig, FederationConfig, RunConfig
from fedgin.errors import ConfigError
from fedgin.federation import protocol
from fedgin.federation.fedavg import ScreenedFedAvg
from fedgin.federation.fedprox import ScreenedFedProx
from fedgin.federation.messaging import Stopped, exchange, stop_thread
from fedgin.federation.privacy import (
    UNIT_WEIGHT,
    PrivacyLedger,
    PrivacyMixin,
    build_private_strategy,
    seeded_numpy,
)
from fedgin.federation.robust import (
    ScreenedBulyan,
    ScreenedFedMedian,
    ScreenedFedTrimmedAvg,
    ScreenedKrum,
    ScreenedMultiKrum,
)
from fedgin.federation.screening import ClientReport, FederationError, ScreeningMixin, short_reason
from fedgin.federation.secure_aggregation import SecureAggregation
from fedgin.federation.server_optimizers import (
    ScreenedFedAdam,
    ScreenedFedAvgM,
    ScreenedFedYogi,
    ServerOptimizerMixin,
)
from fedgin.federation.weights import content_bytes, norm_keys, to_record, to_state_dict
from fedgin.model import build_unet, resolve_device_and_amp
from fedgin.runs import Best, RunDirectory
from fedgin.training.data import ValidationSet, build_validation_set
from fedgin.training.schedule import learning_rate
from fedgin.training.seeding import derive_seed

#: Seconds the server waits for enough clients to connect before a round fails.
NODE_TIMEOUT_S = 120.0


class FederationInterrupted(KeyboardInterrupt):
    """Ctrl-C ended the federation; the message says which round is kept and how to continue."""


@dataclass
class FederationResult:
    """A federation's outcome: rounds completed, best global model's score and round, per-round rows."""

    run_dir: Path
    rounds: int
    best_score: float
    best_round: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def build_strategy(
    config: RunConfig, local_keys: set[str], wait_for_all_sites: bool = False
) -> ScreeningMixin:
    """The strategy named in the config, with screening of client replies.

    `wait_for_all_sites` (simulation, where every configured site has a node): sample a round only once
    all of them are registered. Flower's simulation engine registers its nodes while the ServerApp already
    runs; sampling as soon as min_clients are there could leave the others out of round 1.
    """
    federation = config.federation
    available = len(federation.clients) if wait_for_all_sites else federation.min_clients
    flower = {
        "fraction_train": federation.fraction_train,
        "fraction_evaluate": 0.0,  # the global model is evaluated on the server, not on the clients
        "min_train_nodes": federation.min_clients,
        "min_available_nodes": max(available, federation.min_clients),
        "weighted_by_key": protocol.NUM_EXAMPLES,
        "arrayrecord_key": protocol.ARRAYS,
        "configrecord_key": protocol.CONFIG,
    }
    screening = {
        "local_keys": local_keys,
        "node_timeout_s": min(NODE_TIMEOUT_S, federation.round_timeout_s),
        "weighting": federation.weighting,
    }
    if federation.privacy is not None:
        equal = {**flower, "weighted_by_key": UNIT_WEIGHT}
        inner = (
            FedProx(proximal_mu=federation.proximal_mu, **equal)
            if federation.strategy == "fedprox"
            else FedAvg(**equal)
        )
        return build_private_strategy(federation, inner, screening, seed=config.seed)
    common = {**flower, **screening}
    strategies: dict[str, Callable[[], ScreeningMixin]] = {
        "fedavg": lambda: ScreenedFedAvg(**common),
        "fedprox": lambda: ScreenedFedProx(proximal_mu=federation.proximal_mu, **common),
        "median": lambda: ScreenedFedMedian(**common),
        "trimmed_mean": lambda: ScreenedFedTrimmedAvg(beta=federation.trim_beta, **common),
        "krum": lambda: ScreenedKrum(num_malicious_nodes=federation.num_malicious, **common),
        "multikrum": lambda: ScreenedMultiKrum(
            num_malicious_nodes=federation.num_malicious,
            num_nodes_to_select=federation.multikrum_select,
            **common,
        ),
        "bulyan": lambda: ScreenedBulyan(num_malicious_nodes=federation.num_malicious, **common),
        "fedadam": lambda: ScreenedFedAdam(**server_optimizer(federation, 0.1), **common),
        "fedyogi": lambda: ScreenedFedYogi(**server_optimizer(federation, 0.01), **common),
        "fedavgm": lambda: ScreenedFedAvgM(
            server_learning_rate=federation.server_lr or 1.0,
            server_momentum=federation.server_momentum,
            **common,
        ),
    }
    return strategies[federation.strategy]()


def server_optimizer(federation: FederationConfig, default_lr: float) -> dict[str, float]:
    """FedAdam's and FedYogi's settings (eta_l, the sites' rate in Flower's signature, is unused: fedgin's
    sites train at the schedule's rate the server sends)."""
    return {
        "eta": federation.server_lr or default_lr,
        "beta_1": federation.server_momentum,
        "beta_2": federation.server_beta2,
        "tau": federation.server_tau,
    }


class SiteDirectory:
    """Which node is which site, and which nodes hold the run's settings (fedgin.federation.protocol)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.specs: dict[int, ClientSpec] = {}
        #: Why a node is not (yet) known as a site: its answer to the query, or that it gave none.
        self.problems: dict[int, str] = {}
        #: Nodes that received the run's settings from this server process.
        self.settled: set[int] = set()

    def learn(self, asked: list[int], replies: list[Message]) -> None:
        """Record the sites the queried nodes said they are."""
        for node in asked:
            self.problems[node] = "no answer to the server's query for its site"
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.problems[node] = f"client error: {short_reason(reply.error.reason)}"
                continue
            try:
                self.specs[node] = protocol.client_spec(self.config, reply.content[protocol.IDENTITY])
            except (ConfigError, KeyError) as error:
                self.problems[node] = f"unknown site: {error}"
            else:
                self.problems.pop(node, None)

    def settings_for(self, node: int) -> RecordDict | None:
        """The SETTINGS record to add to the node's train message, if it does not hold them yet."""
        if node in self.settled:
            return None
        self.settled.add(node)
        return RecordDict({protocol.SETTINGS: protocol.settings_record(self.config, self.specs[node])})


def server_validation(config: RunConfig) -> ValidationSet:
    """federation.server_eval (else data.val) as a validation set; empty when neither is given."""
    specs = config.federation.server_eval or config.data.val or []
    if not specs:
        return ValidationSet([])
    return build_validation_set(config.model_copy(update={"data": DataConfig(val=specs)}))


def initial_state(config: RunConfig) -> dict[str, torch.Tensor]:
    """The round-0 global model, initialised as the single-site trainer initialises its model."""
    torch.manual_seed(derive_seed(config.seed, "init"))
    return {key: value.detach().clone() for key, value in build_unet(config.model).state_dict().items()}


class FederationServer:
    """Runs the rounds inside the ServerApp and keeps rounds.csv, last.pt and best.pt in the run dir."""

    def __init__(
        self,
        config: RunConfig,
        console: Console,
        resume_from: Path | None = None,
        stop_after: int | None = None,
        wait_for_all_sites: bool = False,
        allow_changed_settings: bool = False,
    ) -> None:
        """`wait_for_all_sites`: see `build_strategy` (the simulation engine sets it);
        `allow_changed_settings`: resume with settings other than last.pt's (`RunDirectory.check_resume`)."""
        self.config = config
        self.console = console
        self.run = RunDirectory(config.output, "federated", title=config.name)
        self.run_dir = self.run.path
        self.stop_after = stop_after
        self.wait_for_all_sites = wait_for_all_sites
        self.device, self.amp = resolve_device_and_amp(config.train)
        self.model = build_unet(config.model).to(self.device)
        self.state = initial_state(config)
        self.round = 0
        self.history: list[dict] = []
        self.best = Best()
        #: The server optimizer's state (fedadam, fedyogi, fedavgm) and the DP clipping norm, from last.pt
        #: when resuming.
        self.optimizer_state: dict = {}
        self.privacy_state: dict = {}
        self.strategy: ScreeningMixin | None = None
        privacy = config.federation.privacy
        #: The epsilon spent (federation.privacy): one Gaussian release per committed round.
        self.ledger = PrivacyLedger(privacy, len(config.federation.clients)) if privacy else None
        if resume_from is not None:
            resumed = self.run.read_checkpoint(resume_from)
            self.run.check_resume(resumed, config, allow_changed_settings)
            load_weights(resume_from, self.model, resumed.payload["model"])  # another model size: one line
            self.state = dict(resumed.payload["model"])
            self.round, self.history, self.best = resumed.progress, resumed.history, resumed.best
            self.optimizer_state = dict(resumed.payload.get("server_optimizer", {}))
            self.privacy_state = dict(resumed.payload.get("privacy", {}))
            if self.ledger is not None:
                self.ledger.compose(self.round)
        from fedgin.tracking import Tracker  # here: this class's only use of it

        #: TensorBoard scalars of each committed round (tracking.tensorboard; a no-op when off).
        self.tracker = Tracker.open(config.tracking, config.name, resume_step=self.round)
        self.seconds = 0.0
        #: Seconds of this process's round loop (the rest of a run's time is the engine's start and stop).
        self.rounds_seconds = 0.0
        #: Set by `interrupt()` (Ctrl-C in the driver): the round in progress is abandoned, not committed.
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.resumed = resume_from is not None
        #: Why each site was last left out of a round (this process's rounds; names from client errors).
        self.left_out_reasons: dict[str, str] = {}
        self.sites = SiteDirectory(config)
        #: federation.secagg: the SecAgg+ workflow (made in `main`, where the ServerApp's context is), and
        #: whether each of its rounds handed the server only the mean (one flag per round).
        self.secure: SecureAggregation | None = None
        self.secure_mean_only: list[bool] = []

    @classmethod
    def open(
        cls, config: RunConfig, console: Console, *, resume: bool, overwrite: bool, **options: object
    ) -> FederationServer:
        """The server of a run folder, for either engine: the folder is checked (refuse / resume), the
        server built (from last.pt when resuming), and only then config.toml written, so a run refused by
        its folder or its model leaves the folder as it was. `options`: those of `__init__`."""
        resume_from = RunDirectory(config.output, "federated").check(resume, overwrite)
        server = cls(config, console, resume_from=resume_from, **options)  # type: ignore[arg-type]
        server.run.start(config, resume_from, overwrite)
        for caveat in config.federation.caveats():
            console.print(f"[yellow]warning:[/] {caveat}")
        return server

    def interrupt(self, grace_s: float = 5.0) -> bool:
        """Stop the round loop from another thread; True once the server's thread has ended.

        The loop stops at once while it waits for replies or between rounds, and a round whose replies are
        all in is finished and committed if that takes at most `grace_s` (a round is committed, or not,
        as a whole: last.pt is replaced in one step). After that the thread is stopped where it is.
        """
        self.stopping.set()
        return stop_thread(self.thread, grace_s)

    def interrupted_message(self) -> str:
        """What the user reads after a Ctrl-C: the round kept and how to continue."""
        if self.round == 0:
            return (
                f"interrupted before round 1 finished: no round kept in {self.run_dir}; start again with "
                "--overwrite (it replaces this run's folder only)"
            )
        rounds = "round 1 is" if self.round == 1 else f"rounds 1-{self.round} are"
        last = self.run_dir / "checkpoints" / "last.pt"
        return f"interrupted: {rounds} kept in {last}; continue with --resume"

    def never_contributed(self) -> dict[str, str]:
        """Sites (by name) with no accepted update in any round of the run, with why they were left out."""
        if not self.history:
            return {}
        clients = self.config.federation.clients
        names = {spec.name for spec in clients}
        # A node that never replied has no name (a round timeout, an error raised outside fedgin's client).
        unnamed = ", ".join(f"{n}: {r}" for n, r in self.left_out_reasons.items() if n not in names)
        missing = {}
        for spec in clients:
            if any(f"examples_{spec.name}" in row for row in self.history):
                continue
            reason = self.left_out_reasons.get(spec.name)
            if reason is None:
                sampled = self.config.federation.fraction_train >= 1.0 or any(
                    spec.name in str(row.get("left_out", "")) for row in self.history
                )
                if not sampled:
                    continue  # never sampled (fraction_train < 1) rather than failing
                reason = "left out of every round" + (
                    f" (left out without a site name: {unnamed})" if unnamed else " (see rounds.csv)"
                )
            missing[spec.name] = reason
        return missing

    def check_contributions(self) -> None:
        """FederationError naming every site that contributed to no round (after the results are written)."""
        missing = self.never_contributed()
        if missing:
            rounds = len(self.history)
            sites = "; ".join(f"site {name!r}: {reason}" for name, reason in missing.items())
            raise FederationError(
                f"{len(missing)} of {len(self.config.federation.clients)} sites contributed to none of the "
                f"{rounds} round{'s' if rounds != 1 else ''} ({sites}); the results in {self.run_dir} come "
                "from the other sites only"
            )

    def _site_name(self, name: str, reason: str) -> str:
        """A left-out reply's site: its name, or for a node never heard from, the site its error names."""
        names = {spec.name for spec in self.config.federation.clients}
        if name in names:
            return name
        for found in re.findall(r"client ([A-Za-z0-9_.-]+):", reason):
            if found in names:
                return found
        return name

    def exchange(self, grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
        """Grid.send_and_receive that also ends (with Stopped) as soon as `interrupt()` is called."""
        return exchange(grid, messages, timeout, self.stopping)

    @property
    def result(self) -> FederationResult:
        return FederationResult(
            self.run_dir, self.round, self.best.score, self.best.progress, list(self.history), self.seconds
        )

    def write_summary(self, seconds: float, engine: str) -> None:
        """summary.json of the run, the same for the simulation and the deployment engine."""
        self.seconds = seconds
        self.tracker.close()  # after an error or Ctrl-C it closes itself when the server is collected
        self.run.write_summary(
            self.round,
            self.best,
            seconds=round(seconds, 3),
            rounds_seconds=round(self.rounds_seconds, 3),
            engine=engine,
            **({"privacy": self.ledger.summary()} if self.ledger is not None else {}),
        )

    def save(self, name: str) -> None:
        """A fedgin checkpoint (loadable by `fedgin evaluate --checkpoint`) of the global model, with the
        server optimizer's state, so that a resumed federation continues it exactly."""
        extra: dict = {}
        if isinstance(self.strategy, ServerOptimizerMixin):
            extra["server_optimizer"] = self.strategy.optimizer_state()
        if isinstance(self.strategy, PrivacyMixin):
            extra["privacy"] = self.strategy.privacy_state()
        self.run.save_checkpoint(
            name,
            model=self.state,
            config=self.config,
            progress=self.round,
            history=self.history,
            best=self.best,
            **extra,
        )

    def check_global(self, state: dict[str, torch.Tensor], server_round: int) -> None:
        """Refuse (RunDiverged, one line) a round's global model whose weights are not all finite: the
        sites' updates are screened, so it comes from the server's own step (a server optimizer's rate,
        DP noise); the round is not committed and last.pt keeps the last good one."""
        federation = self.config.federation
        causes = []
        if isinstance(self.strategy, ServerOptimizerMixin):
            causes.append(f"federation.server_lr ({federation.server_lr or 'default'})")
        if federation.privacy is not None:
            privacy = federation.privacy
            causes.append(
                f"the DP noise (federation.privacy clipping_norm {privacy.clipping_norm}, noise_multiplier "
                f"{privacy.noise_multiplier})"
            )
        again = (
            "then --resume --allow-changed-settings"
            if self.run.committed is not None
            else "then start again with --overwrite"
        )
        hint = (
            f"likely cause: {' or '.join(causes)} too high" if causes else "likely cause: too high a rate"
        ) + f" (lower it, {again})"
        self.run.require_finite(state, server_round, "the averaged model", hint)

    def main(self, grid: Grid, context: Context) -> None:
        """The ServerApp's main: one iteration per round from the last completed one."""
        config, federation = self.config, self.config.federation
        self.thread = threading.current_thread()
        started = time.perf_counter()
        local_keys = norm_keys(self.model) if federation.fedbn else set()
        strategy = build_strategy(config, local_keys, wait_for_all_sites=self.wait_for_all_sites)
        if isinstance(strategy, ServerOptimizerMixin):
            strategy.load_optimizer_state(self.optimizer_state)
        if isinstance(strategy, PrivacyMixin):
            strategy.load_privacy_state(self.privacy_state)
        self.strategy = strategy
        if federation.secagg is not None:
            self.secure = SecureAggregation(federation, context, timeout_s=federation.round_timeout_s)
        validation = server_validation(config)
        last = federation.rounds if self.stop_after is None else min(federation.rounds, self.stop_after)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        ) as progress:
            task = progress.add_task(
                "rounds", total=federation.rounds, completed=self.round, status="starting clients"
            )
            while self.round < last:
                if self.stopping.is_set():
                    raise Stopped()
                row = self.run_round(grid, strategy, validation, self.round + 1)
                summary = (
                    f"round {row['round']}: {row['clients']} clients, loss {row['train_loss']:.4f}, "
                    + ", ".join(
                        f"{domain} {row[f'val_dice_{domain}']:.3f}"
                        for domain in validation.domain_modality
                        if f"val_dice_{domain}" in row
                    )
                    + (f", epsilon {row['epsilon']:.4g}" if "epsilon" in row else "")
                    + (f"; left out: {row['left_out']}" if row["left_out"] else "")
                )
                progress.update(task, completed=self.round, status=f"val {row['val_score']:.3f}")
                progress.console.print(summary)
                self.rounds_seconds = time.perf_counter() - started
        self.seconds = time.perf_counter() - started

    def address(self, grid: Grid, strategy: ScreeningMixin, messages: Iterable[Message]) -> list[Message]:
        """The round's train messages to send: nodes not yet known as sites are asked which they are, and a
        node's first message carries the run's settings and its site's spec (fedgin.federation.protocol)."""
        messages = list(messages)
        unknown = [m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id not in self.sites.specs]
        if unknown:
            queries = [
                Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in unknown
            ]
            self.sites.learn(unknown, self.exchange(grid, queries, self.config.federation.round_timeout_s))
        addressed = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in self.sites.specs:
                strategy.withhold(node, self.sites.problems[node])
                continue
            settings = self.sites.settings_for(node)
            if settings is not None:
                message.content = RecordDict({**message.content, **settings})
            addressed.append(message)
        return addressed

    def secure_round(
        self, grid: Grid, strategy: ScreeningMixin, messages: list[Message], server_round: int
    ) -> tuple[dict[str, torch.Tensor] | None, list[ClientReport]]:
        """The round's training under SecAgg+: the global model plus the mean update (with DP's noise,
        federation.privacy with client-side clipping), or None when too few sites took part."""
        assert self.secure is not None
        shared = [key for key in self.state if key not in strategy.local_keys]
        names = {node: spec.name for node, spec in self.sites.specs.items()}
        result = self.secure.run(grid, server_round, messages, self.state, shared, names)
        self.secure_mean_only.append(result.only_the_mean)
        accepted = sum(report.accepted for report in result.reports)
        if result.mean_update is None or accepted < self.config.federation.min_clients:
            return None, result.reports
        mean = result.mean_update
        if isinstance(strategy, PrivacyMixin):  # the sites clipped; the noise goes on the mean
            stdv = compute_stdv(
                strategy.noise_multiplier, strategy.clipping_norm, strategy.num_sampled_clients
            )
            with seeded_numpy(derive_seed(self.config.seed, "dp-noise", server_round)):
                add_gaussian_noise_inplace(list(mean.values()), stdv)
        state = dict(self.state)
        for key, update in mean.items():
            state[key] = (state[key].double() + torch.from_numpy(update).double()).to(state[key].dtype)
        return state, result.reports

    def run_round(
        self, grid: Grid, strategy: ScreeningMixin, validation: ValidationSet, server_round: int
    ) -> dict:
        started = time.perf_counter()
        reference = self.state
        arrays = to_record(self.state, dtype=self.config.federation.update_dtype)
        # The schedule runs over rounds and the server sends each round's rate: a resumed federation
        # continues it exactly, and every site trains the round at the same rate.
        lr = learning_rate(self.config.train, server_round - 1, self.config.federation.rounds)
        round_settings = ConfigRecord({protocol.LR: lr})
        messages = self.address(
            grid, strategy, strategy.configure_train(server_round, arrays, round_settings, grid)
        )
        bytes_down = sum(content_bytes(message.content) for message in messages)
        clipping_norm = getattr(strategy, "clipping_norm", None)  # DP: the norm of this round's clip
        new_state: dict[str, torch.Tensor] | None = None
        if self.secure is not None:
            new_state, reports = self.secure_round(grid, strategy, messages, server_round)
        else:
            replies = self.exchange(grid, messages, timeout=self.config.federation.round_timeout_s)
            aggregated, _ = strategy.aggregate_train(server_round, replies)
            reports = strategy.reports
            if aggregated is not None:
                new_state = {**self.state, **to_state_dict(aggregated, reference)}
        for report in reports:  # its state may be gone (a restarted SuperNode): the settings go again
            if not report.accepted:
                self.sites.settled.discard(report.node_id)
        rejected = {self._site_name(r.name, r.reason): r.reason for r in reports if not r.accepted}
        self.left_out_reasons.update(rejected)
        left_out = "; ".join(f"{name}: {reason}" for name, reason in rejected.items())
        if new_state is None:
            raise FederationError(
                f"round {server_round}: fewer than {self.config.federation.min_clients} valid client replies"
                + (f" ({left_out})" if left_out else "")
                + f"; {self.run.kept()}"
                + (
                    " (continue with --resume)"
                    if self.run.committed is not None
                    else " (start again with --overwrite)"
                )
            )
        self.check_global(new_state, server_round)
        self.state = new_state
        self.round = server_round
        if self.ledger is not None:
            self.ledger.compose()

        accepted = [r for r in reports if r.accepted]
        examples = sum(r.metrics[protocol.NUM_EXAMPLES] for r in accepted)
        row: dict = {
            "round": server_round,
            "clients": len(accepted),
            "left_out": left_out,
            "lr": float(f"{lr:.6g}"),
            "train_loss": round(
                sum(r.metrics[protocol.TRAIN_LOSS] * r.metrics[protocol.NUM_EXAMPLES] for r in accepted)
                / examples,
                5,
            ),
        }
        for report in accepted:
            metrics = report.metrics
            row[f"loss_{report.name}"] = round(metrics[protocol.TRAIN_LOSS], 5)
            row[f"examples_{report.name}"] = int(metrics[protocol.NUM_EXAMPLES])
            row[f"train_seconds_{report.name}"] = round(float(metrics.get(protocol.SECONDS, math.nan)), 3)
            if report.name in strategy.round_weights:  # federation.weighting other than examples
                row[f"weight_{report.name}"] = float(f"{strategy.round_weights[report.name]:.6g}")
            if not math.isnan(report.update_norm):  # SecAgg+ hides each site's update
                row[f"update_norm_{report.name}"] = float(f"{report.update_norm:.5g}")
            for domain, value in report.validation.items():  # the site's own validation cases
                row[f"site_val_{report.name}_{domain}"] = round(value, 5)
        if validation.cases:
            validating = time.perf_counter()
            self.model.load_state_dict(self.state)
            columns, score = validation.record(self.model, self.device, self.amp, self.config.model)
            row.update(columns)
            row["val_seconds"] = round(time.perf_counter() - validating, 3)
        else:  # without evaluation cases the best model is the one with the lowest training loss
            score = -row["train_loss"]
        row["val_score"] = round(score, 5)
        if self.ledger is not None:
            row["epsilon"] = float(f"{self.ledger.epsilon:.6g}")
            row["dp_clipping_norm"] = float(f"{clipping_norm:.6g}")
        if self.secure is not None:  # what the SecAgg+ workflow handed over: only the unmasked mean
            row["secagg_mean_only"] = self.secure_mean_only[-1]
        row["bytes_down"] = bytes_down
        row["bytes_up"] = sum(r.bytes_up for r in reports)
        row["seconds"] = round(time.perf_counter() - started, 3)
        self.history.append(row)
        if score > self.best.score:
            self.best = Best(score, server_round)
            self.save("best.pt")
        # last.pt is the commit point of a round: a server killed before it repeats the round on resume.
        self.save("last.pt")
        self.run.write_history(self.history)
        self.tracker.scalars(server_round, row)
        return row
