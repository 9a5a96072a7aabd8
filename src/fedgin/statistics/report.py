"""Warnings about sites that look unlike the others, and the written outputs of `fedgin stats`:
stats.json, stats.md and the figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedgin.config import StatsConfig
from fedgin.io_utils import atomic_write_json, atomic_write_text
from fedgin.labels import ORGANS
from fedgin.statistics.merge import histogram_quantiles
from fedgin.statistics.site import ALL_PROTOCOLS

#: A site's organ median volume outside [1/VOLUME_RATIO, VOLUME_RATIO] x the others' is reported.
VOLUME_RATIO = 3.0
#: A site's original spacing median (per axis) outside [1/SPACING_RATIO, SPACING_RATIO] x the others'.
SPACING_RATIO = 2.0
AXES = ("x", "y", "z")


def _sum_histograms(histograms: Sequence[Sequence[float]]) -> list[float]:
    return [float(v) for v in np.sum(np.asarray(histograms, dtype=np.float64), axis=0)]


def _median(counts: Sequence[float], edges: Sequence[float]) -> float | None:
    return histogram_quantiles(counts, edges, (50,))[0]


def _domain_sites(merged: Mapping[str, Any]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """{domain: {site: that site's domain summary}} for sites with cases in the domain."""
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    for site, view in merged["sites"].items():
        for domain, summary in view["domains"].items():
            if summary["n_cases"] > 0:
                out.setdefault(domain, {})[site] = summary
    return out


def check_sites(merged: Mapping[str, Any]) -> list[str]:
    """One-line warnings where a site looks unlike the other sites of the same domain (only for domains
    that at least two sites have): organ median volumes (< 1/3 or > 3x the others'), label values no other
    site has, organs present in most cases elsewhere but in none here, original spacing medians outside
    [1/2, 2]x the others'. The "others" of a site are the other sites of the domain pooled (histograms
    summed). Noise (noise_epsilon) can make a rare count appear or vanish, so treat warnings as prompts.
    """
    volume_edges = merged["volume_edges"][1:]
    spacing_edges = merged["spacing_edges"]
    warnings: list[str] = []
    for domain, sites in sorted(_domain_sites(merged).items()):
        if len(sites) < 2:
            continue
        for site, summary in sorted(sites.items()):
            others = [s for name, s in sites.items() if name != site]
            prefix = f"site {site}, {domain}"
            for organ in ORGANS:
                mine = _median(summary["volumes"][organ]["histogram"][1:], volume_edges)
                theirs = _median(
                    _sum_histograms([o["volumes"][organ]["histogram"][1:] for o in others]), volume_edges
                )
                if mine is not None and theirs is not None and theirs > 0:
                    ratio = mine / theirs
                    if ratio < 1 / VOLUME_RATIO or ratio > VOLUME_RATIO:
                        warnings.append(
                            f"{prefix}: {organ} median {mine:.0f} mL, {ratio:.2f}x the other sites' "
                            f"{theirs:.0f} mL; another label map?"
                        )
                # Absent = counted in the 0 mL bin. Presence is not read from the other bins, whose small
                # counts suppression may have zeroed.
                other_cases = sum(o["n_cases"] for o in others)
                other_present = other_cases - sum(o["volumes"][organ]["histogram"][0] for o in others)
                absent_here = summary["volumes"][organ]["histogram"][0]
                if (
                    summary["n_cases"] > 0
                    and absent_here >= summary["n_cases"]
                    and other_present > other_cases / 2
                ):
                    warnings.append(
                        f"{prefix}: no {organ} in any of {summary['n_cases']} cases, but in "
                        f"{other_present} of {other_cases} at the other sites; labels missing or mapped away?"
                    )
            for kind in ("cached", "raw"):
                seen_elsewhere = {v for o in others for v, n in o["labels"][kind].items() if n > 0}
                for value, count in summary["labels"][kind].items():
                    if count > 0 and value not in seen_elsewhere:
                        warnings.append(
                            f"{prefix}: {kind} label value {value} in {count} cases, at no other site; "
                            "another label map?"
                        )
            for axis, name in enumerate(AXES):
                mine = _median(summary["spacing"]["original"]["histograms"][axis], spacing_edges)
                theirs = _median(
                    _sum_histograms([o["spacing"]["original"]["histograms"][axis] for o in others]),
                    spacing_edges,
                )
                if mine is None or theirs is None or theirs <= 0:
                    continue
                ratio = mine / theirs
                if ratio < 1 / SPACING_RATIO or ratio > SPACING_RATIO:
                    warnings.append(
                        f"{prefix}: original spacing {name} median {mine:.2f} mm, {ratio:.2f}x the other "
                        f"sites' {theirs:.2f} mm"
                    )
    return warnings


# -- outputs ---------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _intensity_cell(summary: Mapping[str, Any], feature: str, digits: int) -> str:
    stats = summary["intensity"].get(feature)
    if stats is None:
        return "-"
    q = stats["quantiles"]
    return " / ".join(_fmt(q[k], digits) for k in ("p1", "p50", "p99"))


def _spacing_cell(summary: Mapping[str, Any]) -> str:
    ranges = summary["spacing"]["original"]["range"]
    if ranges is None:
        return "withheld"
    return " x ".join(
        f"{low:.2f}" if np.isclose(low, high) else f"{low:.2f}-{high:.2f}" for low, high in ranges
    )


def _markdown(merged: Mapping[str, Any], config: StatsConfig, warnings: Sequence[str]) -> str:
    suppression = (
        f"counts below {config.min_count} were sent as 0"
        if config.min_count > 1
        else "no counts were suppressed (min_count 1)"
    )
    noise = (
        f"Laplace noise (epsilon {config.noise_epsilon:g}) was added to every count"
        if config.noise_epsilon
        else "no noise was added"
    )
    lines = [
        "# Federated data statistics",
        "",
        f"Sites: {', '.join(merged['sites']) or '-'}. Only aggregates left the sites; {suppression}; "
        f"{noise}. "
        "Percentiles and medians come from histograms (accurate to one bin); volumes are medians of the "
        "cases where the organ is present.",
        "",
    ]
    organ_headers = " | ".join(f"{organ} mL" for organ in ORGANS)
    for domain, pooled in merged["pooled"].items():
        lines += [
            f"## {domain}",
            "",
            "| site | cases | slices | original spacing mm (x, y, z) | raw p1 / p50 / p99 | "
            f"preprocessed p1 / p50 / p99 | {organ_headers} |",
            "|" + "---|" * (6 + len(ORGANS)),
        ]
        rows = [
            (site, view["domains"][domain])
            for site, view in merged["sites"].items()
            if domain in view["domains"]
        ]
        rows.append(("**pooled**", pooled))
        for site, summary in rows:
            organs = " | ".join(_fmt(summary["volumes"][organ]["quantiles"]["p50"], 0) for organ in ORGANS)
            lines.append(
                f"| {site} | {summary['n_cases']} | {summary['n_slices']} | {_spacing_cell(summary)} | "
                f"{_intensity_cell(summary, 'raw', 1)} | {_intensity_cell(summary, 'preprocessed', 2)} | "
                f"{organs} |"
            )
        lines.append("")
    lines += ["## Warnings", ""]
    lines += [f"- {warning}" for warning in warnings] or ["None: the sites of each domain look alike."]
    return "\n".join(lines) + "\n"


def _density(counts: Sequence[float], edges: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    counts_array = np.asarray(counts, dtype=np.float64)
    edges_array = np.asarray(edges, dtype=np.float64)
    total = counts_array.sum()
    if total <= 0:
        return None
    centres = (edges_array[:-1] + edges_array[1:]) / 2
    return centres, counts_array / (total * np.diff(edges_array))


def _intensity_figure(
    merged: Mapping[str, Any], out: Path, lines: Mapping[str, Mapping[str, Mapping[str, Any]]], title: str
) -> Path:
    """Rows raw / preprocessed, columns domains; `lines[domain][label]` = a summary or group."""
    from fedgin.figures import _figure, _save, _tab10

    domains = sorted(lines)
    figure = _figure(6.6 * max(1, len(domains)), 6.4)
    axes = figure.subplots(2, max(1, len(domains)), squeeze=False)
    colours = _tab10()
    for column, domain in enumerate(domains):
        for row, feature in enumerate(("raw", "preprocessed")):
            axis = axes[row, column]
            edges = merged["edges"].get(domain, {}).get(feature)
            drawn = False
            for index, (label, summary) in enumerate(sorted(lines[domain].items())):
                stats = summary["intensity"].get(feature)
                if edges is None or stats is None:
                    continue
                curve = _density(stats["histogram"], edges)
                if curve is not None:
                    axis.plot(*curve, color=colours(index % 10), lw=1.2, label=label)
                    drawn = True
            axis.set_title(f"{domain}: {feature}", fontsize=9)
            raw_unit = "HU" if domain == "ct" else "scanner units"
            axis.set_xlabel(f"raw intensity ({raw_unit})" if feature == "raw" else "normalised intensity")
            axis.set_ylabel("density (1 / intensity unit), log")
            if drawn:
                # Log density: the air / background peak would flatten the tissue contrasts otherwise;
                # x from the pooled p1 to p99 (padded): the sparse tails beyond carry little.
                axis.set_yscale("log")
                pooled = merged["pooled"].get(domain, {}).get("intensity", {}).get(feature) or {}
                low, high = (
                    (pooled.get("quantiles") or {}).get("p1"),
                    (pooled.get("quantiles") or {}).get("p99"),
                )
                if low is not None and high is not None and high > low:
                    pad = 0.1 * (high - low)
                    axis.set_xlim(low - pad, high + pad)
                axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
            else:
                axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, out)


def _volume_figure(merged: Mapping[str, Any], out: Path) -> Path:
    """Box plots of organ volumes: one panel per organ, one box per site and domain side by side, coloured
    by domain (from the histogram quantiles: median, p25-p75 box, p5-p95 whiskers)."""
    from fedgin.figures import _figure, _save, _tab10

    boxes = [
        (f"{site}\n{domain}", domain, summary)
        for site, view in merged["sites"].items()
        for domain, summary in sorted(view["domains"].items())
    ]
    domains = sorted({domain for _, domain, _ in boxes})
    colours = {domain: _tab10()(index % 10) for index, domain in enumerate(domains)}
    figure = _figure(max(2.6, 0.55 * len(boxes) + 0.8) * len(ORGANS) / 1.6, 3.6)
    axes = figure.subplots(1, len(ORGANS), squeeze=False)[0]
    for axis, organ in zip(axes, ORGANS, strict=True):
        stats, kept = [], []
        for label, domain, summary in boxes:
            q = summary["volumes"][organ]["quantiles"]
            if q["p50"] is None:
                continue
            stats.append(
                {"label": label, "med": q["p50"], "q1": q["p25"], "q3": q["p75"], "whislo": q["p5"],
                 "whishi": q["p95"], "fliers": []}
            )  # fmt: skip
            kept.append(domain)
        if stats:
            drawn = axis.bxp(stats, showfliers=False, patch_artist=True)
            for patch, domain in zip(drawn["boxes"], kept, strict=True):
                patch.set_facecolor(colours[domain])
                patch.set_alpha(0.6)
            axis.set_yscale("log")
            axis.tick_params(axis="x", labelrotation=90, labelsize=7)
        else:
            axis.text(0.5, 0.5, "absent", ha="center", va="center", transform=axis.transAxes)
        axis.set_title(organ, fontsize=9)
    axes[0].set_ylabel("volume (mL)")
    figure.suptitle("Organ volumes per site (box p25-p75, whiskers p5-p95)", fontsize=10)
    figure.tight_layout()
    return _save(figure, out)


def write_outputs(
    out_dir: str | Path, merged: Mapping[str, Any], config: StatsConfig, warnings: Sequence[str]
) -> list[Path]:
    """stats.json (merged, warnings, config), stats.md, intensity_histograms.png, organ_volumes.png and,
    when groups record protocols, intensity_histograms_protocols.png; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    atomic_write_json(
        out / "stats.json", {"config": config.model_dump(mode="json"), "warnings": list(warnings), **merged}
    )
    written.append(out / "stats.json")
    atomic_write_text(out / "stats.md", _markdown(merged, config, warnings))
    written.append(out / "stats.md")
    per_site: dict[str, dict[str, Any]] = {}
    per_protocol: dict[str, dict[str, Any]] = {}
    for site, view in merged["sites"].items():
        for domain, summary in view["domains"].items():
            per_site.setdefault(domain, {})[site] = summary
        for group in view["groups"].values():
            if group["protocol"] == ALL_PROTOCOLS:
                continue
            label = f"{site} {group['protocol'] or '-'}"
            per_protocol.setdefault(group["domain"], {})[label] = group
    written.append(
        _intensity_figure(merged, out / "intensity_histograms.png", per_site, "Intensity histograms per site")
    )
    protocols = {group["protocol"] for view in merged["sites"].values() for group in view["groups"].values()}
    if protocols - {"", ALL_PROTOCOLS}:
        written.append(
            _intensity_figure(
                merged,
                out / "intensity_histograms_protocols.png",
                per_protocol,
                "Intensity histograms per site and protocol",
            )
        )
    written.append(_volume_figure(merged, out / "organ_volumes.png"))
    return written
