"""Errors that name the file and the problem, shown to users as one line instead of a traceback."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class FedginError(Exception):
    """A problem the user can fix (bad input, bad configuration); the CLI prints it as one line."""


class DataError(FedginError):
    """A data file that cannot be used, with the file's path and what is wrong with it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(FedginError):
    """A configuration file or option that cannot be used."""


#: What to add to an OSError's own words, by errno, so that the line says what to do.
_OS_HINTS = {
    errno.EACCES: "read-only? no write permission?",
    errno.EPERM: "read-only? no permission?",
    errno.ENOSPC: "free some space, then run the same command again",
    errno.EDQUOT: "free some space, then run the same command again",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def os_error_line(error: OSError) -> str:
    """`path: problem (hint)` for an OSError, e.g. `/data/out: Permission denied (read-only? ...)`.

    The path is the exception's filename; a temporary file of an atomic write (`.name.XXXX.tmp`) is shown
    as its folder, or as the file it was to become.
    """
    problem = error.strerror or str(error) or type(error).__name__
    hint = _OS_HINTS.get(error.errno) if error.errno is not None else None
    if hint:
        problem = f"{problem} ({hint})"
    if error.filename is None:
        return problem
    path = Path(os.fsdecode(error.filename))
    target = None if error.filename2 is None else Path(os.fsdecode(error.filename2))
    if path.name.startswith(".") and path.name.endswith(".tmp"):
        path, target = (target, None) if target is not None else (path.parent, None)
    return f"{path}{f' -> {target}' if target is not None else ''}: {problem}"


def value_error_line(error: ValueError) -> str:
    """A ValueError's message on one line (pydantic's multi-line report as `field: problem; ...`)."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return f"{error.title}: {validation_problems(error)}"
    return " ".join(str(error).split()) or type(error).__name__


def validation_problems(error: Any, describe: Callable[[Any], str] | None = None) -> str:
    """A pydantic ValidationError as one line, `field.path: problem; ...` (`describe` words a problem)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or '(root)'}: "
        f"{describe(item) if describe else item['msg']}"
        for item in error.errors()
    )
