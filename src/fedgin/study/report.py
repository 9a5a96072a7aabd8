"""The study's report: tables (mean +- std over seeds), the paper's claims beside measured ones, figures."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedgin.io_utils import atomic_path, atomic_write_text
from fedgin.labels import ORGANS
from fedgin.reports.tables import MEAN_ROW, read_summary
from fedgin.study.config import METHODS, StudyConfig
from fedgin.study.plan import PlannedRun, trained_dir

#: Test groups of the tables: (group_by of summary.csv, group, column title).
TEST_GROUPS = (
    ("modality", "ct", "CT"),
    ("modality", "mri", "MRI"),
    ("domain", "mri_t1", "MRI T1"),
    ("domain", "mri_t2", "MRI T2"),
)
#: The paper's claims (arXiv 2508.05137, abstract), as the share by which FedGIN's Dice is higher.
PAPER_CLAIMS = {
    ("limited", "fl_no_gin", "MRI"): "+12 to +18 %",
    ("complete", "centralized_gin", "all"): "close (about equal)",
    ("complete", "mri_only", "all"): "+30 %",
    ("complete", "ct_only", "all"): "+10 %",
}
RESULT_COLUMNS = ["point", "method", "label", "site", "seed", "test", "organ", "dice", "hd95", "n_cases"]


def collect_results(runs: Sequence[PlannedRun]) -> list[dict]:
    """One row per run x test group x organ (and the mean over organs): the per-seed values of the tables.

    Each value is the mean over the test patients of that run's per-case metric (summary.csv of its test
    evaluation); a run identical to an earlier one (same data, seed and recipe) reads that run's files.
    """
    rows = []
    for run in runs:
        summary = trained_dir(run, list(runs)) / "test" / "summary.csv"
        tables = {group_by: read_summary(summary, group_by) for group_by in ("modality", "domain")}
        for group_by, group, title in TEST_GROUPS:
            for organ in (*ORGANS, MEAN_ROW):
                values = tables[group_by].get((group, organ))
                if values is None:
                    continue
                rows.append(
                    {
                        "point": run.point,
                        "method": run.method,
                        "label": run.label,
                        "site": run.site or "",
                        "seed": run.seed,
                        "test": title,
                        "organ": organ,
                        "dice": values.get("dice_mean", math.nan),
                        "hd95": values.get("hd95_mean", math.nan),
                        "n_cases": int(values.get("n_cases", 0)),
                    }
                )
    return rows


def training_protocols(config: StudyConfig, point: str) -> set[str]:
    """The acquisition protocols of the training cases the study's sites hold at scenario point `point`."""
    from fedgin.study.plan import scenario_points
    from fedgin.training.data import select_cases

    sites = scenario_points(config)[point]
    return {
        entry.protocol for site in sites for spec in site.specs for _, entry in select_cases(spec, ["train"])
    }


def protocols_tested(config: StudyConfig) -> dict[str, tuple[str, int]]:
    """Test protocol -> (domain, number of test patients), in the order of the test caches."""
    from fedgin.training.data import select_cases

    found: dict[str, tuple[str, int]] = {}
    for spec in config.test:
        for _, entry in select_cases(spec, ["test"]):
            if entry.protocol:
                domain, count = found.get(entry.protocol, (entry.domain, 0))
                found[entry.protocol] = (domain, count + 1)
    return found


def collect_protocol_results(runs: Sequence[PlannedRun], protocols: Sequence[str]) -> list[dict]:
    """One row per run x test protocol: Dice (mean over organs per patient, then over the protocol's
    patients), from the `protocol` grouping of each run's test summary.csv."""
    rows = []
    for run in runs:
        summary = read_summary(trained_dir(run, list(runs)) / "test" / "summary.csv", "protocol")
        for protocol in protocols:
            values = summary.get((protocol, MEAN_ROW))
            if values is not None:
                rows.append(
                    {"point": run.point, "label": run.label, "seed": run.seed, "protocol": protocol,
                     "dice": values.get("dice_mean", math.nan), "n_cases": int(values.get("n_cases", 0))}
                )  # fmt: skip
    return rows


def protocol_tables(
    config: StudyConfig, runs: Sequence[PlannedRun], point: str, digits: int = 3
) -> tuple[str, str] | None:
    """Dice per method and test protocol (unseen protocols marked), and seen against unseen per modality.

    None when the test cases record no protocol. A protocol is *unseen* when no training case of the
    study's sites at `point` was acquired with it. Values are means over seeds.
    """
    tested = protocols_tested(config)
    if not tested:
        return None
    seen = training_protocols(config, point)
    rows = [row for row in collect_protocol_results(runs, list(tested)) if row["point"] == point]
    grouped: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        grouped[(row["label"], row["protocol"])].append(float(row["dice"]))
    labels = _labels(runs, point)
    order = sorted(tested, key=lambda name: (tested[name][0], name in seen, name))
    body = [
        [f"{name}{'' if name in seen else ' *'}", tested[name][0], str(tested[name][1])]
        + [cell(over_seeds(grouped[(label, name)]), digits) if grouped.get((label, name)) else "–"
           for label in labels]
        for name in order
    ]  # fmt: skip
    per_protocol = markdown_table(["test protocol", "domain", "patients", *labels], body)
    # Seen against unseen: per patient as in the main table (protocols weighted by their patients).
    summary_body = []
    for modality, title in (("ct", "CT"), ("mri", "MRI")):
        for unseen in (False, True):
            names = [n for n in order if tested[n][0].startswith(modality) and (n not in seen) == unseen]
            if not names:
                continue
            patients = sum(tested[n][1] for n in names)
            values = []
            for label in labels:
                seeds = sorted({row["seed"] for row in rows if row["label"] == label})
                per_seed = [
                    sum(float(r["dice"]) * r["n_cases"] for r in rows
                        if r["label"] == label and r["seed"] == seed and r["protocol"] in names) / patients
                    for seed in seeds
                ]  # fmt: skip
                values.append(cell(over_seeds(per_seed), digits) if per_seed else "–")
            kind = "unseen" if unseen else "seen"
            summary_body.append([f"{title}, {kind} protocols ({len(names)})", str(patients), *values])
    seen_unseen = markdown_table(["test", "patients", *labels], summary_body)
    return per_protocol, seen_unseen


def over_seeds(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (n - 1) over seeds, ignoring undefined values."""
    finite = [value for value in values if not math.isnan(value)]
    if not finite:
        return math.nan, math.nan, 0
    std = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return statistics.fmean(finite), std, len(finite)


def aggregate(rows: Sequence[dict], metric: str) -> dict[tuple[str, str, str, str], tuple[float, float, int]]:
    """(point, label, test, organ) -> (mean, std, n seeds) of `metric`."""
    grouped: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for row in rows:
        grouped[(row["point"], row["label"], row["test"], row["organ"])].append(float(row[metric]))
    return {key: over_seeds(values) for key, values in grouped.items()}


def cell(stats: tuple[float, float, int] | None, digits: int = 3) -> str:
    if stats is None or math.isnan(stats[0]):
        return "–"
    mean, std, _ = stats
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _labels(runs: Sequence[PlannedRun], point: str) -> list[str]:
    seen: dict[str, None] = {}
    for method in METHODS:
        for run in runs:
            if run.point == point and run.method == method:
                seen.setdefault(run.label)
    return list(seen)


def _tests(rows: Sequence[dict]) -> list[str]:
    present = {row["test"] for row in rows}
    return [title for _, _, title in TEST_GROUPS if title in present]


def main_table(
    stats: dict, runs: Sequence[PlannedRun], point: str, tests: Sequence[str], digits: int = 3
) -> str:
    """Methods x test modality: the mean over organs, mean +- std over seeds."""
    body = [[label] + [cell(stats.get((point, label, test, MEAN_ROW)), digits) for test in tests]
            for label in _labels(runs, point)]  # fmt: skip
    return markdown_table(["method", *tests], body)


def organ_table(stats: dict, runs: Sequence[PlannedRun], point: str, test: str, digits: int = 3) -> str:
    """Organs x methods for one test modality."""
    labels = _labels(runs, point)
    body = [
        ["**mean over organs**" if organ == MEAN_ROW else organ]
        + [cell(stats.get((point, label, test, organ)), digits) for label in labels]
        for organ in (*ORGANS, MEAN_ROW)
    ]
    return markdown_table(["organ", *labels], body)


def claim_rows(
    stats: dict, config: StudyConfig, points: Sequence[str], tests: Sequence[str]
) -> list[list[str]]:
    """FedGIN against the methods the paper compares it with: absolute and relative differences."""
    fedgin = METHODS["fedgin"].label
    rows = []
    for (scenario, other, test_scope), paper in PAPER_CLAIMS.items():
        if scenario != config.scenario:
            continue
        label = METHODS[other].label
        scope = [test_scope] if test_scope != "all" else [t for t in ("CT", "MRI") if t in tests]
        for point in points:
            for test in scope:
                mine = stats.get((point, fedgin, test, MEAN_ROW))
                theirs = stats.get((point, label, test, MEAN_ROW))
                if mine is None or theirs is None or math.isnan(mine[0]) or math.isnan(theirs[0]):
                    continue
                absolute = mine[0] - theirs[0]
                relative = 100 * absolute / theirs[0] if theirs[0] > 0 else math.nan
                where = f"{point}, " if config.scenario == "limited" else ""
                rows.append(
                    [
                        f"FedGIN vs {label}",
                        f"{where}{test}",
                        paper,
                        f"{mine[0]:.3f} vs {theirs[0]:.3f}",
                        f"{absolute:+.3f}",
                        "–" if math.isnan(relative) else f"{relative:+.1f} %",
                    ]
                )
    return rows


#: A model has converged (reached its plateau) when the best validation score of the last quarter of its
#: training is less than this much above the best before it.
PLATEAU_GAIN = 0.01


def validation_curve(run: PlannedRun, runs: Sequence[PlannedRun]) -> list[float]:
    """The validation scores of a run, in order (rounds.csv for a federation, metrics.csv otherwise)."""
    folder = trained_dir(run, list(runs))
    path = folder / ("rounds.csv" if METHODS[run.method].federated else "metrics.csv")
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [float(row["val_score"]) for row in csv.DictReader(handle) if row.get("val_score")]


def last_quarter_gain(scores: Sequence[float]) -> float:
    """Best score of the last quarter of the curve minus the best before it (nan for fewer than 4)."""
    if len(scores) < 4:
        return math.nan
    split = len(scores) - max(1, len(scores) // 4)
    return max(scores[split:]) - max(scores[:split])


def _training_kind(method: str) -> str:
    info = METHODS[method]
    return "federated" if info.federated else "one site" if info.data == "site" else "pooled"


def convergence_table(runs: Sequence[PlannedRun], point: str) -> str:
    """Per method: best validation score, its gain over the last quarter of training per seed, plateau."""
    body = []
    for label in _labels(runs, point):
        chosen = [run for run in runs if run.point == point and run.label == label]
        curves = [validation_curve(run, runs) for run in chosen]
        gains = [last_quarter_gain(curve) for curve in curves if curve]
        if not gains:
            continue
        best = statistics.fmean(max(curve) for curve in curves if curve)
        flat = all(not math.isnan(gain) and gain < PLATEAU_GAIN for gain in gains)
        body.append(
            [label, _training_kind(chosen[0].method), f"{best:.3f}",
             ", ".join("–" if math.isnan(g) else f"{g:+.3f}" for g in gains), "yes" if flat else "**no**"]
        )  # fmt: skip
    return markdown_table(
        ["method", "training", "best val score", "gain in the last quarter (per seed)", "plateau"], body
    )


# -- figures -------------------------------------------------------------------------------------------------
def plot_dice_per_organ(
    stats: dict, runs: Sequence[PlannedRun], point: str, tests: Sequence[str], out: Path
) -> Path:
    """Grouped bars: Dice per organ and method, error bars = std over seeds, one panel per test modality."""
    labels = _labels(runs, point)
    panels = [test for test in tests if test in ("CT", "MRI")] or list(tests)
    organs = [*ORGANS, MEAN_ROW]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.2), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(labels))
    colors = plt.get_cmap("tab10")
    for ax, test in zip(axes[0], panels, strict=True):
        for index, label in enumerate(labels):
            values = [stats.get((point, label, test, organ), (math.nan, math.nan, 0)) for organ in organs]
            means = [v[0] for v in values]
            errors = [0.0 if math.isnan(v[1]) else v[1] for v in values]
            x = np.arange(len(organs)) + (index - (len(labels) - 1) / 2) * width
            ax.bar(x, means, width, yerr=errors, capsize=2, label=label, color=colors(index % 10))
        ax.set_xticks(np.arange(len(organs)), [o if o != MEAN_ROW else "mean" for o in organs], rotation=20)
        ax.set_ylim(0, 1)
        ax.set_title(f"test: {test}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice (mean over patients; ± std over seeds)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=min(len(labels), 5))
    rows_of_legend = math.ceil(len(labels) / 5)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    return _save(fig, out)


def plot_dice_vs_ratio(
    stats: dict, runs: Sequence[PlannedRun], points: Sequence[str], test: str, out: Path
) -> Path:
    """Limited scenario: test Dice (mean over organs) against the MRI:CT ratio, one line per method."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    labels = list(dict.fromkeys(label for point in points for label in _labels(runs, point)))
    for label in labels:
        values = [stats.get((point, label, test, MEAN_ROW), (math.nan, math.nan, 0)) for point in points]
        means = [v[0] for v in values]
        errors = [0.0 if math.isnan(v[1]) else v[1] for v in values]
        ax.errorbar(range(len(points)), means, yerr=errors, marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(points)), points)
    ax.set_xlabel("MRI : CT training cases")
    ax.set_ylabel(f"{test} test Dice (mean over organs)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def plot_learning_curves(runs: Sequence[PlannedRun], point: str, seed: int, out: Path) -> Path:
    """Validation score per round (pooled runs: per validation interval, which is one round's steps)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for run in runs:
        if run.point != point or run.seed != seed or run.site is not None:
            continue
        folder = trained_dir(run, list(runs))
        federated = METHODS[run.method].federated
        path = folder / ("rounds.csv" if federated else "metrics.csv")
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            table = [row for row in csv.DictReader(handle) if row.get("val_score") not in (None, "")]
        if not table:
            continue
        interval = max(1, run.config.train.val_interval)
        x = [float(row["round"]) if federated else float(row["step"]) / interval for row in table]
        ax.plot(x, [float(row["val_score"]) for row in table], marker="." if len(x) < 30 else None,
                linestyle="-" if federated else "--", label=run.label)  # fmt: skip
    ax.set_xlabel("round (pooled runs: the same number of steps)")
    ax.set_ylabel("validation score (mean Dice over modalities)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"seed {seed}" + (f", {point}" if point != "complete" else ""))
    fig.tight_layout()
    return _save(fig, out)


def plot_overlays(config: StudyConfig, runs: Sequence[PlannedRun], point: str, out: Path) -> Path | None:
    """Test slices (CT and MRI) with the reference and a few methods' predictions outlined."""
    from fedgin.cache import Cache
    from fedgin.checkpoints import load_model
    from fedgin.evaluation.inference import predict_volume

    wanted = ["fedgin", "fl_no_gin", "centralized_gin", "ct_only", "mri_only"]
    seed = config.seeds[0]
    chosen = [
        run
        for method in wanted
        for run in runs
        if run.method == method and run.point == point and run.seed == seed and run.site is None
    ][:3]
    if not chosen or config.overlay_cases == 0:
        return None
    models = [load_model(trained_dir(run, list(runs)) / "checkpoints" / "best.pt")[0] for run in chosen]
    cases = []
    for spec in config.test:
        cache = Cache(spec.cache)
        by_modality: dict[str, int] = defaultdict(int)
        for entry in cache.cases(split=(spec.splits or ["test"])[0]):
            if by_modality[entry.modality] < config.overlay_cases:
                by_modality[entry.modality] += 1
                cases.append((cache, entry))
    cases.sort(key=lambda item: item[1].modality)
    fig, axes = plt.subplots(len(cases), 1 + len(models), figsize=(2.6 * (1 + len(models)), 2.6 * len(cases)),
                             squeeze=False)  # fmt: skip
    colors = plt.get_cmap("tab10")
    for row, (cache, entry) in enumerate(cases):
        image = np.asarray(cache.load_image(entry))
        reference = np.asarray(cache.load_label(entry))
        z = int(np.argmax((reference > 0).reshape(reference.shape[0], -1).sum(1)))
        panels = [("reference", reference[z])]
        for run, model in zip(chosen, models, strict=True):
            predicted = predict_volume(model, image[z : z + 1], next(model.parameters()).device)
            panels.append((run.label, predicted[0]))
        for column, (title, labels) in enumerate(panels):
            ax = axes[row][column]
            ax.imshow(image[z], cmap="gray", origin="lower")
            for index in range(1, len(ORGANS) + 1):
                if (labels == index).any():
                    ax.contour(labels == index, levels=[0.5], colors=[colors(index - 1)], linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if column == 0:
                ax.set_ylabel(f"{entry.domain}\n{entry.case_id}", fontsize=7)
    handles = [plt.Line2D([], [], color=colors(i), label=organ) for i, organ in enumerate(ORGANS)]
    fig.legend(handles=handles, loc="lower center", ncol=len(ORGANS), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, out)


def _save(fig: plt.Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


# -- report.md -----------------------------------------------------------------------------------------------
def write_results_csv(rows: Sequence[dict], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {key: (f"{value:.6f}" if isinstance(value, float) else value) for key, value in row.items()}
        )
    atomic_write_text(path, buffer.getvalue())
    return path


def budget_table(runs: Sequence[PlannedRun], config: StudyConfig) -> str:
    seen: dict[tuple[str, str], list[str]] = {}
    for run in runs:
        if run.seed != config.seeds[0]:
            continue
        info = METHODS[run.method]
        key = (run.point, run.label)
        seen[key] = [
            run.label if config.scenario == "complete" else f"{run.point}: {run.label}",
            info.description,
            "yes" if info.gin else "no",
            str(run.budget_steps),
            str(run.n_ct_cases),
            str(run.n_mri_cases),
        ]
    return markdown_table(
        ["method", "training", "GIN", "optimizer steps", "CT cases", "MRI cases"], list(seen.values())
    )


def write_report(config: StudyConfig, runs: Sequence[PlannedRun]) -> Path:
    """report.md, results.csv and the figures in the study folder."""
    out = config.output
    rows = collect_results(runs)
    write_results_csv(rows, out / "results.csv")
    dice, hd95 = aggregate(rows, "dice"), aggregate(rows, "hd95")
    tests = _tests(rows)
    points = list(dict.fromkeys(run.point for run in runs))
    main_point = "complete" if "complete" in points else points[-1]
    figures = out / "figures"
    fed = config.federation
    per_site = fed.rounds * (fed.local_steps or 0)
    text = [
        f"# {config.name}: the FedGIN study, {config.scenario}-data scenario\n",
        f"Seeds {', '.join(map(str, config.seeds))}; every number is the mean over test patients of that run "
        f"(3D, per patient), then **mean ± std over the {len(config.seeds)} seeds** (sample std, n - 1). "
        f"Test data: {', '.join(str(spec.cache) for spec in config.test)} (never used in training or model "
        f"selection); model selection on the validation cases by mean Dice over modalities.\n",
        f"Step budget: {fed.rounds} rounds x {fed.local_steps} local steps per site. A federation of N sites "
        f"takes N x {per_site} optimizer steps in all; every pooled model (CT-only, MRI-only, "
        f"centralized) gets the same total, validated once per round's worth of steps; a local model "
        f"gets one site's share ({per_site} steps). Batch {config.train.batch_size}, "
        f"{config.preprocess.size}x{config.preprocess.size} slices, U-Net channels "
        f"{list(config.model.channels)}, "
        f"{config.federation.strategy}{' + FedBN' if fed.fedbn else ''}.\n",
        "## Methods and budget\n",
        budget_table(runs, config),
    ]
    if config.scenario == "limited":
        text += ["## MRI test Dice against the MRI:CT ratio (mean over organs)\n"]
        labels = dict.fromkeys(label for point in points for label in _labels(runs, point))
        body = [
            [label] + [cell(dice.get((point, label, "MRI", MEAN_ROW))) for point in points]
            for label in labels
        ]
        text += [markdown_table(["method", *points], body)]
        text += ["![Dice against the ratio](figures/dice_vs_ratio.png)\n"]
        plot_dice_vs_ratio(dice, runs, points, "MRI", figures / "dice_vs_ratio.png")
    for point in points:
        where = "" if point == "complete" else f" (MRI:CT {point})"
        text += [f"## Dice, mean over organs{where}\n", main_table(dice, runs, point, tests)]
        text += [f"## HD95 in mm, mean over organs{where}\n", main_table(hd95, runs, point, tests, digits=1)]
    tables = protocol_tables(config, runs, main_point)
    if tables is not None:
        where = "" if main_point == "complete" else f" (MRI:CT {main_point})"
        text += [
            f"## Dice per test protocol{where}\n",
            "Mean over organs per patient, then over the protocol's patients, then over seeds. `*` marks a "
            "protocol that no training case of the sites was acquired with (unseen in training): where the "
            "test data differ from the training data in scanner, sequence or contrast.\n",
            tables[0],
            "Seen against unseen protocols (mean over the patients of those protocols, ± std over seeds):\n",
            tables[1],
        ]
    text += [
        f"## Convergence{'' if main_point == 'complete' else f' (MRI:CT {main_point})'}\n",
        "Validation score (mean Dice over the validation domains) once per round's worth of steps. A model "
        f"is on its plateau when the best score of its last quarter of training is less than {PLATEAU_GAIN} "
        "above the best before it; methods are compared where all are.\n",
        convergence_table(runs, main_point),
    ]
    text += ["## Claims of the paper and what this study measured\n"]
    claims = claim_rows(dice, config, points, tests)
    if claims:
        text += [
            "Dice as the mean over organs; relative = (FedGIN - other) / other. The paper's abstract does "
            "not say whether its percentages are relative or absolute, so both are given.\n",
            markdown_table(["comparison", "test", "paper", "measured Dice", "absolute", "relative"], claims),
        ]
    else:
        text += ["(the methods the claims compare were not all part of this study)\n"]
    text += [f"## Dice per organ{'' if main_point == 'complete' else f' (MRI:CT {main_point})'}\n"]
    for test in tests:
        text += [f"### test: {test}\n", organ_table(dice, runs, main_point, test)]
    text += ["## HD95 per organ (mm)\n"]
    for test in [t for t in tests if t in ("CT", "MRI")]:
        text += [f"### test: {test}\n", organ_table(hd95, runs, main_point, test, digits=1)]
    plot_dice_per_organ(dice, runs, main_point, tests, figures / "dice_per_organ.png")
    plot_learning_curves(runs, main_point, config.seeds[0], figures / "learning_curves.png")
    text += [
        "## Figures\n",
        "![Dice per organ and method](figures/dice_per_organ.png)\n",
        f"![Learning curves (seed {config.seeds[0]})](figures/learning_curves.png)\n",
    ]
    if plot_overlays(config, runs, main_point, figures / "overlays.png") is not None:
        text += [
            f"![Test slices: reference and predictions (seed {config.seeds[0]})](figures/overlays.png)\n"
        ]
    text += [
        "## Files\n",
        "`results.csv`: every per-seed value of these tables (mean over the test patients of one run); "
        "`runs/seed*/...`: each run's config.toml, checkpoints, learning curve and `test/per_case.csv`; "
        "`study.toml`: the resolved study configuration.\n",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(text))
    return path


__all__ = [
    "aggregate",
    "collect_protocol_results",
    "collect_results",
    "main_table",
    "over_seeds",
    "protocol_tables",
    "write_report",
]
