"""`make bench`: every benchmark at the default configuration, one table, results/<machine>.json and .txt.

Sections: GIN's cost in a training step (beside MONAI's intensity augmentations), training throughput and
data waiting, federation overhead and memory for 2-16 clients, bytes per round (float32 / float16 updates),
preprocessing and prediction speed. Each figure is stored with the 1-minute load average around it; run it
on an otherwise idle machine. About an hour on 2 CPU cores (3 runs of each federation); `--smoke` checks in
a few minutes that everything runs.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import bench_bytes
import bench_federation_overhead
import bench_predict
import bench_prepare
import bench_throughput
import bench_train_step
from common import load_average, machine_info, machine_name

RESULTS = Path(__file__).parent / "results"
SECTIONS = ("train_step", "throughput", "federation", "bytes", "prepare", "predict")

#: Settings of a full run and of `--smoke` (a few minutes: checks that everything runs; figures mean nothing).
FULL = {
    "train_step": {"sizes": [128, 256], "repeats": 20, "size_3d": 64, "repeats_3d": 5},
    "throughput": {"volumes": 6, "steps": 20, "chunks": 3},
    "federation": {
        "clients": (2, 4, 8, 16),
        "rounds": 3,
        "local_steps": 50,
        "float16_clients": 2,
        "repeats": 3,
    },
    "prepare": {"volumes": 16, "repeats": 3},
    "predict": {"repeats": 5},
}
SMOKE = {
    "train_step": {"sizes": [64], "repeats": 2, "size_3d": 32, "repeats_3d": 1},
    "throughput": {"volumes": 3, "steps": 2, "chunks": 2},
    "federation": {"clients": (2,), "rounds": 2, "local_steps": 2, "float16_clients": 0, "preset": (2, 2)},
    "prepare": {"volumes": 3, "repeats": 1},
    "predict": {"repeats": 1, "shape": (128, 128, 40)},
}


def pct(value: float) -> str:
    return f"{value:.1%}"


def mb(value: float) -> str:
    return f"{value / 1e6:.2f}"


def verdict(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


def spread(row: dict) -> str:
    """How a median over repeated runs was taken: the number of runs and the range of the ratio."""
    if row.get("repeats", 1) < 2:
        return ""
    low, high = row["ratio_range"]
    return f" (median of {row['repeats']} runs, ratio {low:.2f}-{high:.2f})"


def load(entry: dict) -> str:
    return f"{entry['load_before'][0]:.2f} / {entry['load_after'][0]:.2f}"


COLUMNS = ("section", "figure", "value", "target", "", "load 1-min before / after")


def title(results: dict) -> str:
    info = results["machine"]
    return (
        f"fedgin benchmarks on {results['name']}: {info['cpu']}"
        + (f" ({info['cpu_capability']})" if info.get("cpu_capability") else "")
        + f", {info['cores']} cores"
        + (f", {info['gpu']}" if info.get("gpu") else "")
        + f"; torch {info['torch']}, flwr {info['flwr']}; {info['date']}"
    )


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)


def table(results: dict) -> Table:
    """The one table of `make bench`: figure, value, target, met or missed, load average before / after."""
    out = Table(title=title(results), title_justify="left")
    for column in COLUMNS:
        out.add_column(column, justify="right" if column.startswith("load") else "left")
    for row in table_rows(results):
        out.add_row(*row)
    return out


def markdown(results: dict) -> str:
    """The same table in Markdown (for docs/performance.md and the README)."""
    lines = [f"| {' | '.join(COLUMNS)} |", f"|{' --- |' * len(COLUMNS)}"]
    for row in table_rows(results):
        cells = [re.sub(r"\[/?[a-z ]*\]", "", cell).replace("|", "\\|") for cell in row]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


def paper_training_steps() -> dict:
    """Optimizer steps of the paper-complete preset: every federation and pooled model gets rounds x local
    steps x sites, each site's local model rounds x local steps; times the seeds. Training steps only."""
    from fedgin.study.config import load_study, preset_path

    study = load_study(preset_path("paper", "complete"))
    per_site = study.federation.rounds * int(study.federation.local_steps or 0)
    sites = len(study.sites)
    per_seed = per_site * sites * len(study.methods)  # `local` too: one model of per_site steps per site
    return {
        "steps": per_seed * len(study.seeds),
        "description": f"{sites} sites x {study.federation.rounds} rounds x {study.federation.local_steps} "
        f"steps, {len(study.methods)} methods, {len(study.seeds)} seeds",
        "size": study.preprocess.size,
        "batch": study.train.batch_size,
    }


def table_rows(results: dict) -> list[tuple[str, ...]]:
    out = Rows()
    sections = results["sections"]

    for entry in sections.get("train_step", []):
        config = f"{entry['dimensions']}D b{entry['batch']} {entry['size']}^{entry['dimensions']}"
        step = f"{entry['step_ms']:.1f} ms step"
        gin_target = entry["dimensions"] == 2
        out.add_row(
            "GIN cost",
            f"{config}: GIN per-sample / shared",
            f"{entry['gin_ms']:.2f} ms {pct(entry['gin_share'])} / {entry['gin_shared_ms']:.2f} ms "
            f"{pct(entry['gin_shared_share'])} of a {step}",
            "< 3% of a 2D step" if gin_target else "",
            verdict(entry["gin_share"] < 0.03) if gin_target else "",
            load(entry),
        )
        if "ipa_ms" in entry:
            out.add_row(
                "",
                f"{config}: GIN-IPA (3 views, consistency term)",
                f"augmentation {entry['ipa_ms']:.2f} ms {pct(entry['ipa_share'])} of its "
                f"{entry['ipa_step_ms']:.1f} ms step; with it {entry['ipa_step_ratio']:.2f}x GIN's step",
                "(issue 18)",
                "",
                "",
            )
        out.add_row(
            "",
            f"{config}: MONAI RandHistogramShift / RandBiasField",
            f"{entry['hist_shift_ms']:.2f} ms {pct(entry['hist_shift_share'])} / "
            f"{entry['bias_field_ms']:.2f} ms {pct(entry['bias_field_share'])}",
            "(for scale)",
            "",
            "",
        )
    paper = results.get("paper_preset") or paper_training_steps()
    for entry in sections.get("train_step", []):
        if (entry["dimensions"], entry["size"], entry["batch"]) == (2, paper["size"], paper["batch"]):
            hours = paper["steps"] * entry["step_ms"] / 1e3 / 3600
            out.add_row(
                "Paper preset",
                f"paper-complete ({paper['description']}): estimated training time",
                f"{paper['steps'] / 1e6:.2f} M steps x {entry['step_ms']:.1f} ms (the 2D b{entry['batch']} "
                f"{entry['size']}^2 step) = {hours:.0f} h, validation and testing not included",
                "",
                "",
                "",
            )
    if entry := sections.get("throughput"):
        out.add_row(
            "Training",
            f"LocalTrainer, 2D b{entry['batch']} {entry['size']}^2, GIN on, {entry['steps']} steps",
            f"{entry['slices_per_s']:.1f} slices/s ({entry['step_ms']:.1f} ms a step), GIN "
            f"{pct(entry['gin_share'])}",
            "",
            "",
            load(entry),
        )
        out.add_row(
            "",
            "share of step time waiting for data",
            pct(entry["data_wait_share"]),
            "< 5%",
            verdict(entry["data_wait_share"] < 0.05),
            "",
        )
    if fed := sections.get("federation"):
        rows = fed["configurations"]
        for row in rows:
            out.add_row(
                "Federation" if row is rows[0] else "",
                f"{row['clients']} clients x {fed['rounds']} rounds x {fed['local_steps']} steps: "
                "Flower / plain",
                f"{row['flower_s']:.1f} s / {row['plain_s']:.1f} s = {row['ratio']:.2f}{spread(row)}; "
                f"start-up {row['flower_startup_s']:.1f} s, a round {row['flower_round_s']:.1f} / "
                f"{row['plain_round_s']:.1f} s = {row['round_ratio']:.2f}; "
                f"12 rounds: {row['projected_ratio_12_rounds']:.2f}",
                "(scaling)",
                "",
                load(row),
            )
        if row := fed.get("quick_preset"):
            out.add_row(
                "",
                f"quick preset: {row['clients']} clients x {row['rounds']} rounds x {fed['local_steps']} "
                "steps: Flower / plain",
                f"{row['flower_s']:.1f} s / {row['plain_s']:.1f} s = {row['ratio']:.2f}{spread(row)}; "
                f"start-up {row['flower_startup_s']:.1f} s, a round {row['flower_round_s']:.1f} / "
                f"{row['plain_round_s']:.1f} s = {row['round_ratio']:.2f}",
                "< 1.10",
                verdict(row["ratio"] < 1.10),
                load(row),
            )
        for row in rows:
            out.add_row(
                "",
                f"{row['clients']} clients: peak RSS (PSS) Flower / plain",
                f"{row['flower_peak_rss_mb']:.0f} ({row['flower_peak_pss_mb']:.0f}) MB / "
                f"{row['plain_peak_rss_mb']:.0f} ({row['plain_peak_pss_mb']:.0f}) MB",
                "",
                "",
                "",
            )
        if probe := fed.get("ray_probe"):
            out.add_row(
                "",
                "Flower's fixed cost taken apart (Ray alone)",
                f"ray.init {probe['ray_init_s']:.1f} s, 2 workers start + import the ClientApp "
                f"{probe['two_workers_start_and_import_s']:.1f} s, shutdown {probe['ray_shutdown_s']:.1f} s",
                "",
                "",
                load(probe),
            )
        by_clients = {row["clients"]: row for row in rows}
        if 2 in by_clients and 16 in by_clients:
            growth = by_clients[16]["flower_peak_rss_mb"] / by_clients[2]["flower_peak_rss_mb"]
            out.add_row(
                "",
                "peak RSS, 16 clients over 2 clients (Flower)",
                f"{growth:.2f}x",
                "< 2x",
                verdict(growth < 2.0),
                "",
            )
    if sizes := sections.get("bytes"):
        for name, entry in sizes.items():
            out.add_row(
                "Bytes / round / client" if name == next(iter(sizes)) else "",
                f"{name}, {entry['parameters'] / 1e6:.2f} M parameters: down / up",
                f"float32 {mb(entry['float32']['down_bytes'])} / {mb(entry['float32']['up_bytes'])} MB; "
                f"float16 {mb(entry['float16']['down_bytes'])} / {mb(entry['float16']['up_bytes'])} MB",
                "",
                "",
                "",
            )
        if (fed := sections.get("federation")) and "float16" in fed:
            half, full = fed["float16"], fed["configurations"][0]
            out.add_row(
                "",
                f"measured (rounds.csv), quick model, {half['clients']} clients: float32 / float16 down",
                f"{full['bytes_down_per_client'] / 1e6:.3f} / {half['bytes_down_per_client'] / 1e6:.3f} MB; "
                f"Flower {full['flower_s']:.1f} / {half['flower_s']:.1f} s",
                "",
                "",
                load(half),
            )
    if entry := sections.get("prepare"):
        counts = sorted(int(key.split("_")[1]) for key in entry if key.startswith("workers_"))
        out.add_row(
            "Preprocessing",
            f"prepare, {entry['volumes']} CTs of {'x'.join(map(str, entry['shape']))}, "
            + " / ".join(f"{count} worker{'s' if count > 1 else ''}" for count in counts),
            " / ".join(f"{entry[f'workers_{count}']['volumes_per_s']:.2f}" for count in counts)
            + " volumes/s",
            "",
            "",
            load(entry),
        )
    if entry := sections.get("predict"):
        out.add_row(
            "Prediction",
            f"fedgin predict, one CT of {'x'.join(map(str, entry['shape']))} (NIfTI in, labels out)",
            f"{entry['seconds_per_volume']:.2f} s/volume ({entry['in_memory_s']:.2f} s preprocess + network "
            f"+ restore, {entry['read_write_s']:.2f} s read + write)",
            "",
            "",
            load(entry),
        )
    return out.rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny settings: checks that everything runs")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--machine", help="results file name (default: cpu-<cores>core or gpu-<name>)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None, help="folder for temporary data (default: /tmp)")
    parser.add_argument(
        "--markdown", type=Path, help="print the table of an existing results JSON as Markdown"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    settings = SMOKE if args.smoke else FULL
    console = Console(record=True, width=200)
    info = machine_info()
    name = args.machine or machine_name(info) + ("-smoke" if args.smoke else "")
    results: dict = {"name": name, "machine": info, "settings": settings, "sections": {}}
    sections = results["sections"]
    console.print(f"[bold]fedgin benchmarks[/] -> {args.out / name}.json; load average {load_average()}")
    started = time.perf_counter()
    for section in args.only or SECTIONS:
        began = time.perf_counter()
        console.print(f"[bold]{section}[/] ...")
        options = settings.get(section, {})
        if section == "train_step":
            sections[section] = bench_train_step.run(**options)
        elif section == "throughput":
            sections[section] = bench_throughput.run(**options, work=args.work)
        elif section == "federation":
            sections[section] = bench_federation_overhead.run(**options, work=args.work, log=console.print)
        elif section == "bytes":
            sections[section] = bench_bytes.run()
        elif section == "prepare":
            sections[section] = bench_prepare.run(**options, work=args.work)
        elif section == "predict":
            sections[section] = bench_predict.measure(**options)
        console.print(f"  {section}: {time.perf_counter() - began:.0f} s")
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["paper_preset"] = paper_training_steps()
    console.print(table(results))
    console.print(f"{results['seconds']:.0f} s in all; load average {load_average()}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.txt").write_text(console.export_text())


if __name__ == "__main__":
    main()
