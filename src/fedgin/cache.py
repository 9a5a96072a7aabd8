"""The on-disk cache of preprocessed volumes (index.csv, cases/*.npy, cases/*.json) and its summary."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table

from fedgin.case_ids import case_id_problem, plain_name_message, require_plain
from fedgin.errors import DataError
from fedgin.io_utils import atomic_write_text
from fedgin.labels import LABEL_NAMES, ORGANS
from fedgin.preprocessing import Geometry

#: Bumped whenever the cached arrays or index change meaning; part of every case fingerprint.
CACHE_FORMAT_VERSION = 1
INDEX_FILE = "index.csv"
PREPARE_FILE = "prepare.json"
CASES_DIR = "cases"
ORGAN_COLUMNS: tuple[str, ...] = tuple(f"voxels_{name}" for name in ORGANS)
INDEX_COLUMNS: tuple[str, ...] = (
    "case_id",
    "source",
    "source_case_id",
    "modality",
    "domain",
    "split",
    "protocol",
    "image_file",
    "label_file",
    "n_slices",
    "height",
    "width",
    "spacing_x",
    "spacing_y",
    "spacing_z",
    "original_shape",
    "original_spacing",
    *ORGAN_COLUMNS,
    "foreground_slices",
    "original_p1",
    "original_p50",
    "original_p99",
    "source_image",
    "fingerprint",
)
#: Columns added to index.csv after CACHE_FORMAT_VERSION 1, with the value an index written before them
#: reads as: such an index still opens (and `prepare` rewrites it with them).
OPTIONAL_INDEX_COLUMNS: dict[str, str] = {"protocol": ""}


@dataclass(frozen=True)
class CacheEntry:
    """One row of index.csv, typed; paths are relative to the cache folder."""

    case_id: str
    source: str
    source_case_id: str
    modality: str
    domain: str
    split: str
    #: Acquisition protocol recorded by the source ("" when unknown).
    protocol: str
    image_file: str
    label_file: str
    n_slices: int
    height: int
    width: int
    spacing: tuple[float, float, float]
    original_shape: tuple[int, ...]
    original_spacing: tuple[float, ...]
    organ_voxels: dict[str, int]
    foreground_slices: int
    original_percentiles: tuple[float, float, float]
    source_image: str
    fingerprint: str

    @classmethod
    def from_row(cls, row: dict[str, str]) -> CacheEntry:
        """The typed entry; ValueError naming the column for an empty, missing or malformed value."""
        read = _Row(row)
        return cls(
            case_id=read.text("case_id"),
            source=read.text("source"),
            source_case_id=read.text("source_case_id"),
            modality=read.text("modality"),
            domain=read.text("domain"),
            split=read.text("split"),
            protocol=row.get("protocol") or "",
            image_file=read.text("image_file"),
            label_file=read.text("label_file"),
            n_slices=read.whole("n_slices", minimum=1),
            height=read.whole("height", minimum=1),
            width=read.whole("width", minimum=1),
            spacing=(read.number("spacing_x"), read.number("spacing_y"), read.number("spacing_z")),
            original_shape=tuple(read.numbers("original_shape", int)),
            original_spacing=tuple(read.numbers("original_spacing", float)),
            organ_voxels={name: read.whole(f"voxels_{name}", minimum=0) for name in ORGANS},
            foreground_slices=read.whole("foreground_slices", minimum=0),
            original_percentiles=(
                read.number("original_p1"),
                read.number("original_p50"),
                read.number("original_p99"),
            ),
            source_image=row.get("source_image") or "",
            fingerprint=row.get("fingerprint") or "",
        )


class _Row:
    """Typed reads of one index.csv row, each failure a ValueError that names the column and value."""

    def __init__(self, row: dict[str, str]) -> None:
        self.row = row

    def text(self, name: str) -> str:
        value = self.row.get(name)
        if not value:
            raise ValueError(f"{name} is empty")
        return value

    def whole(self, name: str, minimum: int | None = None) -> int:
        value = self.text(name)
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{name} is {value!r}, not a whole number") from None
        if minimum is not None and number < minimum:
            raise ValueError(f"{name} is {number}, below {minimum}")
        return number

    def number(self, name: str) -> float:
        value = self.text(name)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{name} is {value!r}, not a number") from None
        if not np.isfinite(number):
            raise ValueError(f"{name} is {value!r}, not a finite number")
        return number

    def numbers(self, name: str, cast: type) -> list:
        value = self.text(name)
        try:
            return [cast(part) for part in value.split("x")]
        except ValueError:
            raise ValueError(f"{name} is {value!r}, not numbers like 128x128x64") from None


def case_files(case_id: str) -> tuple[str, str, str]:
    """The image array, label array and case record of `case_id`, relative to the cache folder.

    ValueError for an id that is not a plain name: the ids were checked where they were read (the source,
    index.csv), and this keeps any id from becoming a path outside `cases/`.
    """
    require_plain(case_id)
    return (
        f"{CASES_DIR}/{case_id}_image.npy",
        f"{CASES_DIR}/{case_id}_label.npy",
        f"{CASES_DIR}/{case_id}.json",
    )


def geometry_file(case_id: str) -> str:
    return case_files(case_id)[2]


def read_index(root: Path) -> dict[str, dict[str, str]]:
    """index.csv rows by case id ({} when there is no index yet).

    DataError naming index.csv for a file that is not a cache index: not UTF-8 text or CSV, columns
    missing, a row with too few or too many fields, a case id that is not a plain name (ids name the
    case's files) or is listed twice. An index from before a column of OPTIONAL_INDEX_COLUMNS was added
    reads as holding that column's default.
    """
    path = root / INDEX_FILE
    if not path.exists():
        return {}
    rebuild = "delete it and run `fedgin prepare` again to rebuild the cache"
    rows: dict[str, dict[str, str]] = {}
    try:
        # utf-8-sig: a byte-order mark (an index saved by a spreadsheet) is not part of the first column
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            found = set(reader.fieldnames or []) | set(OPTIONAL_INDEX_COLUMNS)
            missing = [name for name in INDEX_COLUMNS if name not in found]
            if missing:
                shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
                raise DataError(path, f"not a fedgin cache index (no columns {shown}); {rebuild}")
            for row in reader:
                line = reader.line_num
                if None in row or any(value is None for value in row.values()):
                    raise DataError(
                        path, f"line {line}: {len(reader.fieldnames or [])} fields expected; {rebuild}"
                    )
                problem = case_id_problem(row["case_id"])
                if problem is not None:
                    message = plain_name_message("case_id", row["case_id"], problem)
                    raise DataError(path, f"line {line}: {message}; {rebuild}")
                if row["case_id"] in rows:
                    raise DataError(path, f"line {line}: case {row['case_id']!r} is listed twice; {rebuild}")
                for name, default in OPTIONAL_INDEX_COLUMNS.items():
                    row.setdefault(name, default)
                rows[row["case_id"]] = row
    except UnicodeDecodeError:
        raise DataError(path, f"not a fedgin cache index (not UTF-8 text); {rebuild}") from None
    except csv.Error as error:
        raise DataError(path, f"not a fedgin cache index (unreadable CSV: {error}); {rebuild}") from None
    return rows


def index_fingerprint(rows: dict[str, dict[str, str]]) -> str:
    """SHA-256 over a cache index's case ids and preparation fingerprints (`read_index`'s rows): it changes
    when a case is added, removed or prepared from other source files or with other preprocessing."""
    text = "\n".join(f"{case_id};{rows[case_id]['fingerprint']}" for case_id in sorted(rows))
    return hashlib.sha256(text.encode()).hexdigest()


def write_index(root: Path, rows: dict[str, dict[str, Any]]) -> None:
    """Rewrite index.csv atomically (sorted by case id), so a reader never sees a partial index."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for case_id in sorted(rows):
        row = {**OPTIONAL_INDEX_COLUMNS, **rows[case_id]}
        writer.writerow({name: row[name] for name in INDEX_COLUMNS})
    atomic_write_text(root / INDEX_FILE, buffer.getvalue())


class Cache:
    """A prepared cache folder, opened for reading.

    Opening checks the whole index and every case's arrays against it (the .npy headers and file sizes,
    not the voxels), so that a damaged cache is refused with one line naming the file before any training
    step rather than with a traceback many steps later.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = self.path / INDEX_FILE
        if not index.exists():
            raise DataError(index, "no cache index here; run `fedgin prepare` into this folder first")
        self.entries = []
        for case_id, row in read_index(self.path).items():
            try:
                self.entries.append(CacheEntry.from_row(row))
            except ValueError as error:
                raise DataError(index, f"case {case_id!r}: {error}; re-run prepare") from None
        for entry in self.entries:
            check_arrays(self.path, entry)
        prepare = self.path / PREPARE_FILE
        self.prepare_info: dict[str, Any] = (
            json.loads(prepare.read_text(encoding="utf-8")) if prepare.exists() else {}
        )

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, {len(self.entries)} cases)"

    def cases(self, split: str | None = None, modality: str | None = None) -> list[CacheEntry]:
        return [
            entry
            for entry in self.entries
            if (split is None or entry.split == split) and (modality is None or entry.modality == modality)
        ]

    def entry(self, case_id: str) -> CacheEntry:
        for entry in self.entries:
            if entry.case_id == case_id:
                return entry
        raise DataError(self.path / INDEX_FILE, f"case {case_id!r} is not in the cache")

    def _load(self, relative: str, mmap: bool) -> np.ndarray:
        path = self.path / relative
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(path, f"unreadable cached array ({error}); re-run prepare") from None

    def load_image(self, entry: CacheEntry, mmap: bool = True) -> np.ndarray:
        """float32 (Z, H, W); memory-mapped by default so reading a slice reads only that slice."""
        return self._load(entry.image_file, mmap)

    def load_label(self, entry: CacheEntry, mmap: bool = True) -> np.ndarray:
        """uint8 (Z, H, W) fedgin classes."""
        return self._load(entry.label_file, mmap)

    def case_info(self, entry: CacheEntry) -> dict[str, Any]:
        path = self.path / geometry_file(entry.case_id)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(path, f"unreadable case record ({error}); re-run prepare") from None

    def geometry(self, entry: CacheEntry) -> Geometry:
        """How to map this case's cached arrays back to the original image (see restore_label)."""
        return Geometry.from_json(self.case_info(entry)["geometry"])

    def foreground(self, entry: CacheEntry) -> np.ndarray:
        """Per-slice flags: True where the slice holds any organ voxel."""
        return np.asarray(self.case_info(entry)["foreground"], dtype=bool)


def check_arrays(root: Path, entry: CacheEntry) -> None:
    """DataError unless the entry's image (float) and label (integer) arrays are in the cache folder
    `root`, complete and of the shape its index row says."""
    shape = (entry.n_slices, entry.height, entry.width)
    for relative, kinds in ((entry.image_file, "f"), (entry.label_file, "iu")):
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise DataError(root / INDEX_FILE, f"case {entry.case_id!r}: {relative!r} is outside the cache")
        check_npy(root / relative, shape, kinds)


def row_problem(root: Path, row: dict[str, str]) -> str | None:
    """Why an index row of the cache `root` cannot be used (a bad value, a missing or damaged array), or
    None; `prepare` prepares such a case again."""
    try:
        check_arrays(root, CacheEntry.from_row(row))
    except (ValueError, DataError) as error:
        return str(error)
    return None


def check_npy(path: Path, shape: tuple[int, ...], kinds: str) -> None:
    """DataError unless `path` is a .npy file of `shape`, a dtype of one of `kinds` (numpy kind letters),
    and exactly as long as its header says; reads the header only."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                stored, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                stored, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            data_start, size = handle.tell(), os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise DataError(path, "cached array is missing (listed in index.csv); re-run prepare") from None
    except (OSError, ValueError) as error:
        raise DataError(path, f"not a readable .npy array ({error}); re-run prepare") from None
    if tuple(stored) != tuple(shape):
        raise DataError(path, f"array shape {tuple(stored)} differs from index.csv's {shape}; re-run prepare")
    if dtype.kind not in kinds or dtype.hasobject:
        raise DataError(path, f"array holds {dtype}, not the cache's type; re-run prepare")
    expected = data_start + int(np.prod(shape)) * dtype.itemsize
    if size != expected:
        problem = "truncated" if size < expected else "longer than its header says"
        raise DataError(path, f"{problem}: {size} bytes, expected {expected}; re-run prepare")


def _range(values: list[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.2f}" if np.isclose(low, high) else f"{low:.2f}-{high:.2f}"


def summarize(cache: Cache, max_voxels_per_case: int = 20_000, seed: int = 0) -> Group:
    """Printable overview: cases per domain and split (and per protocol, where the sources record one),
    spacing, organ voxels, intensity percentiles."""
    entries = cache.cases()
    splits = ("train", "val", "test")
    counts = Table(title=f"Cases in {cache.path}")
    for column in ("modality", "domain", *splits, "total", "slices"):
        counts.add_column(column, justify="left" if column in ("modality", "domain") else "right")
    groups = sorted({(entry.modality, entry.domain) for entry in entries})
    for modality, domain in groups:
        members = [entry for entry in entries if entry.domain == domain and entry.modality == modality]
        counts.add_row(
            modality,
            domain,
            *(str(sum(entry.split == split for entry in members)) for split in splits),
            str(len(members)),
            str(sum(entry.n_slices for entry in members)),
        )
    protocols = _protocol_table(entries, splits)

    geometry = Table(title="Geometry (mm, x-y-z)")
    for column in ("modality", "cached spacing x", "y", "z", "original spacing x", "y", "z", "slice size"):
        geometry.add_column(column)
    organs = Table(title="Organ voxels (cached grid)")
    organs.add_column("modality")
    for name in ORGANS:
        organs.add_column(name, justify="right")
    organs.add_column("fg slices", justify="right")
    intensity = Table(title="Intensity percentiles p1 / p50 / p99")
    for column in ("modality", "cached (normalised)", "original (median over cases)"):
        intensity.add_column(column)

    rng = np.random.default_rng(seed)
    for modality in sorted({entry.modality for entry in entries}):
        members = [entry for entry in entries if entry.modality == modality]
        geometry.add_row(
            modality,
            *(_range([entry.spacing[axis] for entry in members]) for axis in range(3)),
            *(_range([entry.original_spacing[axis] for entry in members]) for axis in range(3)),
            ", ".join(sorted({f"{entry.height}x{entry.width}" for entry in members})),
        )
        organs.add_row(
            modality,
            *(
                f"{sum(entry.organ_voxels[name] for entry in members):,} "
                f"({sum(entry.organ_voxels[name] > 0 for entry in members)}/{len(members)})"
                for name in ORGANS
            ),
            f"{sum(entry.foreground_slices for entry in members)}/{sum(entry.n_slices for entry in members)}",
        )
        # A random voxel sample per case keeps this fast on large caches (reads via memory map).
        samples = []
        for entry in members:
            flat = cache.load_image(entry).reshape(-1)
            count = min(max_voxels_per_case, flat.size)
            samples.append(np.asarray(flat[np.sort(rng.choice(flat.size, count, replace=False))]))
        cached = np.percentile(np.concatenate(samples), (1, 50, 99))
        original = np.median(np.array([entry.original_percentiles for entry in members]), axis=0)
        intensity.add_row(
            modality, " / ".join(f"{v:.2f}" for v in cached), " / ".join(f"{v:.1f}" for v in original)
        )
    legend = "classes: " + ", ".join(f"{index} {name}" for index, name in LABEL_NAMES.items())
    tables = (counts, *((protocols,) if protocols is not None else ()), geometry, organs, intensity)
    return Group(*tables, legend)


def _protocol_table(entries: list[CacheEntry], splits: tuple[str, ...]) -> Table | None:
    """Cases per (modality, domain, protocol) and split; None when no case records a protocol."""
    if not any(entry.protocol for entry in entries):
        return None
    table = Table(title="Cases per protocol")
    for column in ("modality", "domain", "protocol", *splits, "total"):
        table.add_column(column, justify="left" if column in ("modality", "domain", "protocol") else "right")
    for modality, domain, protocol in sorted({(e.modality, e.domain, e.protocol) for e in entries}):
        members = [e for e in entries if (e.modality, e.domain, e.protocol) == (modality, domain, protocol)]
        table.add_row(
            modality,
            domain,
            protocol or "- (unknown)",
            *(str(sum(entry.split == split for entry in members)) for split in splits),
            str(len(members)),
        )
    return table
