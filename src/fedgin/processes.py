"""The process tree, read from /proc (Linux): what a command started, what is alive, dying with a parent.

Flower detaches its SuperExec and app processes into their own sessions and Ray's workers outlive a
`ray.shutdown()` while they train, so stopping "everything a command started" means walking the tree by
parent pid. A process is told from a later one that reuses its pid by its start time.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: prctl(2) option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1
try:  # looked up once: die_with_parent may run between fork and exec
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
    _PRCTL = None


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat); None when it is gone or a zombie."""
    fields = _stat(pid)
    return None if fields is None or fields[0] in ("Z", "X") else fields[19]


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    return start_time(pid) is not None


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry.name)) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(*pids: int) -> list[int]:
    """Every process started under any of `pids`, at any depth ([] where there is no /proc)."""
    if not Path("/proc/self/stat").exists():
        return []
    tree, found, todo = _children(), [], list(pids)
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies, however it dies (Linux only).

    For pool-worker initializers and `preexec_fn`: without it a SIGKILLed parent leaves its children
    running as orphans.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


class Guard:
    """A process outside this one that SIGKILLs what this one starts from now on, once this one is gone.

    PR_SET_PDEATHSIG reaches only the children a process starts itself. Ray's raylet starts agents that
    outlive a SIGKILLed driver by a minute (they report the raylet's death to a GCS that is gone, with a
    60 s timeout), still listening. The guard runs in its own session (a Ctrl-C to the terminal's process
    group does not reach it), records this process's descendants every `interval_s` and, when this
    process has ended however it ended, SIGKILLs those still alive (known by pid and start time).
    `release()` ends it without killing anything (the caller has stopped its processes itself).
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        pid = os.getpid()
        # This file as a script, isolated (-I: no site packages, not its own folder on sys.path, where
        # fedgin's modules would shadow the standard library's): it needs the standard library only.
        command = [sys.executable, "-I", __file__, str(pid), str(start_time(pid)), str(interval_s)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )

    def release(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def guard(pid: int, started: str, interval_s: float) -> None:
    """The guard's loop (`python -I processes.py PID START_TIME INTERVAL_S`, see `Guard`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()
    own_start = int(start_time(me) or 0)
    seen: dict[int, str] = {}
    while start_time(pid) == started:
        for child in descendants(pid):
            # Only what was started after the guard (a pid is reused by a later process, never an earlier).
            if child != me and (born := start_time(child)) is not None and int(born) >= own_start:
                seen[child] = born
        time.sleep(interval_s)
    for child, born in seen.items():
        if start_time(child) == born:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)


__all__ = ["Guard", "alive", "descendants", "die_with_parent", "start_time"]


if __name__ == "__main__":
    guard(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))
