"""What one site computes on its own caches for the federated statistics, and how it protects it.

Two passes. `site_ranges` sends the [min, max] of the voxel intensities per group (modality/domain/
protocol); the server turns the ranges of all sites into shared histogram edges (`edges_from_ranges`).
`site_statistics` then sends, per group, counts, sums and histograms on those edges: intensities (raw
NIfTI and preprocessed cache), voxel spacing, organ volumes and the label values seen.

Everything returned is plain JSON data without case ids, file names or per-case values. Before it is
returned, every count with 0 < count < min_count is set to 0 (and counted in "suppressed"), optional
Laplace noise is added to every count, and sums of a group with fewer than min_count cases are withheld.
See docs/statistics.md for what this does and does not protect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedgin.cache import Cache, CacheEntry
from fedgin.config import DataSpec, StatsConfig
from fedgin.labels import ORGANS
from fedgin.nifti import read_image, read_label
from fedgin.training.data import select_cases

FEATURES: tuple[str, ...] = ("raw", "preprocessed")
SPACINGS: tuple[str, ...] = ("original", "cached")
#: Version of the result layout; merge refuses nothing but reports it.
FORMAT_VERSION = 1


#: The protocol of the group that holds all of a domain's cases, whatever their protocol.
ALL_PROTOCOLS = "*"


def domain_key(entry: CacheEntry) -> str:
    """The key of the group of all the cases of the entry's domain."""
    return f"{entry.modality}/{entry.domain}/{ALL_PROTOCOLS}"


def group_key(entry: CacheEntry) -> str:
    """The group a case is described in: modality/domain/protocol ("-" for an unknown protocol)."""
    return f"{entry.modality}/{entry.domain}/{entry.protocol or '-'}"


def spacing_edges(config: StatsConfig) -> list[float]:
    """The fixed spacing histogram edges (mm), shared by every site."""
    low, high = config.spacing_range_mm
    return [float(v) for v in np.linspace(low, high, config.spacing_bins + 1)]


def volume_edges(config: StatsConfig) -> list[float]:
    """Organ volume histogram edges (mL): [0, low, ... log-spaced ..., high]; the first bin [0, low) holds
    exactly the cases where the organ is absent (0 mL), present volumes are clipped into [low, high]."""
    low, high = config.volume_range_ml
    return [0.0, *(float(v) for v in np.geomspace(low, high, config.volume_bins + 1))]


def _cases(data: Sequence[DataSpec], config: StatsConfig) -> list[tuple[Cache, CacheEntry]]:
    return [case for spec in data for case in select_cases(spec, config.splits)]


def _source_files(cache: Cache, entry: CacheEntry) -> tuple[Path | None, list[Path]]:
    """(raw image path if the file exists, label paths that exist)."""
    files = [Path(name) for name in cache.case_info(entry).get("source_files", [])]
    if not files:
        return None, []
    image = files[0] if files[0].exists() else None
    return image, [path for path in files[1:] if path.exists()]


def _raw_image(cache: Cache, entry: CacheEntry) -> np.ndarray | None:
    """The raw voxel intensities of a case, or None when its source image is not at this site.

    A source file that exists but cannot be read raises DataError naming it."""
    image, _ = _source_files(cache, entry)
    if image is None:
        return None
    return read_image(image)[1]


def _widen(current: list[float] | None, values: np.ndarray) -> list[float]:
    low, high = float(np.min(values)), float(np.max(values))
    if current is None:
        return [low, high]
    return [min(current[0], low), max(current[1], high)]


def site_ranges(data: Sequence[DataSpec], config: StatsConfig) -> dict[str, Any]:
    """Pass 1: {"groups": {key: {"raw": [min, max] | None, "preprocessed": [min, max]}}} of the voxel
    intensities of the site's cases ("raw": None when no raw source image is readable at the site)."""
    groups: dict[str, dict[str, list[float] | None]] = {}
    for cache, entry in _cases(data, config):
        group = groups.setdefault(group_key(entry), {"raw": None, "preprocessed": None})
        group["preprocessed"] = _widen(group["preprocessed"], np.asarray(cache.load_image(entry)))
        raw = _raw_image(cache, entry)
        if raw is not None:
            group["raw"] = _widen(group["raw"], raw)
    return {"groups": dict(sorted(groups.items()))}


def edges_from_ranges(ranges_by_site: Mapping[str, Mapping[str, Any]], config: StatsConfig) -> dict:
    """Shared intensity edges: {domain: {feature: np.linspace(global min, global max, bins + 1)}}.

    The range of a domain is taken over every site and every group (protocol) of that domain; a degenerate
    range (min == max) is widened by 0.5 each side; a feature without a range at any site is left out."""
    bounds: dict[str, dict[str, list[float]]] = {}
    for result in ranges_by_site.values():
        for key, group in result["groups"].items():
            domain = key.split("/")[1]
            for feature in FEATURES:
                value = group.get(feature)
                if value is None:
                    continue
                current = bounds.setdefault(domain, {}).get(feature)
                bounds[domain][feature] = (
                    [float(value[0]), float(value[1])]
                    if current is None
                    else [min(current[0], float(value[0])), max(current[1], float(value[1]))]
                )
    edges: dict[str, dict[str, list[float]]] = {}
    for domain in sorted(bounds):
        for feature, (low, high) in bounds[domain].items():
            if high <= low:
                low, high = low - 0.5, high + 0.5
            edges.setdefault(domain, {})[feature] = [
                float(v) for v in np.linspace(low, high, config.bins + 1)
            ]
    return edges


def _histogram(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts on `edges`; values outside the edges are clipped into the first or last bin."""
    edges_array = np.asarray(edges, dtype=np.float64)
    clipped = np.clip(np.asarray(values, dtype=np.float64), edges_array[0], edges_array[-1])
    return np.histogram(clipped, bins=edges_array)[0].astype(np.int64)


class _Intensity:
    def __init__(self, edges: Sequence[float]) -> None:
        self.edges = edges
        self.count = 0
        self.sum = 0.0
        self.sum_sq = 0.0
        self.histogram = np.zeros(len(edges) - 1, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        self.count += int(values.size)
        self.sum += float(values.sum())
        self.sum_sq += float(np.square(values).sum())
        self.histogram += _histogram(values, self.edges)

    def result(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.sum,
            "sum_sq": self.sum_sq,
            "histogram": self.histogram.tolist(),
        }


@dataclass
class _CaseArrays:
    """What a case adds to its groups, read once: the preprocessed and raw image (None: no raw file), the
    cached label values and the raw label values (every label source file of the case)."""

    image: np.ndarray
    raw: np.ndarray | None
    cached_labels: set[int]
    raw_labels: set[int]

    @classmethod
    def read(cls, cache: Cache, entry: CacheEntry, with_raw: bool) -> _CaseArrays:
        image_file, label_files = _source_files(cache, entry)
        raw_labels: set[int] = set()
        for path in label_files:
            raw_labels.update(int(v) for v in np.unique(read_label(path)[1]))
        raw = None
        if image_file is not None:
            raw = read_image(image_file)[1] if with_raw else np.empty(0, np.float32)
        return cls(
            image=np.asarray(cache.load_image(entry)),
            raw=raw,
            cached_labels={int(v) for v in np.unique(np.asarray(cache.load_label(entry)))},
            raw_labels=raw_labels,
        )


class _Group:
    """The running statistics of one group at one site (per-case values never leave this object)."""

    def __init__(self, key: str, domain_edges: Mapping[str, Sequence[float]], config: StatsConfig) -> None:
        self.modality, self.domain, protocol = key.split("/", 2)
        self.protocol = "" if protocol == "-" else protocol
        self.n_cases = 0
        self.n_slices = 0
        self.splits = {split: 0 for split in config.splits}
        self.raw_missing = 0
        self.intensity = {
            feature: _Intensity(domain_edges[feature]) for feature in FEATURES if feature in domain_edges
        }
        self.spacing_edges = spacing_edges(config)
        self.volume_edges = volume_edges(config)
        self.spacing = {
            kind: [np.zeros(config.spacing_bins, np.int64) for _ in range(3)] for kind in SPACINGS
        }
        self.spacing_range: dict[str, list[list[float]] | None] = dict.fromkeys(SPACINGS)
        self.volumes = {organ: np.zeros(config.volume_bins + 1, np.int64) for organ in ORGANS}
        self.volume_present = dict.fromkeys(ORGANS, 0)
        self.volume_sum = dict.fromkeys(ORGANS, 0.0)
        self.volume_sum_sq = dict.fromkeys(ORGANS, 0.0)
        self.cached_labels: dict[int, int] = {}
        self.raw_labels: dict[int, int] = {}

    def add(self, entry: CacheEntry, case: _CaseArrays) -> None:
        self.n_cases += 1
        self.n_slices += entry.n_slices
        self.splits[entry.split] = self.splits.get(entry.split, 0) + 1
        if "preprocessed" in self.intensity:
            self.intensity["preprocessed"].add(case.image)
        if case.raw is None:
            self.raw_missing += 1
        elif "raw" in self.intensity:
            self.intensity["raw"].add(case.raw)
        for kind, spacing in (("original", entry.original_spacing), ("cached", entry.spacing)):
            for axis in range(3):
                self.spacing[kind][axis] += _histogram(np.array([spacing[axis]]), self.spacing_edges)
            axes = [[float(spacing[axis]), float(spacing[axis])] for axis in range(3)]
            current = self.spacing_range[kind]
            self.spacing_range[kind] = (
                axes
                if current is None
                else [[min(c[0], a[0]), max(c[1], a[1])] for c, a in zip(current, axes, strict=True)]
            )
        voxel_ml = float(np.prod(entry.spacing)) / 1000.0
        for organ in ORGANS:
            ml = entry.organ_voxels[organ] * voxel_ml
            if ml <= 0:  # absent: the first bin; present volumes are clipped into [low, high]
                self.volumes[organ][0] += 1
                continue
            self.volumes[organ][1:] += _histogram(np.array([ml]), self.volume_edges[1:])
            self.volume_present[organ] += 1
            self.volume_sum[organ] += ml
            self.volume_sum_sq[organ] += ml * ml
        for value in case.cached_labels:
            self.cached_labels[value] = self.cached_labels.get(value, 0) + 1
        for value in case.raw_labels:
            self.raw_labels[value] = self.raw_labels.get(value, 0) + 1

    def result(self, min_count: int) -> dict[str, Any]:
        """The group's aggregates, before protection; sums and ranges withheld below min_count cases."""
        enough = self.n_cases >= min_count
        intensity: dict[str, Any] = {}
        for feature in FEATURES:
            if feature not in self.intensity:
                intensity[feature] = None
                continue
            stats = self.intensity[feature].result()
            if not enough:
                stats["sum"] = stats["sum_sq"] = None
            intensity[feature] = stats
        return {
            "modality": self.modality,
            "domain": self.domain,
            "protocol": self.protocol,
            "n_cases": self.n_cases,
            "n_slices": self.n_slices,
            "splits": dict(self.splits),
            "raw_missing": self.raw_missing,
            "intensity": intensity,
            "spacing": {
                kind: {
                    "histograms": [h.tolist() for h in self.spacing[kind]],
                    "range": self.spacing_range[kind] if enough else None,
                }
                for kind in SPACINGS
            },
            "volumes": {
                organ: {
                    "histogram": self.volumes[organ].tolist(),
                    "count": self.volume_present[organ],
                    "sum": self.volume_sum[organ] if enough else None,
                    "sum_sq": self.volume_sum_sq[organ] if enough else None,
                }
                for organ in ORGANS
            },
            "labels": {
                "cached": {str(v): n for v, n in sorted(self.cached_labels.items())},
                "raw": {str(v): n for v, n in sorted(self.raw_labels.items())},
            },
            "suppressed": 0,
        }


class _Protector:
    """Suppression of small counts and Laplace noise, applied to every count of a group in a fixed order
    (so the same seed gives the same noise)."""

    def __init__(self, min_count: int, noise_epsilon: float | None, rng: np.random.Generator) -> None:
        self.min_count = min_count
        self.noise_epsilon = noise_epsilon
        self.rng = rng
        self.suppressed = 0
        self.withhold_all = False

    def count(self, value: int) -> int:
        if self.withhold_all and value > 0:  # a group of fewer than min_count cases: nothing of it
            self.suppressed += 1
            return 0
        value = self._suppress(int(value))
        if self.noise_epsilon is not None:
            noisy = value + self.rng.laplace(0.0, 1.0 / self.noise_epsilon)
            # Post-processing of the noisy count: rounding, clipping at 0 and suppressing again keep the
            # promise that no sent count lies in 0 < c < min_count.
            value = self._suppress(max(0, int(np.rint(noisy))))
        return value

    def _suppress(self, value: int) -> int:
        if 0 < value < self.min_count:
            self.suppressed += 1
            return 0
        return value

    def counts(self, values: Sequence[int]) -> list[int]:
        return [self.count(v) for v in values]

    def group(self, group: dict[str, Any]) -> dict[str, Any]:
        self.suppressed = 0
        # Its histograms would be those of one or two patients (a rare protocol): the group is sent empty
        # (its cases still count in their domain's group).
        self.withhold_all = 0 < group["n_cases"] < self.min_count
        for name in ("n_cases", "n_slices", "raw_missing"):
            group[name] = self.count(group[name])
        group["splits"] = {split: self.count(n) for split, n in group["splits"].items()}
        for feature in FEATURES:
            stats = group["intensity"][feature]
            if stats is not None:
                stats["count"] = self.count(stats["count"])
                stats["histogram"] = self.counts(stats["histogram"])
        for kind in SPACINGS:
            spacing = group["spacing"][kind]
            spacing["histograms"] = [self.counts(h) for h in spacing["histograms"]]
        for organ in ORGANS:
            volume = group["volumes"][organ]
            volume["count"] = self.count(volume["count"])
            volume["histogram"] = self.counts(volume["histogram"])
        for kind in ("cached", "raw"):
            labels = {value: self.count(n) for value, n in group["labels"][kind].items()}
            group["labels"][kind] = {value: n for value, n in labels.items() if n > 0}
        group["suppressed"] = self.suppressed
        return group


def site_statistics(
    data: Sequence[DataSpec],
    config: StatsConfig,
    edges: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    seed: int,
) -> dict[str, Any]:
    """Pass 2: the protected aggregates of the site's cases, per group (see the module docstring).

    `edges[domain]["raw" | "preprocessed"]` are the federation's intensity bin edges; intensities outside
    them count in the first or last bin (np.clip to the range before np.histogram). A feature without
    edges for the domain is sent as None. Returns {"format": 1, "spacing_edges": [...], "volume_edges":
    [...], "min_count": .., "noise_epsilon": .., "groups": {key: {...}}}.
    """
    groups: dict[str, _Group] = {}
    for cache, entry in _cases(data, config):
        domain_edges = edges.get(entry.domain, {})
        case = _CaseArrays.read(cache, entry, with_raw="raw" in domain_edges)
        # Each case counts in its protocol's group and in its domain's (ALL_PROTOCOLS): the domain's
        # totals stay exact where a small protocol group's counts are suppressed.
        for key in (group_key(entry), domain_key(entry)):
            if key not in groups:
                groups[key] = _Group(key, domain_edges, config)
            groups[key].add(entry, case)
    protector = _Protector(config.min_count, config.noise_epsilon, np.random.default_rng(seed))
    return {
        "format": FORMAT_VERSION,
        "spacing_edges": spacing_edges(config),
        "volume_edges": volume_edges(config),
        "min_count": config.min_count,
        "noise_epsilon": config.noise_epsilon,
        "groups": {key: protector.group(groups[key].result(config.min_count)) for key in sorted(groups)},
    }
