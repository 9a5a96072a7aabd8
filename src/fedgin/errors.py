"""Errors that name the file and the problem, shown to users as one line instead of a traceback."""

from __future__ import annotations

from pathlib import Path


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
