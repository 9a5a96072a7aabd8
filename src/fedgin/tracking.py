"""Optional experiment tracking: a run's curves as TensorBoard scalars (`[tracking] tensorboard = DIR`).

Off unless `tracking.tensorboard` names a folder; nothing imports TensorBoard otherwise (the `tracking` extra
installs it: `pip install 'fedgin[tracking]'`). A run writes its event files into `<tensorboard>/<name>`
(`name`: the run's `name`, made safe for a folder), so `tensorboard --logdir <tensorboard>` shows the runs
side by side.

What is logged: every finite number of each row the run writes to its CSV, at the same moment (so the
event files hold exactly what `metrics.csv` / `rounds.csv` hold), with the step of that row:

* centralized / local training (`fedgin train`): one row per stretch of optimizer steps (at every
  checkpoint and validation point), step = the optimizer step;
* federation (`fedgin federate`, `fedgin deploy`): one row per committed round, step = the round.

Tags are grouped by what they measure:

* `loss/train`, `loss/<site>`: training loss (the stretch's or round's mean; each site's);
* `lr`: the learning rate;
* `val_dice/<domain>`: validation Dice per domain (mean over organs), `val_dice_organ/<domain>/<organ>`
  per organ, `val/score` the model-selection score, `site_val/<site>_<domain>` a site's own validation;
* `bytes/down`, `bytes/up`: bytes sent to and received from the clients;
* `privacy/epsilon`, `privacy/clipping_norm`: differential privacy's epsilon spent and the round's clip;
* `update_norm/<site>`, `examples/<site>`, `clients`: each site's update norm and examples, clients used;
* `seconds/round`, `seconds/train`, `seconds/val`, `seconds/train/<site>`: where the time went;
* `speed/slices_per_s`, `speed/data_wait_share`, `speed/gin_share`: the trainer's throughput.

Anything else keeps its column's name. Texts, switches and NaN are not logged. Each call is flushed to
disk, so a run that crashes or is interrupted keeps what it logged. A resumed run continues the curves:
steps after the one it resumes from are hidden in what an earlier attempt wrote (TensorBoard's purge), and
a run started afresh hides all of that folder's earlier steps.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from fedgin.config import TrackingConfig
from fedgin.errors import ConfigError
from fedgin.labels import ORGANS

MISSING_EXTRA = "TensorBoard logging needs the tracking extra: pip install 'fedgin[tracking]'"

#: Columns with a tag of their own; None: not logged (the step itself).
EXACT_TAGS: dict[str, str | None] = {
    "round": None,
    "step": None,
    "train_loss": "loss/train",
    "loss": "loss/train",
    "lr": "lr",
    "val_score": "val/score",
    "bytes_down": "bytes/down",
    "bytes_up": "bytes/up",
    "epsilon": "privacy/epsilon",
    "dp_clipping_norm": "privacy/clipping_norm",
    "seconds": "seconds/round",
    "train_seconds": "seconds/train",
    "val_seconds": "seconds/val",
    "clients": "clients",
    "slices_per_s": "speed/slices_per_s",
    "data_wait_share": "speed/data_wait_share",
    "gin_share": "speed/gin_share",
}

#: Column prefixes (first match wins) and the group their rest goes into.
PREFIX_TAGS: tuple[tuple[str, str], ...] = (
    ("train_seconds_", "seconds/train/"),
    ("loss_", "loss/"),
    ("update_norm_", "update_norm/"),
    ("examples_", "examples/"),
    ("site_val_", "site_val/"),
)


def tag_for(column: str) -> str | None:
    """The TensorBoard tag of a history column, or None for a column that is not logged (the step)."""
    if column in EXACT_TAGS:
        return EXACT_TAGS[column]
    if column.startswith("val_dice_"):
        rest = column[len("val_dice_") :]
        for organ in ORGANS:
            if rest.endswith(f"_{organ}") and len(rest) > len(organ) + 1:
                return f"val_dice_organ/{rest[: -len(organ) - 1]}/{organ}"
        return f"val_dice/{rest}"
    for prefix, group in PREFIX_TAGS:
        if column.startswith(prefix) and len(column) > len(prefix):
            return group + column[len(prefix) :]
    return column


def folder_name(name: str) -> str:
    """`name` as one safe folder name (letters, digits, `_`, `.`, `-`; never `.` or `..`)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".")
    return safe or "run"


def _summary_writer_class() -> type:
    """torch's SummaryWriter, or a one-line ConfigError when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError itself when tensorboard is missing or too old
        raise ConfigError(MISSING_EXTRA) from None
    return SummaryWriter


def check_tracking(tracking: TrackingConfig) -> None:
    """ConfigError (one line) unless tracking is off, or TensorBoard is installed and its folder can be made:
    for a command that runs several trainings (a study), checked before the first of them."""
    if tracking.tensorboard is not None:
        check_writable_folder(Path(tracking.tensorboard))
        _summary_writer_class()


def check_writable_folder(folder: Path) -> None:
    """ConfigError (one line) unless `folder` is, or can be made as, a folder this process may write in:
    its nearest existing part must be a folder with write permission. Nothing is made."""
    for existing in (folder, *folder.parents):
        if existing.exists():
            if not existing.is_dir():
                raise ConfigError(f"tracking.tensorboard: {existing} is a file, not a folder ({folder})")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise ConfigError(f"tracking.tensorboard: cannot write in {existing} (no write permission)")
            return


class Tracker:
    """Writes a run's rows as TensorBoard scalars; a no-op when tracking is off (`Tracker.open`)."""

    def __init__(self, folder: Path | None = None, purge_step: int | None = None) -> None:
        """`folder`: the event files' folder (None: a no-op tracker). Prefer `Tracker.open`."""
        self.folder = folder
        self.purge_step = purge_step
        self._writer: Any = None
        self._writer_class: type | None = _summary_writer_class() if folder is not None else None
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def open(cls, tracking: TrackingConfig, name: str, resume_step: int = 0) -> Tracker:
        """The tracker of run `name`: a no-op when `tracking.tensorboard` is None, else one that writes
        into `tracking.tensorboard / name` (the folder and its writer are made at the first scalars).

        `resume_step`: the last step (round) the run resumes after, 0 for a run started afresh; what an
        earlier attempt logged for later steps is hidden in TensorBoard. ConfigError (one line) if
        TensorBoard is not installed or the folder cannot be made: the folder is made here, before training,
        although the writer is made only at the first scalars.
        """
        if tracking.tensorboard is None:
            return cls()
        folder = Path(tracking.tensorboard) / folder_name(name)
        check_writable_folder(folder)
        _summary_writer_class()  # TensorBoard missing: refused before anything is made
        try:  # made now, not at the first scalars: a folder that cannot be made fails before training
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            from fedgin.errors import os_error_line

            raise ConfigError(f"tracking.tensorboard: {os_error_line(error)}") from None
        return cls(folder, purge_step=resume_step + 1)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def _open_writer(self) -> Any:
        if self._writer is None:
            assert self._writer_class is not None and self.folder is not None
            self._writer = self._writer_class(log_dir=str(self.folder), purge_step=self.purge_step)
            # A run that ends without close() (an error, Ctrl-C) still stops the writer's thread: when the
            # tracker is collected, or at exit.
            self._finalizer = weakref.finalize(self, self._writer.close)
        return self._writer

    def scalars(self, step: int, values: Mapping[str, object], prefix: str = "") -> None:
        """Log each finite number of `values` (a history row) at `step`, tagged by `tag_for`, under
        `prefix/` if given; texts, switches and NaN are skipped. Flushed to disk before returning."""
        if self.folder is None:
            return
        scalars: dict[str, float] = {}
        for column, value in values.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            number = float(value)
            tag = tag_for(column)
            if tag is None or not math.isfinite(number):
                continue
            scalars[f"{prefix.rstrip('/')}/{tag}" if prefix else tag] = number
        if not scalars:
            return
        writer = self._open_writer()
        for tag, number in scalars.items():
            writer.add_scalar(tag, number, global_step=int(step))
        writer.flush()

    def close(self) -> None:
        """Flush and close the event file and stop the writer's thread; logging again reopens it."""
        if self._finalizer is not None:
            self._finalizer()  # closes the writer once
            self._finalizer = None
        self._writer = None
        self.purge_step = None  # a reopened writer continues, it hides nothing

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "MISSING_EXTRA",
    "Tracker",
    "check_tracking",
    "check_writable_folder",
    "folder_name",
    "tag_for",
]
