"""Supervise a Flower process (the SuperNode) instead of exec'ing it: bounded start, retries, clean stop.

What `flower-supernode` 1.41 does on its own (flwr/supernode/fleet_http_connection.py):

- Activation refused: the SuperLink answers ActivateNode with HTTP 412 `[code: 2004] Failed to activate
  SuperNode.` both when the key is not registered and when the node of that key is still ONLINE. A node
  stays ONLINE until `HEARTBEAT_PATIENCE x heartbeat interval` (2 x 30 s) after its last heartbeat, so a
  SuperNode restarted within about 60 s of a crash (kill -9, power loss: no DeactivateNode was sent) is
  refused. Flower does not retry a 412: the process logs `Exit Code: 305 ... Failed to activate
  SuperNode.` and exits with status 1.
- No answer: connection errors (SuperLink down, or an `--insecure` SuperNode talking plain HTTP to a TLS
  SuperLink, which closes the connection: "Server disconnected without sending a response") are retried
  with exponential back-off, capped at 20 s, for ever, printing only "Connection attempt failed, retrying".
  `--max-retries/--max-wait-time` would bound this, but Flower applies them to every call of the
  connection (pull, push, heartbeat...), not only to the first one, so they would also end a connected
  SuperNode whose SuperLink is away for longer than the bound.

`supervise` runs the command as a child process (its own session, its output passed through line by
line) and bounds only the start: the child must print `ready` (Flower's "SuperNode ID:") within
`timeout_s`. An attempt that ends with the `retry_on` markers (the activation refusal) is started again
after an exponential back-off (1, 2, 4, ... s, at most `max_delay_s`) until the bound; when the bound
passes without a connection the child is stopped. Once connected, the child runs as long as it likes and
its exit status is returned. SIGINT, SIGTERM and SIGHUP are forwarded to the child (a second one kills
it); whatever the child started is stopped when it ends, and the child is asked by the kernel
(PR_SET_PDEATHSIG) to stop if the supervisor itself dies. The supervisor is generic: a command list and an
environment in, an exit status and at most one line of error out.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedgin.processes import descendants, die_with_parent, start_time

#: Flower's SuperNode logs this once it is activated (start_client_internal: "SuperNode ID: %s").
SUPERNODE_READY = "SuperNode ID:"
#: Flower's report of an activation the SuperLink refused (exit code 305 with API error 2004).
ACTIVATION_REFUSED = ("Exit Code: 305", "Failed to activate SuperNode")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LEVEL = re.compile(r"^(ERROR|WARNING|INFO|DEBUG)\s*:\s*")
_NOISE = ("Using SuperLink:", "For more information, visit")


def one_line(text: str, limit: int = 400) -> str:
    """A multi-line Flower message as one line: colours, log levels, blank and help-URL lines dropped."""
    lines = [_LEVEL.sub("", _ANSI.sub("", line).strip()) for line in text.splitlines()]
    joined = " ".join(line for line in lines if line and not line.startswith(_NOISE))
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def flower_error(lines: list[str]) -> str:
    """The last error report in a Flower log: the `Exit Code: N` block, else the last ERROR or line."""
    for start in range(len(lines) - 1, -1, -1):
        if "Exit Code:" in lines[start]:
            block = []
            for line in lines[start:]:
                if not line.strip() or line.startswith("For more information"):
                    break
                block.append(line)
            return one_line("\n".join(block))
    errors = [line for line in lines if line.startswith("ERROR")]
    rest = [line for line in lines if line.strip()]
    return one_line((errors or rest or ["(no output)"])[-1])


@dataclass
class Supervised:
    """How a supervised process ended: the exit status to pass on, and one line when it failed."""

    code: int
    connected: bool
    attempts: int
    error: str | None = None
    log: list[str] = field(default_factory=list, repr=False)


# -- process helpers --------------------------------------------------------------------------------------
def _die_with_parent() -> None:  # runs in the child between fork and exec
    die_with_parent(signal.SIGTERM)


class _Child:
    """One attempt: the process, a thread passing its output through, and what it has started."""

    def __init__(
        self, command: list[str], env: dict[str, str], cwd: str | Path | None, echo: Callable[[str], None],
        ready: str,
    ) -> None:  # fmt: skip
        self.popen = subprocess.Popen(
            command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.lines: deque[str] = deque(maxlen=400)
        self.connected = threading.Event()
        self.known: dict[int, str] = {}
        self._ready = ready
        self._reader = threading.Thread(target=self._pump, args=(echo,), daemon=True)
        self._reader.start()

    def _pump(self, echo: Callable[[str], None]) -> None:
        assert self.popen.stdout is not None
        for raw in iter(self.popen.stdout.readline, b""):
            text = raw.decode("utf-8", "replace")
            with contextlib.suppress(Exception):  # a closed terminal must not stop the bookkeeping
                echo(text)
            line = _ANSI.sub("", text).rstrip()
            self.lines.append(line)
            if self._ready in line:
                self.connected.set()

    def watch(self) -> None:
        """Remember the processes the child started (they outlive it: Flower's SuperExec, ClientApps)."""
        for pid in descendants(self.popen.pid):
            if pid not in self.known and (started := start_time(pid)) is not None:
                self.known[pid] = started

    def _leftovers(self) -> list[int]:
        alive = [pid for pid, started in self.known.items() if start_time(pid) == started]
        for pid in descendants(*alive):
            if pid not in self.known and (started := start_time(pid)) is not None:
                self.known[pid] = started
                alive.append(pid)
        return alive

    def clean_up(self, timeout_s: float = 5.0) -> None:
        """After the child ended: stop what it left behind (SIGTERM, SIGKILL after `timeout_s`)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._leftovers():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + timeout_s
            while self._leftovers() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not self._leftovers():
                break
        self._reader.join(timeout=2)
        if self.popen.stdout is not None and not self._reader.is_alive():
            self.popen.stdout.close()


class _Signals:
    """SIGINT/SIGTERM/SIGHUP: remembered and forwarded to the running child (the second one kills it)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self.count = 0
        self.child_pid: int | None = None
        self.wake = threading.Event()
        self._previous: dict[int, object] = {}

    def handle(self, signum: int, _frame: object) -> None:
        self.count += 1
        self.received = self.received or signum
        if self.child_pid is not None:
            forward = (
                signal.SIGKILL if self.count > 1 else signal.SIGTERM if signum == signal.SIGHUP else signum
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child_pid, forward)
        self.wake.set()

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]

    def pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking early on a signal."""
        deadline = time.monotonic() + seconds
        while self.received is None and (left := deadline - time.monotonic()) > 0:
            self.wake.wait(min(left, 0.2))
            self.wake.clear()


def _status(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def _echo_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _notify_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the supervisor ---------------------------------------------------------------------------------------
def supervise(
    command: list[str],
    env: dict[str, str],
    *,
    timeout_s: float = 120.0,
    ready: str = SUPERNODE_READY,
    retry_on: tuple[str, ...] = ACTIVATION_REFUSED,
    first_delay_s: float = 1.0,
    max_delay_s: float = 16.0,
    stop_timeout_s: float = 10.0,
    cwd: str | Path | None = None,
    echo: Callable[[str], None] = _echo_stdout,
    notify: Callable[[str], None] = _notify_stderr,
    not_ready_hint: str = "",
    refused_hint: str = "",
) -> Supervised:
    """Run `command` until it ends; it must print `ready` within `timeout_s` seconds of the first start.

    An attempt whose output contains every string of `retry_on` before `ready` is started again after an
    exponential back-off, while time is left. Returns the exit status to pass on (the child's, 128+N for
    a signal N, 1 when the supervisor gave up) and, on failure, one line saying why (`not_ready_hint` /
    `refused_hint` are appended to the give-up messages). `echo` gets each output line of the child,
    `notify` the supervisor's own notes (default: stdout and stderr).
    """
    name = Path(command[0]).name
    deadline = time.monotonic() + timeout_s
    delay, attempts, last_refusal = first_delay_s, 0, ""
    with _Signals() as signals:
        while True:
            attempts += 1
            child = _Child(command, env, cwd, echo, ready)
            signals.child_pid = child.popen.pid
            outcome = _wait(child, signals, deadline, stop_timeout_s)
            signals.child_pid = None
            child.clean_up()
            lines, connected = list(child.lines), child.connected.is_set()
            code, error = _status(child.popen.returncode), None
            refused = bool(retry_on) and all(marker in "\n".join(lines) for marker in retry_on)
            if outcome == "signal":
                pass
            elif outcome == "timeout" and last_refusal:  # the bound passed while trying once more
                code = 1
                error = (
                    f"{name}: the SuperLink refused to activate this SuperNode for {timeout_s:g} s"
                    f"{refused_hint}: {last_refusal}"
                )
            elif outcome == "timeout":
                last = next((line for line in reversed(lines) if line.startswith("WARNING")), "")
                flower = f" (last: {one_line(last)})" if last else ""
                code, error = 1, f"{name} did not connect within {timeout_s:g} s{flower}{not_ready_hint}"
            elif connected:
                error = None if code == 0 else f"{name} exited with code {code}: {flower_error(lines)}"
            elif refused and (left := deadline - time.monotonic()) > 0:
                last_refusal = flower_error(lines)
                wait = min(delay, left)
                note = f"retrying in {wait:.1f} s (giving up in {left:.0f} s)"
                notify(f"{name}: activation refused{refused_hint}; {note}")
                signals.pause(wait)
                if signals.received is None:
                    delay = min(delay * 2, max_delay_s)
                    continue
                code = 128 + signals.received
            elif refused:
                code = code or 1
                error = (
                    f"{name}: the SuperLink refused to activate this SuperNode for {timeout_s:g} s"
                    f"{refused_hint}: {flower_error(lines)}"
                )
            elif code != 0:
                error = f"{name} exited with code {code} before connecting: {flower_error(lines)}"
            return Supervised(code, connected, attempts, error, lines)


def _wait(child: _Child, signals: _Signals, deadline: float, stop_timeout_s: float) -> str:
    """Until the child ends ("exited"), a signal stops it ("signal") or the start bound passes ("timeout")."""
    watched = 0.0
    while True:
        if child.popen.poll() is not None:
            return "exited"
        if signals.received is not None:
            _stop(child, signals, None, stop_timeout_s)
            return "signal"
        if not child.connected.is_set() and time.monotonic() >= deadline:
            _stop(child, signals, signal.SIGTERM, stop_timeout_s)
            return "timeout"
        if time.monotonic() - watched >= 0.5:
            child.watch()
            watched = time.monotonic()
        signals.wake.wait(0.1)
        signals.wake.clear()


def _stop(child: _Child, signals: _Signals, sig: int | None, timeout_s: float) -> None:
    """Send `sig` (None: a forwarded signal was sent already), wait, then SIGKILL."""
    child.watch()
    if sig is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.popen.pid, sig)
    deadline = time.monotonic() + timeout_s  # a second signal SIGKILLs the child (_Signals.handle)
    while child.popen.poll() is None and time.monotonic() < deadline:
        child.watch()
        time.sleep(0.1)
    if child.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.popen.pid, signal.SIGKILL)
        child.popen.wait()


__all__ = ["ACTIVATION_REFUSED", "SUPERNODE_READY", "Supervised", "flower_error", "one_line", "supervise"]
