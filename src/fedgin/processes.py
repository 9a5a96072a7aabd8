"""The process tree, read from /proc (Linux): what a command started, what is alive, dying with a parent.

Flower detaches its SuperExec and app processes into their own sessions and Ray's workers outlive a
`ray.shutdown()` while they train, so stopping "everything a command started" means walking the tree by
parent pid. A process is told from a later one that reuses its pid by its start time.
"""

from __future__ import annotations

import ctypes
import signal
import sys
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


__all__ = ["alive", "descendants", "die_with_parent", "start_time"]
