"""Secure aggregation: each round's training through Flower's SecAgg+ workflow, so that the server learns only
the weighted mean of the sites' updates (SecAgg+, Bell et al. 2020).

Every site masks its update with pairwise masks that cancel in the sum, and secret-shares its mask seeds
with the others, so that the masks of a site that drops out can still be removed by
`reconstruction_threshold` of the rest. Flower 1.41 runs SecAgg+ on its legacy path only: the server side is
`SecAggPlusWorkflow`, called here once per round from fedgin's own round loop with a LegacyContext and a
hand-over strategy (`_HandOver`) whose `configure_fit` returns the round's messages as FitIns and whose
`aggregate_fit` receives the unmasked mean; the site side is Flower's `secaggplus_mod` on the ClientApp's
train function (`secagg_mod`: only on SecAgg+ messages, so plain rounds and queries pass untouched).

What travels differs from a plain round (fedgin.federation.protocol):

- down: the global weights as Flower Parameters (in the model's key order, without names) and the round's
  CONFIG and SETTINGS entries in one FitIns config;
- up: the site's *update* w_k - w_t (not its weights: the values are small, so a small clipping range keeps
  the quantization fine), masked and quantized, and its metrics (loss, slices, validation Dice) in plain
  text, as in a plain round.

The server adds the mean update to the global model. Sites weigh by their slices (1 under DP); quantization
maps weight x update / max_weight, clipped to +-clipping_range, onto quantization_range integer levels, so the
mean is exact to about sites x 2 clipping_range / quantization_range / (sum of weights / max_weight).

Off under SecAgg+, since the server never sees one site's update: screening of single updates (a non-finite
aggregate fails the round instead), the robust rules and server optimizers, server-side DP clipping (use
clip_on = "client": the sites clip, the server adds the noise to the mean), adaptive clipping, and the
per-site update norms and upload bytes in rounds.csv. Fault injection, FedProx, FedBN, GIN and the sites'
validation metrics work as in a plain round.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.serverapp import Grid

from fedgin.config import FederationConfig
from fedgin.errors import ConfigError
from fedgin.federation import protocol
from fedgin.federation.screening import ClientReport, FederationError, short_reason

#: The records of a SecAgg+ train message (Flower's recorddict_compat names them).
FITINS_PARAMETERS = "fitins.parameters"
FITINS_CONFIG = "fitins.config"
#: The ConfigRecord Flower's SecAgg+ stages carry; a train message without it is a plain round.
SECAGG_RECORD = "secaggplus_configs"
#: FitIns config key of the settings record's entries (JSON), sent with a node's first round.
SETTINGS_ENTRY = "fedgin-settings-json"


def check_secagg(federation: FederationConfig) -> None:
    """ConfigError (one line) for SecAgg+ settings that cannot run, before any process starts."""
    secagg = federation.secagg
    assert secagg is not None
    prefix = "federation.secagg"
    sites = len(federation.clients)
    if federation.strategy not in {"fedavg", "fedprox"}:
        raise ConfigError(
            f"{prefix}: strategy {federation.strategy} needs each site's update, which SecAgg+ hides (use "
            "fedavg or fedprox)"
        )
    privacy = federation.privacy
    if privacy is not None and (privacy.clip_on != "client" or privacy.clipping != "fixed"):
        raise ConfigError(
            f"{prefix}: under SecAgg+ the server cannot clip single updates; DP needs clip_on = client "
            "and clipping = fixed"
        )
    if sites < 2:
        raise ConfigError(f"{prefix}: SecAgg+ needs at least 2 sites, there is {sites}")
    if isinstance(secagg.num_shares, float) and secagg.num_shares > 1:
        raise ConfigError(
            f"{prefix}.num_shares: a share of the sites must be at most 1, got {secagg.num_shares}"
        )
    shares = _num_shares(secagg.num_shares, sites)
    if isinstance(secagg.num_shares, int) and not isinstance(secagg.num_shares, bool):
        if 1 < secagg.num_shares <= 2:
            raise ConfigError(f"{prefix}.num_shares: an integer must be above 2, got {secagg.num_shares}")
        if shares > sites:
            raise ConfigError(f"{prefix}.num_shares is {shares} but there are {sites} sites")
    threshold = _threshold(secagg.reconstruction_threshold, shares)
    if isinstance(secagg.reconstruction_threshold, float) and secagg.reconstruction_threshold > 1:
        raise ConfigError(f"{prefix}.reconstruction_threshold: a share must be at most 1")
    if isinstance(secagg.reconstruction_threshold, int) and threshold >= shares:
        raise ConfigError(
            f"{prefix}.reconstruction_threshold is {threshold}, not below num_shares "
            f"({shares} with {sites} sites)"
        )
    if threshold > sites:
        raise ConfigError(f"{prefix}: reconstruction threshold {threshold} is above the {sites} sites")
    if threshold > federation.min_clients:
        raise ConfigError(
            f"{prefix}: reconstruction threshold {threshold} is above min_clients "
            f"({federation.min_clients}): a round with {federation.min_clients} replies could not be "
            "unmasked (raise min_clients)"
        )
    if sites * secagg.quantization_range >= 2**32:
        raise ConfigError(
            f"{prefix}.quantization_range: {sites} sites x {secagg.quantization_range} levels overflow the "
            "32-bit sums (lower it)"
        )


def _num_shares(num_shares: int | float, sites: int) -> int:
    """Flower's SecAggPlusWorkflow.setup_stage: the shares of a round with every site."""
    if isinstance(num_shares, int) and num_shares != 1:
        return num_shares
    shares = round(float(num_shares) * sites)
    if shares < sites and shares % 2 == 0:
        shares += 1
    return sites if shares <= 2 else shares


def _threshold(threshold: int | float, shares: int) -> int:
    if isinstance(threshold, int) and threshold != 1:
        return threshold
    return max(round(float(threshold) * shares), 2)


# ----------------------------------------------------------------------------------------------------------
# Server


class _HandOver:
    """The legacy strategy SecAggPlusWorkflow calls: the round's FitIns out, the unmasked mean in."""

    def __init__(self) -> None:
        self.instructions: list[tuple[Any, FitIns]] = []
        self.results: list[tuple[Any, FitRes]] = []
        self.failures: list[Any] = []
        self.called = False

    def initialize_parameters(self, client_manager: Any) -> None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        return self.instructions

    def aggregate_fit(
        self, server_round: int, results: list, failures: list
    ) -> tuple[Parameters | None, dict]:
        self.called = True
        self.results, self.failures = list(results), list(failures)
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(self, *args: Any) -> list:
        return []

    def aggregate_evaluate(self, *args: Any) -> tuple[None, dict]:
        return None, {}

    def evaluate(self, *args: Any) -> None:
        return None


@dataclass
class SecureRound:
    """What a SecAgg+ round gave the server: the mean update of the shared keys and a report per site."""

    mean_update: dict[str, np.ndarray] | None
    reports: list[ClientReport] = field(default_factory=list)
    #: Every result the workflow handed over held the same (mean) arrays: no single update reached it.
    only_the_mean: bool = True


class SecureAggregation:
    """A federation's SecAgg+ rounds, driven from fedgin's server loop (`run` once per round)."""

    def __init__(self, federation: FederationConfig, context: Context, timeout_s: float) -> None:
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.server_config import ServerConfig
        from flwr.server.workflow import SecAggPlusWorkflow

        secagg = federation.secagg
        assert secagg is not None
        self.workflow = SecAggPlusWorkflow(
            num_shares=secagg.num_shares,
            reconstruction_threshold=secagg.reconstruction_threshold,
            # under DP every site weighs 1 (fedgin.federation.privacy): the finest quantization of its update
            max_weight=1.0 if federation.privacy is not None else secagg.max_weight,
            clipping_range=secagg.clipping_range,
            quantization_range=secagg.quantization_range,
            timeout=timeout_s,
        )
        self.hand_over = _HandOver()
        self.context = LegacyContext(
            context,
            config=ServerConfig(num_rounds=federation.rounds),
            strategy=self.hand_over,  # type: ignore[arg-type]
        )

    def run(
        self,
        grid: Grid,
        server_round: int,
        messages: Sequence[Message],
        state: Mapping[str, torch.Tensor],
        shared_keys: Sequence[str],
        names: Mapping[int, str],
    ) -> SecureRound:
        """One round of training under SecAgg+: `messages` are the round's plain train messages (their
        content becomes the FitIns), `state` the global weights they carry."""
        from flwr.compat.common import recorddict_compat as compat
        from flwr.server.compat.grid_client_proxy import GridClientProxy
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
        from flwr.server.workflow.constant import Key as WorkflowKey

        parameters = ndarrays_to_parameters([value.detach().cpu().numpy() for value in state.values()])
        run_id = self.context.run_id
        self.hand_over = _HandOver()  # this round's instructions, results and failures only
        self.context.strategy = self.hand_over  # type: ignore[assignment]
        self.hand_over.instructions = [
            (
                GridClientProxy(message.metadata.dst_node_id, grid, run_id),
                FitIns(parameters, fit_config(message.content)),
            )
            for message in messages
        ]
        self.context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: server_round}
        )
        self.context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            parameters, keep_input=True
        )
        self.workflow(grid, self.context)
        hand_over = self.hand_over
        sampled = {message.metadata.dst_node_id for message in messages}
        reports: list[ClientReport] = []
        replied: set[int] = set()
        for proxy, result in hand_over.results:
            replied.add(proxy.node_id)
            metrics = {key: value for key, value in result.metrics.items() if isinstance(value, int | float)}
            validation = {
                key.removeprefix(protocol.VAL_DICE_PREFIX): float(value)
                for key, value in metrics.items()
                if key.startswith(protocol.VAL_DICE_PREFIX)
            }
            name = str(
                result.metrics.get(protocol.SITE_NAME, names.get(proxy.node_id, f"node-{proxy.node_id}"))
            )
            reports.append(ClientReport(proxy.node_id, name, True, "", metrics, 0, validation))
        for failure in hand_over.failures:
            reason = failure.reason if hasattr(failure, "reason") else str(failure)
            node = -1
            if isinstance(failure, tuple):
                node, reason = failure[0].node_id, f"status {failure[1].status.message}"
            reports.append(
                ClientReport(
                    node, names.get(node, "a site"), False, f"client error: {short_reason(str(reason))}"
                )
            )
        for node in sorted(sampled - replied):
            if not any(report.node_id == node for report in reports):
                name = names.get(node, f"node-{node}")
                reports.append(ClientReport(node, name, False, "dropped out of the SecAgg+ round"))
        reports.sort(key=lambda report: report.name)
        if not hand_over.called or not hand_over.results:
            return SecureRound(None, reports)
        arrays = [parameters_to_ndarrays(result.parameters) for _, result in hand_over.results]
        same = all(all(np.array_equal(a, b) for a, b in zip(arrays[0], x, strict=True)) for x in arrays)
        if len(arrays[0]) != len(shared_keys):
            raise FederationError(
                f"round {server_round}: the SecAgg+ aggregate has {len(arrays[0])} arrays, the model shares "
                f"{len(shared_keys)}"
            )
        mean = dict(zip(shared_keys, arrays[0], strict=True))
        for key, value in mean.items():
            if tuple(value.shape) != tuple(state[key].shape) or not np.isfinite(value).all():
                raise FederationError(
                    f"round {server_round}: the securely aggregated update of {key} is misshapen or not "
                    "finite (a site sent bad weights; SecAgg+ hides which); the last round is kept in "
                    "checkpoints/last.pt"
                )
        return SecureRound(mean, reports, only_the_mean=same)


def fit_config(content: RecordDict) -> dict[str, Any]:
    """A plain train message's CONFIG entries, and its SETTINGS (if any) as one JSON entry, for FitIns."""
    config: dict[str, Any] = dict(content[protocol.CONFIG])
    if protocol.SETTINGS in content.config_records:
        config[SETTINGS_ENTRY] = json.dumps(dict(content[protocol.SETTINGS]))
    return config


# ----------------------------------------------------------------------------------------------------------
# Site


def secagg_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's secaggplus_mod for SecAgg+ messages; everything else passes untouched (Flower's mod would
    refuse a plain train message)."""
    from flwr.client.mod import secaggplus_mod

    if SECAGG_RECORD in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def is_secure(message: Message) -> bool:
    """Whether a train message is SecAgg+'s (FitIns in Flower's legacy records)."""
    return FITINS_CONFIG in message.content.config_records


def plain_content(message: Message) -> RecordDict:
    """A SecAgg+ train message's content as a plain one (fedgin.federation.protocol); its arrays keep the
    names Flower gave them ("0", "1", ...: the server sends them in the model's key order)."""
    content = message.content
    config = dict(content[FITINS_CONFIG])
    settings = config.pop(SETTINGS_ENTRY, None)
    records: dict[str, Any] = {
        protocol.ARRAYS: content[FITINS_PARAMETERS],
        protocol.CONFIG: ConfigRecord(config),
    }
    if settings is not None:
        records[protocol.SETTINGS] = ConfigRecord(json.loads(str(settings)))
    return RecordDict(records)


def name_arrays(arrays: ArrayRecord, keys: Sequence[str]) -> ArrayRecord:
    """The arrays in the order sent, named by the model's `keys`."""
    values = [arrays[key] for key in arrays]
    if len(values) != len(keys):
        raise ValueError(f"the server sent {len(values)} arrays, the model has {len(keys)}")
    return ArrayRecord(dict(zip(keys, values, strict=True)))


def secure_reply(
    message: Message, reply: RecordDict, start: Mapping[str, torch.Tensor], weight: float
) -> Message:
    """A plain reply's content as SecAgg+'s FitRes: the update (trained - start) of the sent keys, the
    site's weight as num_examples, its metrics and site entries as FitRes metrics (in plain text, as in a
    plain round)."""
    from flwr.compat.common import recorddict_compat as compat

    trained = reply[protocol.ARRAYS]
    update = [
        trained[key].numpy().astype(np.float32) - start[key].detach().cpu().numpy().astype(np.float32)
        for key in trained
    ]
    metrics: dict[str, Any] = {**dict(reply[protocol.METRICS]), **dict(reply[protocol.SITE])}
    fitres = FitRes(
        status=Status(Code.OK, ""),
        parameters=ndarrays_to_parameters(update),
        num_examples=max(1, round(weight)),
        metrics={key: value for key, value in metrics.items() if isinstance(value, int | float | str)},
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=message)


def unit_weight(metrics: MetricRecord) -> float:
    """The weight SecAgg+ averages with: 1 under DP, else the site's slices."""
    if protocol.UNIT_WEIGHT in metrics:
        return float(metrics[protocol.UNIT_WEIGHT])
    return float(metrics[protocol.NUM_EXAMPLES])


__all__ = [
    "SecureAggregation",
    "SecureRound",
    "check_secagg",
    "fit_config",
    "is_secure",
    "name_arrays",
    "plain_content",
    "secagg_mod",
    "secure_reply",
    "unit_weight",
]
