"""Messages to the sites on a Flower Grid that a Ctrl-C can cut short: the training rounds
(fedgin.federation.server) and the requests outside them (fedgin.federation.site_requests) share these."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid


class Stopped(Exception):
    """Raised in the ServerApp's thread to end it after a Ctrl-C (an Exception, so Flower's ServerApp thread
    takes it as the app's end instead of printing a traceback)."""


def exchange(
    grid: Grid, messages: Iterable[Message], timeout: float, stopping: threading.Event
) -> list[Message]:
    """Grid.send_and_receive that also ends (with Stopped) as soon as `stopping` is set."""
    pending = set(grid.push_messages(messages))
    interval = float(getattr(grid, "pull_interval", 3.0))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        if stopping.is_set():
            raise Stopped()
        received = list(grid.pull_messages(pending))
        replies.extend(received)
        pending.difference_update(message.metadata.reply_to_message_id for message in received)
        if not pending or time.monotonic() >= deadline:
            break
        stopping.wait(min(interval, max(0.0, deadline - time.monotonic())))
    if stopping.is_set():
        raise Stopped()
    return replies


def stop_thread(thread: threading.Thread | None, grace_s: float) -> bool:
    """Wait `grace_s` for `thread` to end, then raise Stopped inside it; True once it has ended."""
    if thread is None or thread is threading.current_thread() or thread.ident is None:
        return True
    thread.join(grace_s)
    if thread.is_alive():
        stop = ctypes.py_object(Stopped)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), stop)
        thread.join(2.0)
    return not thread.is_alive()


__all__ = ["Stopped", "exchange", "stop_thread"]
