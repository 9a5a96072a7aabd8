"""Flower processes started by the tests (SuperLink, SuperNodes, `fedgin deploy ...`) and stopped with
everything they started (psutil: a process is known by pid and creation time, so a reused pid is never hit).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class Process:
    """A started Flower process: its command, log file and pid."""

    name: str
    command: list[str]
    log: Path
    popen: subprocess.Popen = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


def start(
    name: str, command: list[str], log_dir: str | Path, env: dict[str, str], cwd: str | Path | None = None
) -> Process:
    """Start `command` in its own session with stdout and stderr in `<log_dir>/<name>.log`."""
    log = Path(log_dir) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as handle:
        popen = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=cwd, start_new_session=True,
        )  # fmt: skip
    (Path(log_dir) / f"{name}.pid").write_text(f"{popen.pid}\n")
    return Process(name, command, log, popen)


def _running(process: psutil.Process) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _with_children(processes: set[psutil.Process]) -> set[psutil.Process]:
    """`processes` and every process started under a running one of them, at any depth."""
    found = set(processes)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            found.update(process.children(recursive=True))
    return found


def stop(process: Process, timeout_s: float = 10.0) -> None:
    """SIGTERM the process and everything it started, SIGKILL what is left after `timeout_s`.

    Processes started while the tree shuts down are collected until the end, before their parent goes.
    """
    try:
        tree = _with_children({psutil.Process(process.pid)})
    except psutil.NoSuchProcess:
        tree = set()
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            member.terminate()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.popen.poll()
        tree = _with_children({member for member in tree if _running(member)}) | tree
        if not any(_running(member) for member in tree):
            break
        time.sleep(0.1)
    for member in tree:
        if _running(member):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                member.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.popen.wait(timeout=5)


def stop_all(processes: list[Process], timeout_s: float = 10.0) -> None:
    """Stop processes in reverse start order (SuperNodes before the SuperLink)."""
    for process in reversed(processes):
        stop(process, timeout_s)
