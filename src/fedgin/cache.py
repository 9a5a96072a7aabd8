"""The on-disk cache of preprocessed volumes (index.csv, cases/*.npy, cases/*.json) and its summary."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table

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


@dataclass(frozen=True)
class CacheEntry:
    """One row of index.csv, typed; paths are relative to the cache folder."""

    case_id: str
    source: str
    source_case_id: str
    modality: str
    domain: str
    split: str
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
        return cls(
            case_id=row["case_id"],
            source=row["source"],
            source_case_id=row["source_case_id"],
            modality=row["modality"],
            domain=row["domain"],
            split=row["split"],
            image_file=row["image_file"],
            label_file=row["label_file"],
            n_slices=int(row["n_slices"]),
            height=int(row["height"]),
            width=int(row["width"]),
            spacing=(float(row["spacing_x"]), float(row["spacing_y"]), float(row["spacing_z"])),
            original_shape=tuple(int(v) for v in row["original_shape"].split("x")),
            original_spacing=tuple(float(v) for v in row["original_spacing"].split("x")),
            organ_voxels={name: int(row[f"voxels_{name}"]) for name in ORGANS},
            foreground_slices=int(row["foreground_slices"]),
            original_percentiles=(
                float(row["original_p1"]),
                float(row["original_p50"]),
                float(row["original_p99"]),
            ),
            source_image=row["source_image"],
            fingerprint=row["fingerprint"],
        )


def geometry_file(case_id: str) -> str:
    return f"{CASES_DIR}/{case_id}.json"


def read_index(root: Path) -> dict[str, dict[str, str]]:
    """index.csv rows by case id ({} when there is no index yet)."""
    path = root / INDEX_FILE
    if not path.exists():
        return {}
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in INDEX_COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                path, f"cache index lacks the columns {missing}; re-run prepare into a new folder"
            )
        return {row["case_id"]: row for row in reader}


def write_index(root: Path, rows: dict[str, dict[str, Any]]) -> None:
    """Rewrite index.csv atomically (sorted by case id), so a reader never sees a partial index."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for case_id in sorted(rows):
        writer.writerow({name: rows[case_id][name] for name in INDEX_COLUMNS})
    atomic_write_text(root / INDEX_FILE, buffer.getvalue())


class Cache:
    """A prepared cache folder, opened for reading."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = self.path / INDEX_FILE
        if not index.exists():
            raise DataError(index, "no cache index here; run `fedgin prepare` into this folder first")
        self.entries = [CacheEntry.from_row(row) for row in read_index(self.path).values()]
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


def _range(values: list[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.2f}" if np.isclose(low, high) else f"{low:.2f}-{high:.2f}"


def summarize(cache: Cache, max_voxels_per_case: int = 20_000, seed: int = 0) -> Group:
    """Printable overview: cases per domain and split, spacing, organ voxels, intensity percentiles."""
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
    return Group(counts, geometry, organs, intensity, legend)
