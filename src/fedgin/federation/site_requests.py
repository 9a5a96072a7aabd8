"""One-shot requests to every site, outside the training rounds: federated statistics
(fedgin.federation.statistics) and cross-site evaluation (fedgin.federation.cross_site).

A request server reaches the sites as the training server does (every node is asked which site it is,
fedgin.federation.protocol), sends each site one message per request and collects the replies. A site
that does not answer, or answers with an error, is reported by name with the reason; the request goes on
with the others. Ctrl-C stops it as it stops the rounds (`interrupt`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from rich.console import Console

from fedgin.config import ClientSpec, RunConfig
from fedgin.federation.messaging import Stopped, exchange, stop_thread
from fedgin.federation.screening import FederationError, short_reason
from fedgin.federation.server import NODE_TIMEOUT_S, SiteDirectory


@dataclass
class Answers:
    """The replies of one request by site name, and why the other sites gave none."""

    replies: dict[str, RecordDict] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


class SiteRequests:
    """Reach the configured sites on a Grid and ask each of them something (one message per site)."""

    def __init__(self, config: RunConfig, console: Console, timeout_s: float | None = None) -> None:
        self.config = config
        self.console = console
        self.timeout_s = float(timeout_s or config.federation.round_timeout_s)
        self.directory = SiteDirectory(config)
        #: node id -> the site it is, once reached.
        self.nodes: dict[int, ClientSpec] = {}
        #: Sites not reached, with why (not connected, unknown, no answer to the query).
        self.unreached: dict[str, str] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def interrupt(self, grace_s: float = 5.0) -> bool:
        """Stop the request from another thread (Ctrl-C in the driver)."""
        self.stopping.set()
        return stop_thread(self.thread, grace_s)

    def reach(self, grid: Grid) -> dict[int, ClientSpec]:
        """Wait (up to NODE_TIMEOUT_S) for a node per configured site, and learn which node is which site.

        FederationError when no site can be reached; sites missing after the wait are in `unreached`.
        """
        self.thread = threading.current_thread()
        wanted = len(self.config.federation.clients)
        deadline = time.monotonic() + min(NODE_TIMEOUT_S, self.timeout_s)
        nodes = list(grid.get_node_ids())
        while len(nodes) < wanted and time.monotonic() < deadline:
            if self.stopping.wait(1.0):
                raise Stopped()
            nodes = list(grid.get_node_ids())
        queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
        self.directory.learn(nodes, exchange(grid, queries, self.timeout_s, self.stopping))
        self.nodes = dict(self.directory.specs)
        reached = {spec.name for spec in self.nodes.values()}
        for node, problem in self.directory.problems.items():
            self.console.print(f"[yellow]warning:[/] node {node} left out: {problem}")
        for spec in self.config.federation.clients:
            if spec.name not in reached:
                self.unreached[spec.name] = "no node of this site connected"
        if not self.nodes:
            raise FederationError(
                f"no site reached ({len(nodes)} node(s) connected, none answered as a configured site)"
            )
        return self.nodes

    def ask(self, grid: Grid, message_type: str, contents: Mapping[int, RecordDict]) -> Answers:
        """Send each node its content as `message_type`; the replies by site name (errors as problems)."""
        messages = [
            Message(content, dst_node_id=node, message_type=message_type)
            for node, content in contents.items()
        ]
        sent = {message.metadata.dst_node_id for message in messages}
        answers = Answers()
        for reply in exchange(grid, messages, self.timeout_s, self.stopping):
            node = reply.metadata.src_node_id
            sent.discard(node)
            name = self.nodes[node].name
            if reply.has_error():
                answers.problems[name] = f"site error: {short_reason(reply.error.reason)}"
            else:
                answers.replies[name] = reply.content
        for node in sent:
            answers.problems[self.nodes[node].name] = f"no answer within {self.timeout_s:.0f} s"
        return answers


__all__ = ["Answers", "SiteRequests"]
