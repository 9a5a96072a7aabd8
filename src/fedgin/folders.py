"""Which folders fedgin made, and the one guard before fedgin replaces, deletes or fills a folder.

Every folder fedgin makes carries a marker, `.fedgin` ({"kind": ..., "version": ...}), that says what it
is. `--overwrite` and staged outputs (stats, cross-site, the demo's data) replace a folder only when it is
absent, empty, or fedgin's folder of the same kind; anything else is one line (ConfigError) and nothing is
touched. The root folder, the home folder, the working folder and every folder above it are never made,
filled or replaced, whatever the flags.

Folders made before the marker existed (fedgin 0.8 and earlier) are recognised by their shape, so that
`--resume` and `--overwrite` keep working on them (their next start writes the marker):

    run         config.toml and checkpoints/last.pt or checkpoints/best.pt (a run stopped before its
                first checkpoint is not recognised: delete it by hand)
    stats       stats.json
    cross-site  cross_site.json or cross_site.csv
    cache       index.csv and a cases/ folder
    study       study.toml
    data        protocols.json beside meta.csv or dataset.json (what `fedgin synth` writes)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from fedgin.errors import ConfigError

FolderKind = Literal["run", "stats", "cross-site", "cache", "study", "data"]
MARKER = ".fedgin"

#: How a message names each kind.
KIND_NAMES: dict[str, str] = {
    "run": "run folder",
    "stats": "statistics folder",
    "cross-site": "cross-site folder",
    "cache": "cache",
    "study": "study folder",
    "data": "synthetic data set",
}

#: The files that tell a folder of each kind made before the marker (any one group, all of its files).
LEGACY_SHAPES: dict[str, tuple[tuple[str, ...], ...]] = {
    "run": (("config.toml", "checkpoints/last.pt"), ("config.toml", "checkpoints/best.pt")),
    "stats": (("stats.json",),),
    "cross-site": (("cross_site.json",), ("cross_site.csv",)),
    "cache": (("index.csv", "cases/"),),
    "study": (("study.toml",),),
    "data": (("protocols.json", "meta.csv"), ("protocols.json", "dataset.json")),
}


def mark(folder: str | Path, kind: FolderKind) -> None:
    """Write `folder`'s marker (the folder exists): fedgin made it, and it is a `kind`."""
    from fedgin import __version__
    from fedgin.io_utils import atomic_write_json

    atomic_write_json(Path(folder) / MARKER, {"kind": kind, "version": __version__})


def marked_kind(folder: str | Path) -> str | None:
    """The kind `folder`'s marker names; None without a readable marker."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = record.get("kind") if isinstance(record, dict) else None
    return kind if isinstance(kind, str) else None


def _has(folder: Path, relative: str) -> bool:
    path = folder / relative
    return path.is_dir() if relative.endswith("/") else path.is_file()


def kind_of(folder: str | Path) -> str | None:
    """What fedgin made `folder` as: its marker's kind, else the kind of a known earlier shape, else None."""
    folder = Path(folder)
    marked = marked_kind(folder)
    if marked is not None:
        return marked
    for kind, shapes in LEGACY_SHAPES.items():
        if any(all(_has(folder, relative) for relative in shape) for shape in shapes):
            return kind
    return None


def _protected_reason(folder: Path) -> str | None:
    """Why `folder` may never be one of fedgin's folders (None when it may)."""
    target = folder.resolve()
    if target == Path(target.anchor):
        return "the root folder"
    try:
        if target == Path.home().resolve():
            return "the home folder"
    except (RuntimeError, KeyError):  # no HOME and no passwd entry: there is no home folder to protect
        pass
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working folder was deleted: nothing is at or above it
        return None
    if target == cwd:
        return "the working folder"
    if target in cwd.parents:
        return "above the working folder (it holds the working folder)"
    return None


def refuse_protected(folder: str | Path, kind: FolderKind) -> None:
    """ConfigError for the root, home or working folder or a folder above it, as any kind of output."""
    reason = _protected_reason(Path(folder))
    if reason is not None:
        raise ConfigError(
            f"{folder}: is {reason}; fedgin never uses it as a {KIND_NAMES[kind]} (name a folder of its own)"
        )


def _is_empty(folder: Path) -> bool:
    return not any(folder.iterdir())


def check_replaceable(folder: str | Path, kind: FolderKind) -> None:
    """Refuse (ConfigError, nothing touched) unless `folder` is absent, empty, or fedgin's `kind`.

    Checked before the work that would replace the folder, and again just before it is replaced.
    """
    folder = Path(folder)
    refuse_protected(folder, kind)
    name = KIND_NAMES[kind]
    if folder.is_symlink():
        raise ConfigError(f"{folder}: is a symbolic link; fedgin replaces only a {name} it made itself")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{folder}: is a file, not a {name}; nothing was changed")
    if _is_empty(folder):
        return
    found = kind_of(folder)
    if found == kind:
        return
    what = f"is a fedgin {KIND_NAMES.get(found, found)}" if found else "holds files fedgin did not make"
    raise ConfigError(
        f"{folder}: {what}, not a {name}; fedgin replaces only a {name} it made (choose another folder; "
        "nothing was changed)"
    )


def check_fillable(folder: str | Path, kind: FolderKind) -> None:
    """Refuse (ConfigError) to write a `kind` into the root, home or working folder, above it, or into a
    folder that fedgin made as something else. For writers that add files to a folder or continue it
    (prepare, synth, --resume), and before --overwrite's own check."""
    folder = Path(folder)
    refuse_protected(folder, kind)
    if folder.is_dir():
        found = kind_of(folder)
        if found is not None and found != kind:
            raise ConfigError(
                f"{folder}: is a fedgin {KIND_NAMES.get(found, found)}, not a {KIND_NAMES[kind]}; "
                "choose another folder (nothing was changed)"
            )


def remove(folder: str | Path, kind: FolderKind) -> None:
    """Delete `folder` (for --overwrite) once `check_replaceable` allows it; absent is fine."""
    check_replaceable(folder, kind)
    if Path(folder).exists():
        shutil.rmtree(folder)


__all__ = [
    "KIND_NAMES",
    "MARKER",
    "FolderKind",
    "check_fillable",
    "check_replaceable",
    "kind_of",
    "mark",
    "marked_kind",
    "refuse_protected",
    "remove",
]
