"""A run's folder: what single-site training and a federation's server both write, in one layout.

    <run>/config.toml            the resolved configuration, written once the run is known to be runnable
    <run>/metrics.csv|rounds.csv one row per validation stretch (single site) or per round (federation)
    <run>/learning_curve.png     that history drawn
    <run>/checkpoints/last.pt    the commit point: a run resumed from it continues exactly
    <run>/checkpoints/best.pt    the model with the best validation score so far
    <run>/summary.json           written when the call ends

Both checkpoints share one schema (`CHECKPOINT_FORMAT`): `kind` ("single-site" or "federated"),
`progress` (optimizer steps or rounds completed), `history` (the rows of the CSV), `best` ({"score",
"progress"}), `model` and `config`, plus what the writer adds (optimizer, scaler and RNG state of a
single-site run). The older keys (`step` / `round`, `best_score`, `best_step` / `best_round`) are written
beside them, so checkpoints of earlier 0.4 releases and the readers that use those keys keep working.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fedgin.checkpoints import CHECKPOINT_FORMAT, load_checkpoint
from fedgin.config import Settings, dump_toml
from fedgin.errors import ConfigError
from fedgin.folders import check_fillable, check_replaceable, mark
from fedgin.folders import remove as remove_folder
from fedgin.io_utils import atomic_path, atomic_write_json, atomic_write_text

RunKind = Literal["single-site", "federated"]


@dataclass
class Best:
    """The best validation score so far and when it was reached (-inf and -1 before the first)."""

    score: float = -math.inf
    progress: int = -1


@dataclass
class RunState:
    """What a checkpoint says about the run's progress, read back in one form for either kind of run."""

    progress: int
    history: list[dict] = field(default_factory=list)
    best: Best = field(default_factory=Best)
    payload: dict = field(default_factory=dict, repr=False)


def write_history(path: Path, history: list[dict]) -> None:
    """The learning curve as CSV, rewritten atomically (it is small); columns in order of appearance."""
    if not history:
        return
    columns: list[str] = []
    for row in history:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


class RunDirectory:
    """One run's folder: prepare it (refuse, resume or overwrite), then config, history, checkpoints, summary.

    `unit` names the progress ("step" for single-site runs, "round" for federations): the history's x
    column and the checkpoint's legacy key.
    """

    def __init__(self, path: str | Path, kind: RunKind, title: str = "") -> None:
        self.path = Path(path)
        self.kind: RunKind = kind
        self.unit = "round" if kind == "federated" else "step"
        self.title = title

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def history_csv(self) -> Path:
        return self.path / ("rounds.csv" if self.kind == "federated" else "metrics.csv")

    # -- preparing ----------------------------------------------------------------------------------------
    def check(self, resume: bool, overwrite: bool) -> Path | None:
        """The checkpoint to resume from, or None for a fresh run; refuses to mix two runs' files.

        Writes nothing, so a run can be refused (or its configuration found unusable) before its folder
        is touched. The root, home and working folder and those above it are never a run folder;
        --overwrite replaces only a run folder fedgin made (fedgin.folders), and --resume continues
        nothing that fedgin made as something else.
        """
        check_fillable(self.path, "run")
        if resume and self.last_checkpoint.is_file():
            return self.last_checkpoint
        if resume:
            raise ConfigError(f"{self.path}: nothing to resume (no checkpoints/last.pt)")
        if self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            raise ConfigError(
                f"{self.path}: run directory is not empty; pass --resume to continue or --overwrite"
            )
        if overwrite:
            check_replaceable(self.path, "run")
        return None

    def start(self, config: Settings, resume_from: Path | None, overwrite: bool) -> None:
        """Make the folder (emptied first for an --overwrite of a fresh run), mark it as a run folder and
        write config.toml.

        Called after `check` and after everything that can refuse the configuration has run.
        """
        if resume_from is None and overwrite:
            remove_folder(self.path, "run")  # checked again: only a run folder fedgin made goes
        self.path.mkdir(parents=True, exist_ok=True)
        mark(self.path, "run")
        dump_toml(config, self.path / "config.toml")

    # -- during the run -----------------------------------------------------------------------------------
    def write_history(self, history: list[dict]) -> None:
        """The history CSV and its learning curve (PNG), both replaced atomically."""
        from fedgin.figures import plot_learning_curve

        write_history(self.history_csv, history)
        plot_learning_curve(self.history_csv, self.path / "learning_curve.png", self.unit, self.title)

    def save_checkpoint(
        self,
        name: str,
        *,
        model: Mapping[str, torch.Tensor],
        config: Settings,
        progress: int,
        history: list[dict],
        best: Best,
        **extra: Any,
    ) -> Path:
        """checkpoints/<name> in the one schema, written atomically (a crash leaves the previous intact)."""
        payload: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "kind": self.kind,
            "model": dict(model),
            "config": config.model_dump(mode="json"),
            "progress": progress,
            "history": list(history),
            "best": {"score": best.score, "progress": best.progress},
            # The keys of earlier releases, read by older tools and by `fedgin predict`'s provenance.
            "step": progress,
            "best_score": best.score,
            f"best_{self.unit}": best.progress,
            **extra,
        }
        if self.kind == "federated":
            payload["round"] = progress
        path = self.checkpoints / name
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path

    def read_checkpoint(self, path: Path, device: torch.device | str = "cpu") -> RunState:
        """A checkpoint of this kind of run, safely loaded, with its progress, history and best."""
        payload = load_checkpoint(path, device)
        return RunState(
            progress=int(payload.get("progress", payload.get(self.unit, 0))),
            history=list(payload.get("history", [])),
            best=_best_of(payload, self.unit),
            payload=payload,
        )

    def write_summary(self, progress: int, best: Best, **extra: Any) -> None:
        """summary.json: progress (`steps` or `rounds`), the best score and when, then `extra`."""
        summary = {f"{self.unit}s": progress, "best_score": best.score, f"best_{self.unit}": best.progress}
        atomic_write_json(self.path / "summary.json", {**summary, **extra})


def _best_of(payload: Mapping[str, Any], unit: str) -> Best:
    best = payload.get("best")
    if isinstance(best, Mapping):
        return Best(float(best.get("score", -math.inf)), int(best.get("progress", -1)))
    return Best(float(payload.get("best_score", -math.inf)), int(payload.get(f"best_{unit}", -1)))


__all__ = ["Best", "RunDirectory", "RunKind", "RunState", "write_history"]
