"""Screening of client replies before aggregation: errors, timeouts, non-finite or misshapen weights."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedgin.errors import FedginError
from fedgin.federation import protocol
from fedgin.federation.weighting import site_weights
from fedgin.federation.weights import content_bytes, screen, to_float32, update_norm

logger = logging.getLogger("fedgin.federation")


class FederationError(FedginError):
    """The federation cannot go on (too few clients connected or replying)."""


def short_reason(reason: str, limit: int = 300) -> str:
    """The message of a client's exception from Flower's error reason (which may carry a Ray traceback)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    if "Message:" in text:
        text = text.rsplit("Message:", 1)[1]
    lines = [line.strip() for line in text.strip().strip("'>").splitlines() if line.strip()]
    text = lines[-1] if lines else reason
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class ClientReport:
    """What one sampled client did in a round: its metrics, or why its reply was left out."""

    node_id: int
    name: str
    accepted: bool
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    #: The site's validation Dice per domain (its ConfigRecord: sites differ in domains, and Flower's
    #: FedAvg requires the same MetricRecord keys from every site).
    validation: dict[str, float] = field(default_factory=dict)
    #: L2 norm of the site's change of the global weights (before any DP clipping).
    update_norm: float = float("nan")


class ScreeningMixin:
    """Mixed into a Flower strategy: waits for nodes with a deadline and screens replies.

    Flower's FedAvg already leaves out replies that carry an error (a client that raised) and the grid
    drops replies later than the round timeout; this adds a deadline to the wait for connected nodes,
    rejects updates with non-finite values or keys and shapes that differ from the global model (one
    bad client would otherwise poison or abort the aggregation), records a report per client, and
    sorts the accepted replies by client name so that aggregation does not depend on arrival order.

    Configured as Flower's strategies are: `local_keys` (FedBN's keys that stay on the sites) and
    `node_timeout_s` (the wait for enough connected nodes) by keyword, the rest passed to the strategy.
    """

    min_train_nodes: int
    min_available_nodes: int
    weighted_by_key: str
    arrayrecord_key: str

    def __init__(
        self,
        *args: Any,
        local_keys: Iterable[str] = (),
        node_timeout_s: float = 120.0,
        weighting: str = "examples",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.local_keys = set(local_keys)
        #: federation.weighting; and the weight each accepted site got in the last aggregation (site name ->
        #: weight, summing to 1) when it is not `examples`.
        self.weighting = weighting
        self.round_weights: dict[str, float] = {}
        self.node_timeout_s = node_timeout_s
        self.reference: ArrayRecord | None = None
        #: The nodes this round's train messages went to.
        self.sent: set[int] = set()
        #: Sampled nodes the server sent no train message, with why (it could not tell which site they are).
        self.withheld: dict[int, ClientReport] = {}
        self.node_names: dict[int, str] = {}
        self.reports: list[ClientReport] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's configure_train, after waiting (at most node_timeout_s) for enough nodes."""
        needed = max(self.min_available_nodes, self.min_train_nodes)
        deadline = time.monotonic() + self.node_timeout_s
        while (connected := len(list(grid.get_node_ids()))) < needed:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"round {server_round}: {connected} clients connected after {self.node_timeout_s:.0f} s, "
                    f"{needed} needed"
                )
            time.sleep(1.0)
        self.reference = arrays
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self.sent = {message.metadata.dst_node_id for message in messages}
        self.withheld = {}
        return messages

    def withhold(self, node: int, reason: str) -> None:
        """A sampled node gets no train message this round; it is reported as left out for `reason`."""
        self.sent.discard(node)
        self.withheld[node] = ClientReport(node, self.node_names.get(node, f"node-{node}"), False, reason)

    def screen_replies(self, replies: Iterable[Message]) -> list[Message]:
        """The replies fit for aggregation, sorted by client name; fills `self.reports`."""
        assert self.reference is not None, "configure_train must run before aggregate_train"
        expected = set(self.reference.keys()) - self.local_keys
        reference32 = to_float32(self.reference)  # once per round, not once per reply
        reports: list[ClientReport] = list(self.withheld.values())
        accepted: list[tuple[str, Message]] = []
        replied: set[int] = set()
        for message in replies:
            node = message.metadata.src_node_id
            replied.add(node)
            if message.has_error():
                name = self.node_names.get(node, f"node-{node}")
                reason = f"client error: {short_reason(message.error.reason)}"
                reports.append(ClientReport(node, name, False, reason))
                continue
            content = message.content
            site = content[protocol.SITE] if protocol.SITE in content.config_records else None
            name = str(site[protocol.SITE_NAME]) if site is not None else f"node-{node}"
            self.node_names[node] = name
            metrics = {
                key: float(value)
                for record in content.metric_records.values()
                for key, value in record.items()
                if isinstance(value, int | float)
            }
            if len(content.array_records) != 1 or len(content.metric_records) != 1:
                reason = "reply must hold exactly one ArrayRecord and one MetricRecord"
            elif self.arrayrecord_key not in content.array_records:
                reason = f"reply holds no ArrayRecord {self.arrayrecord_key!r}"
            elif self.weighted_by_key not in metrics or metrics[self.weighted_by_key] <= 0:
                reason = f"no positive {self.weighted_by_key} in the reply's metrics"
            else:
                reason = screen(content[self.arrayrecord_key], self.reference, expected) or ""
            up = content_bytes(content)
            validation = {}
            if site is not None:
                validation = {
                    key.removeprefix(protocol.VAL_DICE_PREFIX): float(value)
                    for key, value in site.items()
                    if key.startswith(protocol.VAL_DICE_PREFIX)
                }
            report = ClientReport(node, name, not reason, reason, metrics, up, validation)
            reports.append(report)
            if not reason:
                # float16 updates (federation.update_dtype) are averaged in float32, after counting bytes_up.
                content[self.arrayrecord_key] = to_float32(content[self.arrayrecord_key])
                report.update_norm = update_norm(content[self.arrayrecord_key], reference32)
                accepted.append((name, message))
        for node in sorted(self.sent - replied):
            name = self.node_names.get(node, f"node-{node}")
            reports.append(ClientReport(node, name, False, "no reply before the round timeout"))
        for report in reports:
            if not report.accepted:
                logger.warning("client %s left out of the round: %s", report.name, report.reason)
        self.reports = sorted(reports, key=lambda report: report.name)
        return [message for _, message in sorted(accepted, key=lambda item: item[0])]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's weighted aggregation of the screened replies; None when fewer than min_train_nodes."""
        accepted = self.screen_replies(replies)
        if len(accepted) < self.min_train_nodes:
            logger.error(
                "round %d: %d valid replies, fewer than the %d required",
                server_round,
                len(accepted),
                self.min_train_nodes,
            )
            return None, None
        if self.weighting == "examples":
            return super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        return self._aggregate_reweighted(server_round, accepted)

    def _aggregate_reweighted(
        self, server_round: int, accepted: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's aggregation with each accepted reply weighted by `site_weights` (federation.weighting),
        computed over this round's accepted replies; the screening keeps using weighted_by_key."""
        records = {}
        for message in accepted:
            name = str(message.content[protocol.SITE][protocol.SITE_NAME])
            records[name] = next(iter(message.content.metric_records.values()))
        examples = {}
        for name, record in records.items():
            counts = {
                key.removeprefix(protocol.EXAMPLES_PREFIX): float(value)
                for key, value in record.items()
                if key.startswith(protocol.EXAMPLES_PREFIX)
            }
            examples[name] = counts or {"unknown": float(record[self.weighted_by_key])}
        self.round_weights = site_weights(examples, self.weighting)
        for name, record in records.items():
            record[protocol.AGGREGATION_WEIGHT] = self.round_weights[name]
        screened_by, self.weighted_by_key = self.weighted_by_key, protocol.AGGREGATION_WEIGHT
        try:
            return super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        finally:
            self.weighted_by_key = screened_by
