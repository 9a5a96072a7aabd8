"""`prepare`: discover a source's cases, preprocess them case by case (in worker processes) into a cache."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedgin.cache import (
    CACHE_FORMAT_VERSION,
    CASES_DIR,
    PREPARE_FILE,
    case_files,
    read_index,
    row_problem,
    write_index,
)
from fedgin.config import Modality, PreprocessConfig
from fedgin.errors import DataError
from fedgin.folders import check_fillable, mark
from fedgin.io_utils import atomic_save_npy, atomic_write_json
from fedgin.labels import NUM_CLASSES, ORGANS
from fedgin.preprocessing import preprocess
from fedgin.sources import SourceCase, Split, discover

#: Voxels sampled per case for the original-intensity percentiles (exact percentiles are slow on big CTs).
PERCENTILE_SAMPLE = 1_000_000


@dataclass
class PrepareReport:
    """What a prepare run did: case ids prepared and skipped (unchanged), one line per failure."""

    cache: Path
    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # rows removed because the config changed

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = (
            f"{self.cache}: {len(self.prepared)} prepared, {len(self.skipped)} unchanged, "
            f"{len(self.failed)} failed"
        )
        if self.dropped:
            text += f", {len(self.dropped)} dropped (prepared with another config)"
        return text


def fingerprint(case: SourceCase, config: PreprocessConfig) -> str:
    """Changes with any source file (path, size, mtime), the preprocessing config or the cache format.

    Metadata that does not change the cached arrays (the protocol) is left out: `prepare` rewrites it in
    the index rows of unchanged cases instead of preparing them again.
    """
    files = []
    for path in case.files():
        try:
            stat = path.stat()
            files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([str(path), None, None])
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "config": config.model_dump(mode="json"),
        "files": files,
        "case": [case.source, case.case_id, case.modality, case.domain, case.split],
        "labels": repr(case.labels),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def prepare_case(
    case: SourceCase, cache_root: Path, config: PreprocessConfig, case_fingerprint: str
) -> dict[str, Any]:
    """Load, validate, preprocess and write one case's files; return its index row (runs in a worker)."""
    loaded = case.load()
    raw = np.asarray(loaded.image.dataobj).reshape(-1)
    sample = raw[:: max(1, raw.size // PERCENTILE_SAMPLE)]
    original_percentiles = np.percentile(sample, (1, 50, 99))
    volume = preprocess(loaded.image, loaded.label, case.modality, config)
    del loaded, raw, sample
    assert volume.label is not None
    uid = case.uid
    image_file, label_file, record_file = case_files(uid)
    atomic_save_npy(cache_root / image_file, volume.image)
    atomic_save_npy(cache_root / label_file, volume.label)
    counts = np.bincount(volume.label.reshape(-1), minlength=NUM_CLASSES)
    foreground = volume.label.reshape(volume.label.shape[0], -1).any(axis=1)
    geometry = volume.geometry
    atomic_write_json(
        cache_root / record_file,
        {
            "case_id": uid,
            "source": case.source,
            "source_case_id": case.case_id,
            "source_files": [str(path) for path in case.files()],
            "geometry": geometry.to_json(),
            "foreground": [int(flag) for flag in foreground],
        },
    )
    z, height, width = volume.image.shape
    return {
        "case_id": uid,
        "source": case.source,
        "source_case_id": case.case_id,
        "modality": case.modality,
        "domain": case.domain,
        "split": case.split,
        "protocol": case.protocol,
        "image_file": image_file,
        "label_file": label_file,
        "n_slices": z,
        "height": height,
        "width": width,
        "spacing_x": f"{geometry.spacing[0]:.6g}",
        "spacing_y": f"{geometry.spacing[1]:.6g}",
        "spacing_z": f"{geometry.spacing[2]:.6g}",
        "original_shape": "x".join(str(v) for v in geometry.original_shape),
        "original_spacing": "x".join(f"{v:.6g}" for v in geometry.original_spacing),
        **{f"voxels_{name}": int(counts[index]) for index, name in enumerate(ORGANS, start=1)},
        "foreground_slices": int(foreground.sum()),
        "original_p1": f"{original_percentiles[0]:.6g}",
        "original_p50": f"{original_percentiles[1]:.6g}",
        "original_p99": f"{original_percentiles[2]:.6g}",
        "source_image": str(case.image),
        "fingerprint": case_fingerprint,
    }


def _failure_line(case: SourceCase, error: BaseException) -> str:
    if isinstance(error, DataError):
        return str(error)
    return f"{case.image}: {type(error).__name__}: {error}"


def _clean_stray_tmp(cache_root: Path) -> None:
    # Left by an interrupted run (atomic writes go through `.name.XXXX.tmp`); never indexed, safe to delete.
    for folder in (cache_root, cache_root / CASES_DIR):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def _update_prepare_json(cache_root: Path, config: PreprocessConfig, source_record: dict[str, Any]) -> bool:
    """Record config and sources; return True when an existing cache was made with another config."""
    path = cache_root / PREPARE_FILE
    config_json = config.model_dump(mode="json")
    previous: dict[str, Any] = {}
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = {}
    changed = bool(previous) and (
        previous.get("config") != config_json or previous.get("format_version") != CACHE_FORMAT_VERSION
    )
    sources = [] if changed else list(previous.get("sources", []))
    sources = [record for record in sources if record.get("source") != source_record["source"]]
    sources.append(source_record)
    atomic_write_json(
        path, {"format_version": CACHE_FORMAT_VERSION, "config": config_json, "sources": sources}
    )
    return changed


def prepare(
    source: str,
    root: Path,
    out: Path,
    config: PreprocessConfig,
    workers: int = 2,
    label_map: dict[int, int] | None = None,
    modality: Modality | None = None,
    split_override: Split | None = None,
    progress: bool = True,
    fail_fast: bool = False,
) -> PrepareReport:
    """Preprocess every case of `source` under `root` into the cache folder `out`.

    Cases whose fingerprint is unchanged are skipped, so an interrupted run resumes; a bad case is reported
    as one `path: problem` line and never indexed while the others are prepared (fail_fast raises instead).
    One cache holds one preprocessing config: a different config drops the rows prepared with the old one.
    `out` is never the root, home or working folder (or above it) nor a folder fedgin made as something
    else (a run, a study...); it is marked as a cache (fedgin.folders).
    """
    root, out = Path(root), Path(out)
    cases = discover(source, root, label_map=label_map, modality=modality, split_override=split_override)
    check_fillable(out, "cache")
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "cache")
    (out / CASES_DIR).mkdir(exist_ok=True)
    _clean_stray_tmp(out)
    report = PrepareReport(cache=out)

    rows = read_index(out)
    source_record = {
        "source": source,
        "root": str(root.resolve()),
        "label_map": {str(k): v for k, v in label_map.items()} if label_map else None,
        "modality": modality,
        "split_override": split_override,
    }
    if _update_prepare_json(out, config, source_record) and rows:
        report.dropped = sorted(rows)
        rows = {}

    todo: deque[tuple[SourceCase, str]] = deque()
    for case in cases:
        case_fingerprint = fingerprint(case, config)
        existing = rows.get(case.uid)
        if existing is not None:
            # A case whose arrays are missing, truncated or disagree with its row is prepared again.
            usable = row_problem(out, existing) is None
            if existing["fingerprint"] == case_fingerprint and usable:
                existing["protocol"] = case.protocol  # the source's current metadata, also in an old index
                report.skipped.append(case.uid)
                continue
            other = Path(existing["source_image"])
            if other != case.image and other.exists():
                report.failed.append(f"{case.image}: case id {case.uid} is already in the cache from {other}")
                continue
            # Unindex before rewriting its files, so a failure or interruption leaves nothing stale indexed.
            del rows[case.uid]
        todo.append((case, case_fingerprint))
    write_index(out, rows)

    def finish(case: SourceCase, result: dict[str, Any] | None, error: BaseException | None) -> None:
        if error is None and result is not None:
            rows[case.uid] = result
            write_index(out, rows)  # after each case: the index only ever lists complete cases
            report.prepared.append(case.uid)
            return
        assert error is not None
        report.failed.append(_failure_line(case, error))
        if fail_fast:
            if isinstance(error, DataError):
                raise error
            raise DataError(case.image, f"{type(error).__name__}: {error}") from error

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(f"prepare {source}", total=len(todo))
        if workers <= 1:
            while todo:
                case, case_fingerprint = todo.popleft()
                try:
                    result = prepare_case(case, out, config, case_fingerprint)
                except Exception as error:
                    finish(case, None, error)
                else:
                    finish(case, result, None)
                bar.advance(task)
        else:
            _run_pool(todo, out, config, workers, finish, lambda: bar.advance(task))
    return report


def _die_with_parent(parent: int) -> None:
    """Pool worker initializer: SIGKILL when the prepare process dies, however it dies (even SIGKILL).

    Without it a killed `fedgin prepare` leaves its workers running as orphans, and with them the
    multiprocessing resource tracker, which exits only once every process holding its pipe is gone.
    """
    import os

    from fedgin.processes import die_with_parent

    die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was set
        os._exit(1)


def _run_pool(todo, out, config, workers, finish, advance) -> None:
    """Keep at most 2 x workers cases in flight: memory stays at about one volume per worker."""
    import os

    # spawn: forking a process that already runs torch threads can deadlock.
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
    in_flight: dict[Future, SourceCase] = {}
    try:
        while todo or in_flight:
            while todo and len(in_flight) < 2 * workers:
                case, case_fingerprint = todo.popleft()
                in_flight[pool.submit(prepare_case, case, out, config, case_fingerprint)] = case
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                case = in_flight.pop(future)
                error = future.exception()
                finish(case, None if error else future.result(), error)
                advance()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
