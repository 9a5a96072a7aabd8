"""A run's folder: what single-site training and a federation's server both write, in one layout.

    <run>/config.toml            the resolved configuration, written once the run is known to be runnable
    <run>/metrics.csv|rounds.csv one row per validation stretch (single site) or per round (federation)
    <run>/learning_curve.png     that history drawn
    <run>/checkpoints/last.pt    the commit point: a run resumed from it continues exactly
    <run>/checkpoints/best.pt    the model with the best validation score so far
    <run>/summary.json           written when the call ends

Both checkpoints share one schema (`CHECKPOINT_FORMAT`): `kind` ("single-site" or "federated"),
`progress` (optimizer steps or rounds completed), `history` (the rows of the CSV), `best` ({"score",
"progress"}), `model` and `config`, `data` (the fingerprint and domains of every cache the run reads,
see `data_record`), plus what the writer adds (optimizer, scaler and RNG state of a single-site run).
A model whose weights are not all finite is never written, and a run is resumed only with the settings
and the data it was trained with (`RunDirectory.check_resume`).

The older keys (`step` / `round`, `best_score`, `best_step` / `best_round`) are written
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

from fedgin.checkpoints import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    nonfinite_weights,
    require_finite_weights,
    save_torch_file,
)
from fedgin.config import RunConfig, Settings, dump_toml
from fedgin.errors import ConfigError, FedginError
from fedgin.folders import check_fillable, check_replaceable, mark
from fedgin.folders import remove as remove_folder
from fedgin.io_utils import atomic_write_json, atomic_write_text

RunKind = Literal["single-site", "federated"]

#: Settings that change where a run writes or how it is watched, not what it computes: a resumed run may
#: change them freely (dotted paths of RunConfig).
RESUMABLE_SETTINGS = (
    "name",
    "output",
    "tracking",
    "stats",
    "train.num_workers",
    "federation.round_timeout_s",
)


class RunDiverged(FedginError):
    """Training produced NaN or Inf (a loss, a model's weights): the run stops, its last good checkpoint
    is kept, and the one-line message names the step or round and the likely cause."""


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
    #: The checkpoint file read.
    path: Path | None = None


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
        #: The progress of the last checkpoint committed (last.pt written or resumed from), if any.
        self.committed: int | None = None
        self._data: dict[str, dict] | None = None

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
        """checkpoints/<name> in the one schema, written atomically: a crash or a full disk (an OSError
        naming the file) leaves the previous intact. A model with NaN or Inf weights is never written
        (RunDiverged); callers check first, to say what made it."""
        self.require_finite(model, progress, "the model")
        if self._data is None and isinstance(config, RunConfig):
            self._data = data_record(config)
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
            "data": self._data or {},
            **extra,
        }
        if self.kind == "federated":
            payload["round"] = progress
        path = self.checkpoints / name
        save_torch_file(path, payload)
        if name == self.last_checkpoint.name:
            self.committed = progress
        return path

    def require_finite(
        self, model: Mapping[str, torch.Tensor], progress: int, what: str, hint: str = ""
    ) -> None:
        """RunDiverged, one line naming the step or round, the layers and the checkpoint kept, when
        `model`'s weights are not all finite (`what` names the model, `hint` the likely cause)."""
        problem = nonfinite_weights(model)
        if problem is not None:
            raise RunDiverged(
                f"{self.unit} {progress}: {what} has non-finite weights ({problem}); {self.kept()}"
                + (f"; {hint}" if hint else "")
            )

    def kept(self) -> str:
        """What a failed step or round leaves: the last committed checkpoint, or none."""
        if self.committed is None:
            return "no checkpoint was written"
        return f"the last good checkpoint ({self.unit} {self.committed}) is kept in {self.last_checkpoint}"

    def read_checkpoint(self, path: Path, device: torch.device | str = "cpu") -> RunState:
        """A checkpoint of this kind of run, safely loaded, with its progress, history and best."""
        payload = load_checkpoint(path, device)
        return RunState(
            progress=int(payload.get("progress", payload.get(self.unit, 0))),
            history=list(payload.get("history", [])),
            best=_best_of(payload, self.unit),
            payload=payload,
            path=path,
        )

    def check_resume(self, resumed: RunState, config: RunConfig, allow_changed_settings: bool) -> None:
        """Refuse (ConfigError, one line) to continue a run with other settings or other data than it was
        trained with, or from weights that are not all finite.

        Changed settings (other than RESUMABLE_SETTINGS) are accepted with `allow_changed_settings`
        (`--allow-changed-settings`); changed data never: a cache prepared again, or swapped for another
        modality's, would mix two data sets in one model, so it takes a new run, as a study refuses it.
        """
        path = resumed.path or self.last_checkpoint
        require_finite_weights(path, resumed.payload["model"])
        self.committed = resumed.progress
        changed = changed_settings(resumed.payload.get("config", {}), config)
        if changed and not allow_changed_settings:
            listing = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
            raise ConfigError(
                f"{path}: --resume with changed settings ({listing}); the run was trained with the "
                "settings in this checkpoint: restore them, pass --allow-changed-settings to continue with "
                "the new ones, or start a new run (another --out, or --overwrite)"
            )
        recorded = resumed.payload.get("data")
        self._data = data_record(config)
        if isinstance(recorded, Mapping):
            problem = data_changes(recorded, self._data)
            if problem:
                raise ConfigError(
                    f"{path}: cannot resume: {problem}; resuming would mix two data sets in one model "
                    "(start a new run: another --out, or --overwrite)"
                )

    def write_summary(self, progress: int, best: Best, **extra: Any) -> None:
        """summary.json: progress (`steps` or `rounds`), the best score and when, then `extra`."""
        summary = {f"{self.unit}s": progress, "best_score": best.score, f"best_{self.unit}": best.progress}
        atomic_write_json(self.path / "summary.json", {**summary, **extra})


def changed_settings(before: Any, now: RunConfig) -> list[str]:
    """The settings (dotted paths, with both values) in which `now` differs from a checkpoint's config,
    RESUMABLE_SETTINGS left out. The checkpoint's config is read back through today's RunConfig, so that
    settings added since (with their defaults) and other spellings of one value are no change."""
    try:
        previous = RunConfig.model_validate(before).model_dump(mode="json")
    except (ValueError, TypeError):
        previous = before if isinstance(before, dict) else {}
    old, new = _flat(previous), _flat(now.model_dump(mode="json"))
    keys = sorted(
        key
        for key in {*old, *new}
        if old.get(key) != new.get(key)
        and not any(key == name or key.startswith(f"{name}.") for name in RESUMABLE_SETTINGS)
    )
    return [f"{key} {_shown(old.get(key))} -> {_shown(new.get(key))}" for key in keys]


def _flat(tables: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tables.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(value: Any, limit: int = 40) -> str:
    text = "(none)" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def data_record(config: RunConfig) -> dict[str, dict]:
    """cache folder -> {"use", "fingerprint", "domains"} for every cache the run trains or validates on
    that this machine can read (a deployed server sees only its own caches; the sites check theirs).

    The fingerprint is the study's (`fedgin.cache.index_fingerprint`): it changes when the cache is
    prepared again from other files or with other settings.
    """
    from fedgin.cache import index_fingerprint, read_index

    uses: dict[str, str] = {}
    for spec in config.data.train:
        uses.setdefault(str(spec.cache), "the training cache")
    for client in config.federation.clients:
        for spec in client.data:
            uses.setdefault(str(spec.cache), f"site {client.name}'s cache")
    for spec in [*(config.data.val or []), *(config.federation.server_eval or [])]:
        uses.setdefault(str(spec.cache), "the validation cache")
    record = {}
    for cache, use in uses.items():
        try:
            rows = read_index(Path(cache))
        except (FedginError, OSError):
            continue  # unreadable here: training refuses it itself, with its own message
        if rows:
            domains = sorted({row.get("domain", "") for row in rows.values()})  # ct, mri_t1, mri_t2
            record[cache] = {"use": use, "fingerprint": index_fingerprint(rows), "domains": domains}
    return record


def data_changes(before: Mapping[str, Any], now: Mapping[str, dict]) -> str | None:
    """What changed between two `data_record`s, in words, for the caches both could read (None: nothing)."""
    for cache in sorted(set(before) & set(now)):
        old, new = before[cache], now[cache]
        if not isinstance(old, Mapping):
            continue
        use = new["use"]
        if list(old.get("domains", new["domains"])) != new["domains"]:
            was, is_ = "/".join(old["domains"]), "/".join(new["domains"])
            return f"{use} ({cache}) holds {is_} cases now, {was} cases when this run used it"
        if old.get("fingerprint") != new["fingerprint"]:
            return f"{use} ({cache}) changed since this run used it (cases added, removed or prepared again)"
    return None


def _best_of(payload: Mapping[str, Any], unit: str) -> Best:
    best = payload.get("best")
    if isinstance(best, Mapping):
        return Best(float(best.get("score", -math.inf)), int(best.get("progress", -1)))
    return Best(float(payload.get("best_score", -math.inf)), int(payload.get(f"best_{unit}", -1)))


__all__ = [
    "Best",
    "RunDirectory",
    "RunDiverged",
    "RunKind",
    "RunState",
    "changed_settings",
    "data_record",
    "write_history",
]
