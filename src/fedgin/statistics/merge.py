"""The federation's view of the sites' statistics: per site per group, per site per domain, pooled."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedgin.config import DataSpec, StatsConfig
from fedgin.labels import ORGANS
from fedgin.statistics.site import (
    ALL_PROTOCOLS,
    FEATURES,
    SPACINGS,
    edges_from_ranges,
    site_ranges,
    site_statistics,
)

#: Percentiles reported for every histogram.
QUANTILES: tuple[int, ...] = (1, 5, 25, 50, 75, 95, 99)


def histogram_quantiles(
    counts: Sequence[float], edges: Sequence[float], qs: Sequence[float] = QUANTILES
) -> list[float | None]:
    """Percentiles `qs` (0-100) of the values behind a histogram, interpolated linearly inside the bin
    where the cumulative count crosses q% of the total.

    The histogram only says which bin a value fell in, so the result is off from the percentile of the
    values themselves by at most one bin width (values clipped into the first or last bin aside). None for
    every q when the histogram is empty.
    """
    counts_array = np.asarray(counts, dtype=np.float64)
    edges_array = np.asarray(edges, dtype=np.float64)
    total = float(counts_array.sum())
    if total <= 0:
        return [None for _ in qs]
    cumulative = np.concatenate([[0.0], np.cumsum(counts_array)])
    out: list[float | None] = []
    for q in qs:
        target = min(max(float(q), 0.0), 100.0) / 100.0 * total
        # The first bin whose cumulative count reaches the target (skipping empty bins).
        index = int(np.searchsorted(cumulative[1:], target, side="left"))
        index = min(index, len(counts_array) - 1)
        while counts_array[index] == 0 and index < len(counts_array) - 1:
            index += 1
        inside = (target - cumulative[index]) / counts_array[index] if counts_array[index] > 0 else 0.0
        low, high = edges_array[index], edges_array[index + 1]
        out.append(float(low + min(max(inside, 0.0), 1.0) * (high - low)))
    return out


def _quantile_dict(counts: Sequence[float], edges: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": v for q, v in zip(QUANTILES, histogram_quantiles(counts, edges), strict=True)}


def _mean_std(count: float, total: float | None, total_sq: float | None) -> tuple[float | None, float | None]:
    if total is None or total_sq is None or count <= 0:
        return None, None
    mean = total / count
    variance = max(total_sq / count - mean * mean, 0.0)
    return mean, math.sqrt(variance)


def _add_lists(a: list[float] | None, b: Sequence[float]) -> list[float]:
    return list(b) if a is None else [x + y for x, y in zip(a, b, strict=True)]


def _add_counts(a: dict[str, int], b: Mapping[str, int]) -> None:
    for key, value in b.items():
        a[key] = a.get(key, 0) + value


def _moments(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and sums of several groups added: "sum"/"sum_sq" None when any group withheld its sums,
    mean/std from the groups that sent them (None when none did), "groups_withheld" how many did not."""
    count, sent_count, total, total_sq, withheld = 0, 0, 0.0, 0.0, 0
    for part in parts:
        count += part["count"]
        if part["sum"] is None or part["sum_sq"] is None:
            withheld += 1
        else:
            sent_count += part["count"]
            total += part["sum"]
            total_sq += part["sum_sq"]
    mean, std = _mean_std(sent_count, total, total_sq) if withheld < len(parts) else (None, None)
    return {
        "count": count,
        "sum": total if withheld == 0 else None,
        "sum_sq": total_sq if withheld == 0 else None,
        "mean": mean,
        "std": std,
        "groups_withheld": withheld,
    }


def _summarise(
    groups: Sequence[Mapping[str, Any]], edges: Mapping[str, Sequence[float]], spacing_edges, volume_edges
) -> dict[str, Any]:
    """Groups of one domain (at one site or at many) summed: counts and histograms added, sums added
    (mean/std from the groups that sent them), ranges widened, quantiles from the summed histograms."""
    out: dict[str, Any] = {
        "groups": len(groups),
        "n_cases": 0,
        "n_slices": 0,
        "splits": {},
        "raw_missing": 0,
        "suppressed": 0,
    }
    for group in groups:
        for name in ("n_cases", "n_slices", "raw_missing", "suppressed"):
            out[name] += group[name]
        _add_counts(out["splits"], group["splits"])

    intensity: dict[str, Any] = {}
    for feature in FEATURES:
        sent = [g["intensity"][feature] for g in groups if g["intensity"].get(feature) is not None]
        if not sent or feature not in edges:
            intensity[feature] = None
            continue
        histogram = None
        for stats in sent:
            histogram = _add_lists(histogram, stats["histogram"])
        intensity[feature] = {
            **_moments(sent),
            "histogram": histogram,
            "quantiles": _quantile_dict(histogram, edges[feature]),
        }
    out["intensity"] = intensity

    spacing: dict[str, Any] = {}
    for kind in SPACINGS:
        histograms: list[list[float] | None] = [None, None, None]
        ranges: list[list[float]] | None = None
        for group in groups:
            for axis in range(3):
                histograms[axis] = _add_lists(histograms[axis], group["spacing"][kind]["histograms"][axis])
            sent_range = group["spacing"][kind]["range"]
            if sent_range is not None:
                ranges = (
                    [list(r) for r in sent_range]
                    if ranges is None
                    else [[min(a[0], b[0]), max(a[1], b[1])] for a, b in zip(ranges, sent_range, strict=True)]
                )
        spacing[kind] = {
            "histograms": histograms,
            "range": ranges,
            "quantiles": [_quantile_dict(h or [], spacing_edges) for h in histograms],
        }
    out["spacing"] = spacing

    volumes: dict[str, Any] = {}
    for organ in ORGANS:
        parts = [group["volumes"][organ] for group in groups]
        histogram = None
        for volume in parts:
            histogram = _add_lists(histogram, volume["histogram"])
        histogram = histogram or [0] * (len(volume_edges) - 1)
        moments = _moments(parts)
        volumes[organ] = {
            "histogram": histogram,
            **moments,
            "mean_ml": moments["mean"],
            "std_ml": moments["std"],
            "absent_cases": histogram[0],
            "present_cases": sum(histogram[1:]),
            # Quantiles of the present volumes only (the absent bin [0, low) is not a volume range).
            "quantiles": _quantile_dict(histogram[1:], volume_edges[1:]),
        }
    out["volumes"] = volumes

    labels: dict[str, dict[str, int]] = {"cached": {}, "raw": {}}
    for group in groups:
        for kind in labels:
            _add_counts(labels[kind], group["labels"][kind])
    out["labels"] = {
        kind: dict(sorted(values.items(), key=lambda kv: int(kv[0]))) for kind, values in labels.items()
    }
    return out


def _by_domain(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """A site's groups per domain: its all-protocols group where it sent one (exact totals, however its
    protocol groups were suppressed), else its protocol groups (summed by `_summarise`)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    whole = {group["domain"] for group in groups.values() if group["protocol"] == ALL_PROTOCOLS}
    for key in sorted(groups):
        group = groups[key]
        if (group["protocol"] == ALL_PROTOCOLS) == (group["domain"] in whole):
            out.setdefault(group["domain"], []).append(group)
    return out


def merge(
    site_results: Mapping[str, Mapping[str, Any]], edges: Mapping[str, Mapping[str, Sequence[float]]]
) -> dict:
    """The federation's view of `site_results` ({site name: site_statistics result}) on `edges`.

    {"edges", "spacing_edges", "volume_edges", "sites": {site: {"groups": as sent, "domains": {domain:
    summary}}}, "pooled": {domain: summary}}; a summary holds counts and histograms summed, mean/std from
    the sums (None where every group withheld them), quantiles QUANTILES of every histogram
    (`histogram_quantiles`) and spacing ranges as the min of mins and max of maxes.
    """
    if not site_results:
        return {"edges": dict(edges), "spacing_edges": [], "volume_edges": [], "sites": {}, "pooled": {}}
    first = next(iter(site_results.values()))
    spacing_edges, volume_edges = first["spacing_edges"], first["volume_edges"]
    for name, result in site_results.items():
        if result["spacing_edges"] != spacing_edges or result["volume_edges"] != volume_edges:
            raise ValueError(f"site {name!r} used other spacing or volume edges than the other sites")
    sites: dict[str, Any] = {}
    pooled_groups: dict[str, list[Mapping[str, Any]]] = {}
    for name in sorted(site_results):
        groups = site_results[name]["groups"]
        domains = _by_domain(groups)
        sites[name] = {
            "groups": {key: groups[key] for key in sorted(groups)},
            "domains": {
                domain: _summarise(members, edges.get(domain, {}), spacing_edges, volume_edges)
                for domain, members in domains.items()
            },
        }
        for domain, members in domains.items():
            pooled_groups.setdefault(domain, []).extend(members)
    pooled = {
        domain: _summarise(members, edges.get(domain, {}), spacing_edges, volume_edges)
        | {"sites": sorted(name for name in sites if domain in sites[name]["domains"])}
        for domain, members in sorted(pooled_groups.items())
    }
    return {
        "edges": {domain: dict(features) for domain, features in edges.items()},
        "spacing_edges": spacing_edges,
        "volume_edges": volume_edges,
        "sites": sites,
        "pooled": pooled,
    }


def central_statistics(data: Sequence[DataSpec], config: StatsConfig, *, seed: int) -> dict:
    """The same statistics on all of `data` as ONE site ("central"): ranges -> edges -> statistics ->
    merge. For tests and for checking a federation's result on pooled data."""
    edges = edges_from_ranges({"central": site_ranges(data, config)}, config)
    return merge({"central": site_statistics(data, config, edges, seed=seed)}, edges)
