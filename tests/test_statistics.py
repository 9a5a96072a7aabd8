"""Federated statistics (fedgin.statistics): merged sites equal the central computation, suppression,
noise, no per-case leaks, site checks and the written outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from fedgin.cache import Cache, read_index, write_index
from fedgin.config import DataSpec, StatsConfig
from fedgin.errors import DataError
from fedgin.statistics import (
    QUANTILES,
    central_statistics,
    check_sites,
    edges_from_ranges,
    group_key,
    histogram_quantiles,
    merge,
    site_ranges,
    site_statistics,
    write_outputs,
)
from fedgin.statistics.site import ALL_PROTOCOLS, FEATURES


def _sites(caches: dict[str, Path]) -> dict[str, list[DataSpec]]:
    """Two CT sites sharing one cache (2 + 2 cases) and an MRI T2 site."""
    return {
        "a": [DataSpec(cache=caches["ct"], max_cases=2)],
        "b": [DataSpec(cache=caches["ct"], skip_cases=2)],
        "c": [DataSpec(cache=caches["t2"])],
    }


def _federate(
    sites: dict[str, list[DataSpec]], config: StatsConfig, seed: int = 0
) -> tuple[dict, dict, dict]:
    """(edges, results by site, merged) as the server would compute them."""
    edges = edges_from_ranges({name: site_ranges(data, config) for name, data in sites.items()}, config)
    results = {
        name: site_statistics(data, config, edges, seed=seed + index)
        for index, (name, data) in enumerate(sites.items())
    }
    return edges, results, merge(results, edges)


def _counts_view(summary: dict[str, Any]) -> dict[str, Any]:
    """Everything in a domain summary that must be equal exactly: counts and histograms."""
    return {
        "n_cases": summary["n_cases"],
        "n_slices": summary["n_slices"],
        "splits": summary["splits"],
        "raw_missing": summary["raw_missing"],
        "labels": summary["labels"],
        "intensity": {f: (s["count"], s["histogram"]) for f, s in summary["intensity"].items() if s},
        "spacing": {kind: s["histograms"] for kind, s in summary["spacing"].items()},
        "spacing_range": {kind: s["range"] for kind, s in summary["spacing"].items()},
        "volumes": {organ: (v["histogram"], v["count"]) for organ, v in summary["volumes"].items()},
    }


def _raw_voxels(cache_path: Path) -> np.ndarray:
    cache = Cache(cache_path)
    return np.concatenate(
        [
            np.asarray(
                nib.load(cache.case_info(entry)["source_files"][0]).get_fdata(dtype=np.float32)
            ).ravel()
            for entry in cache.cases()
        ]
    )


def test_merged_sites_equal_central(caches: dict[str, Path]) -> None:
    config = StatsConfig(min_count=1, bins=50)
    sites = _sites(caches)
    edges, _results, merged = _federate(sites, config)
    pooled_data = [DataSpec(cache=caches["ct"]), DataSpec(cache=caches["t2"])]
    central = central_statistics(pooled_data, config, seed=0)
    assert central["edges"] == edges
    assert sorted(merged["pooled"]) == sorted(central["pooled"]) == ["ct", "mri_t2"]
    for domain, pooled in merged["pooled"].items():
        reference = central["pooled"][domain]
        assert _counts_view(pooled) == _counts_view(reference)
        assert pooled["n_cases"] == 4
        for feature in FEATURES:
            mine, theirs = pooled["intensity"][feature], reference["intensity"][feature]
            assert mine["mean"] == pytest.approx(theirs["mean"], rel=1e-9)
            assert mine["std"] == pytest.approx(theirs["std"], rel=1e-9)
            assert mine["quantiles"] == pytest.approx(theirs["quantiles"], rel=1e-12)
        for organ, volume in pooled["volumes"].items():
            assert volume["mean_ml"] == pytest.approx(reference["volumes"][organ]["mean_ml"], rel=1e-9)
    assert merged["sites"]["a"]["domains"]["ct"]["n_cases"] == 2
    assert set(merged["pooled"]["ct"]["sites"]) == {"a", "b"}

    # Quantiles of the raw histogram are within one bin width of the percentiles of the voxels themselves.
    raw = _raw_voxels(caches["ct"])
    raw_edges = edges["ct"]["raw"]
    width = raw_edges[1] - raw_edges[0]
    assert raw_edges[0] == pytest.approx(raw.min()) and raw_edges[-1] == pytest.approx(raw.max())
    stats = merged["pooled"]["ct"]["intensity"]["raw"]
    assert stats["count"] == raw.size
    assert stats["mean"] == pytest.approx(raw.astype(np.float64).mean(), rel=1e-9)
    for q in QUANTILES:
        assert abs(stats["quantiles"][f"p{q}"] - np.percentile(raw, q)) <= width * (1 + 1e-9)


def test_histogram_quantiles_within_one_bin() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 5000), rng.exponential(4, 3000)])
    edges = np.linspace(values.min(), values.max(), 41)
    counts = np.histogram(values, edges)[0]
    found = histogram_quantiles(counts.tolist(), edges.tolist(), QUANTILES)
    for q, value in zip(QUANTILES, found, strict=True):
        assert value is not None and abs(value - np.percentile(values, q)) <= edges[1] - edges[0]
    assert histogram_quantiles([0, 0], [0.0, 1.0, 2.0], (50,)) == [None]
    assert histogram_quantiles([0, 4, 0], [0.0, 1.0, 2.0, 3.0], (0, 50, 100)) == [1.0, 1.5, 2.0]


def _walk_counts(value: Any, path: str = "") -> list[tuple[str, int]]:
    """(path, value) of every integer in a group's result, except the number of suppressed counts."""
    if isinstance(value, dict):
        return [
            item for k, v in value.items() if k != "suppressed" for item in _walk_counts(v, f"{path}/{k}")
        ]
    if isinstance(value, list):
        return [item for index, v in enumerate(value) for item in _walk_counts(v, f"{path}[{index}]")]
    if isinstance(value, int) and not isinstance(value, bool):
        return [(path, value)]
    return []


def test_small_counts_are_suppressed(caches: dict[str, Path]) -> None:
    config = StatsConfig(min_count=3, bins=40)
    data = [DataSpec(cache=caches["ct"])]
    edges = edges_from_ranges({"site": site_ranges(data, config)}, config)
    result = site_statistics(data, config, edges, seed=0)
    assert sum(group["suppressed"] for group in result["groups"].values()) > 0
    for key, group in result["groups"].items():
        counts = _walk_counts(group)
        assert counts, key
        small = [(path, value) for path, value in counts if 0 < value < config.min_count]
        assert not small, (key, small[:5])
        if group["protocol"] == ALL_PROTOCOLS:  # the domain's group of all its cases: enough of them
            assert group["n_cases"] == len(Cache(caches["ct"]).cases()) >= config.min_count
            assert group["intensity"]["raw"]["sum"] is not None
            continue
        # Each synthetic protocol group holds fewer than min_count cases: it is sent empty.
        assert all(value == 0 for _, value in counts), key
        assert group["intensity"]["raw"]["sum"] is None
        assert group["spacing"]["original"]["range"] is None
        assert group["volumes"]["liver"]["sum"] is None
    # Voxel histograms keep their large bins.
    assert any(sum(g["intensity"]["preprocessed"]["histogram"]) > 0 for g in result["groups"].values())


def test_noise_is_reproducible(caches: dict[str, Path]) -> None:
    config = StatsConfig(min_count=1, bins=30, noise_epsilon=0.5)
    data = [DataSpec(cache=caches["t2"])]
    edges = edges_from_ranges({"site": site_ranges(data, config)}, config)
    first = site_statistics(data, config, edges, seed=7)
    again = site_statistics(data, config, edges, seed=7)
    other = site_statistics(data, config, edges, seed=8)
    assert first == again
    assert first != other
    exact = site_statistics(data, config.model_copy(update={"noise_epsilon": None}), edges, seed=7)
    assert first != exact
    assert all(value >= 0 for group in first["groups"].values() for _, value in _walk_counts(group))
    pooled = merge({"site": first}, edges)["pooled"]["mri_t2"]
    assert pooled["intensity"]["raw"]["quantiles"]["p50"] is not None


def test_nothing_per_case_leaks(caches: dict[str, Path]) -> None:
    config = StatsConfig(min_count=1, bins=20)
    sites = _sites(caches)
    ranges = {name: site_ranges(data, config) for name, data in sites.items()}
    _edges, results, merged = _federate(sites, config)
    text = json.dumps([ranges, results, merged])
    forbidden = {str(caches["ct"]), str(caches["t2"]), "cases/", ".nii", ".npy"}
    for path in caches.values():
        cache = Cache(path)
        for entry in cache.cases():
            forbidden |= {entry.case_id, entry.source_case_id, entry.image_file, entry.label_file}
            forbidden |= set(cache.case_info(entry)["source_files"])
    leaked = sorted(word for word in forbidden if word in text)
    assert not leaked
    # The group keys are what is meant to be seen.
    entry = Cache(caches["ct"]).cases()[0]
    assert group_key(entry) in results["a"]["groups"] or group_key(entry) in results["b"]["groups"]


def test_missing_raw_files_are_counted(caches: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "no_raw"
    shutil.copytree(caches["t2"], copy)
    cache = Cache(copy)
    for entry in cache.cases():
        record = copy / "cases" / f"{entry.case_id}.json"
        info = json.loads(record.read_text())
        info["source_files"] = [str(tmp_path / "gone" / Path(p).name) for p in info["source_files"]]
        record.write_text(json.dumps(info))
    config = StatsConfig(min_count=1, bins=20)
    data = [DataSpec(cache=copy)]
    ranges = site_ranges(data, config)
    assert all(group["raw"] is None for group in ranges["groups"].values())
    edges = edges_from_ranges({"site": ranges}, config)
    assert set(edges["mri_t2"]) == {"preprocessed"}
    result = site_statistics(data, config, edges, seed=0)
    merged = merge({"site": result}, edges)["pooled"]["mri_t2"]
    assert merged["raw_missing"] == merged["n_cases"] == 4
    assert merged["intensity"]["raw"] is None and merged["labels"]["raw"] == {}
    # An existing file that cannot be read is an error naming it, not a missing file.
    (tmp_path / "gone").mkdir()
    bad = tmp_path / "gone" / Path(info["source_files"][0]).name
    bad.write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        site_ranges(data, config)


def _odd_copy(source: Path, out: Path) -> Path:
    """A cache copy prepared "with another label map" (liver and spleen swapped) and a quarter of the
    original voxel spacing."""
    shutil.copytree(source, out)
    rows = read_index(out)
    for row in rows.values():
        row["voxels_liver"], row["voxels_spleen"] = row["voxels_spleen"], row["voxels_liver"]
        row["original_spacing"] = "x".join(f"{float(v) / 4:g}" for v in row["original_spacing"].split("x"))
        label_path = out / row["label_file"]
        label = np.load(label_path)
        swapped = label.copy()
        swapped[label == 1], swapped[label == 3] = 3, 1
        np.save(label_path, swapped)
    write_index(out, rows)
    return out


def test_check_sites(caches: dict[str, Path], tmp_path: Path) -> None:
    config = StatsConfig(min_count=1, bins=20)
    alike = _sites(caches)
    _, _, merged = _federate(alike, config)
    assert check_sites(merged) == []

    odd = _odd_copy(caches["ct"], tmp_path / "odd")
    _, _, merged = _federate({**alike, "odd": [DataSpec(cache=odd, max_cases=1)]}, config)
    warnings = check_sites(merged)
    assert warnings and all(w.startswith("site odd, ct:") for w in warnings), warnings
    assert any("spleen median" in w and "another label map?" in w for w in warnings), warnings
    assert any("liver median" in w for w in warnings), warnings
    assert any("original spacing x" in w for w in warnings), warnings
    assert not any("mri_t2" in w for w in warnings)  # one site only: nothing to compare

    # A label value no other site has, and an organ absent at one site only (built into the merged dict).
    _, _, merged = _federate(alike, config)
    site_b = merged["sites"]["b"]["domains"]["ct"]
    site_b["labels"]["raw"]["7"] = 2
    site_b["volumes"]["gallbladder"]["histogram"][0] = site_b["n_cases"]  # every case in the 0 mL bin
    warnings = check_sites(merged)
    assert any(w.startswith("site b, ct: raw label value 7 in 2 cases") for w in warnings), warnings
    assert any(w.startswith("site b, ct: no gallbladder in any of 2 cases") for w in warnings), warnings


def test_write_outputs(caches: dict[str, Path], tmp_path: Path) -> None:
    config = StatsConfig(min_count=1, bins=30)
    _, _, merged = _federate(_sites(caches), config)
    warnings = ["site b, ct: something"]
    written = write_outputs(tmp_path / "out", merged, config, warnings)
    names = {path.name for path in written}
    assert names == {
        "stats.json",
        "stats.md",
        "intensity_histograms.png",
        "intensity_histograms_protocols.png",
        "organ_volumes.png",
    }
    for path in written:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["warnings"] == warnings and saved["config"]["min_count"] == 1
    assert saved["pooled"]["ct"]["n_cases"] == 4
    markdown = (tmp_path / "out" / "stats.md").read_text()
    assert "## ct" in markdown and "## mri_t2" in markdown and "site b, ct: something" in markdown


def test_edges_from_ranges() -> None:
    config = StatsConfig(bins=4)
    ranges = {
        "one": {"groups": {"ct/ct/-": {"raw": [0.0, 2.0], "preprocessed": [1.0, 1.0]}}},
        "two": {
            "groups": {
                "ct/ct/p": {"raw": [-2.0, 1.0], "preprocessed": [1.0, 1.0]},
                "mri/mri_t2/-": {"raw": None, "preprocessed": [0.0, 4.0]},
            }
        },
    }
    edges = edges_from_ranges(ranges, config)
    assert edges["ct"]["raw"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert edges["ct"]["preprocessed"] == [0.5, 0.75, 1.0, 1.25, 1.5]  # degenerate: widened by 0.5
    assert set(edges["mri_t2"]) == {"preprocessed"}
