"""Atomic file writes: a reader never sees a half-written checkpoint, cache file or result."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedgin.folders import FolderKind


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step (os.replace).

    The file gets `mode` before anything is written to it: 0o644 for results the team reads, 0o600 for a
    private key (never readable by others, not even while it is written).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, mode)  # mkstemp makes it 0600
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], mode: int = 0o644) -> None:
    """Call `write` with a binary file object whose content becomes `path` only if `write` succeeds."""
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


@contextmanager
def staged_folder(out_dir: str | Path, kind: FolderKind) -> Iterator[Path]:
    """A sibling staging folder to fill; on success it takes the place of `out_dir`, on failure it is
    removed and `out_dir` stays as it was.

    `out_dir` is replaced only when it is absent, empty or fedgin's folder of `kind` (fedgin.folders):
    anything else is refused before the staging folder is made. The new folder carries the marker.
    """
    from fedgin.folders import check_replaceable, mark

    out_dir = Path(out_dir)
    check_replaceable(out_dir, kind)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would stay the folder's mode
        yield staging
        mark(staging, kind)
        check_replaceable(out_dir, kind)  # what the work took time for may have changed meanwhile
        if out_dir.exists():
            # A fresh empty folder to rename the old one onto: only what fedgin made here is deleted.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old)
            staging.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
