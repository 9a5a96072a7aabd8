"""The study's federated statistics of its sites' data (fedgin.federation.statistics), before training:
what each site holds (cases, spacing, intensities raw and preprocessed, organ volumes), and one line for
a site unlike the others. Written to <study>/stats and summarised in the report."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from fedgin.config import ClientSpec, RunConfig
from fedgin.study.config import StudyConfig

STATS_DIR = "stats"


def stats_dir(config: StudyConfig) -> Path:
    return config.output / STATS_DIR


def sites_run_config(config: StudyConfig) -> RunConfig:
    """The study's sites (all their data, complete scenario) as a federation's run config."""
    clients = [ClientSpec(name=site.name, data=[*site.ct, *site.mri]) for site in config.sites]
    return RunConfig(
        name=f"{config.name}/stats",
        output=config.output,
        preprocess=config.preprocess,
        train=config.train.model_copy(update={"device": "cpu"}),
        federation=config.federation.model_copy(update={"clients": clients, "min_clients": 1}),
    )


def run_site_statistics(config: StudyConfig, console: Console, resume: bool) -> None:
    """The statistics of the study's sites on Flower's simulation engine; kept when resuming."""
    from fedgin.federation.statistics import run_statistics

    out = stats_dir(config)
    if resume and (out / "stats.json").is_file():
        return
    console.print(f"federated statistics of the {len(config.sites)} sites' data ...", end=" ")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(config.output / "stats.log", "a", encoding="utf-8") as handle:
        result = run_statistics(sites_run_config(config), Console(file=handle, width=120), out)
    console.print(f"{out} ({len(result.warnings)} warning(s))")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


def statistics_section(config: StudyConfig) -> list[str]:
    """The report's summary of <study>/stats: the figure links and the warnings ([] without stats)."""
    path = stats_dir(config) / "stats.json"
    if not path.is_file():
        return []
    stats = json.loads(path.read_text(encoding="utf-8"))
    pooled = stats["pooled"]
    lines = [
        "## The sites' data (federated statistics)\n",
        "Computed at the sites on Flower before training (`fedgin stats`): only aggregates left them, counts "
        f"below {stats['config']['min_count']} were sent as 0. Cases per domain: "
        + ", ".join(f"{domain} {summary['n_cases']}" for domain, summary in pooled.items())
        + f". Details: [stats/stats.md]({STATS_DIR}/stats.md).\n",
        f"![Intensity histograms per site]({STATS_DIR}/intensity_histograms.png)\n",
    ]
    if (stats_dir(config) / "intensity_histograms_protocols.png").is_file():
        lines.append(f"![Per site and protocol]({STATS_DIR}/intensity_histograms_protocols.png)\n")
    lines.append(f"![Organ volumes per site]({STATS_DIR}/organ_volumes.png)\n")
    warnings = stats.get("warnings", [])
    lines.append("Sites unlike the others: " + ("; ".join(warnings) if warnings else "none found") + ".\n")
    return lines


__all__ = ["STATS_DIR", "run_site_statistics", "sites_run_config", "statistics_section", "stats_dir"]
