"""The study's report: tables (mean +- std over seeds), the paper's claims beside measured ones, figures.

Everything is read from the files the runs and their test evaluations wrote (no model is loaded): the
overlay figure shows the slices the evaluations kept.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from fedgin import figures
from fedgin.evaluation.results import MEAN_ROW, kept_slice_path, read_kept_slice, read_summary
from fedgin.io_utils import atomic_write_text
from fedgin.labels import ORGANS
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
#: Beyond the paper (issue 18): each extension of FedGIN against FedGIN itself, (method, other, test).
EXTENSION_CLAIMS = [
    (method, "fedgin", test)
    for method in ("fedgin_balanced", "fedgin_ipa", "fedgin_ipa_balanced")
    for test in ("MRI", "CT")
]
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
    """FedGIN against the methods the paper compares it with, then each extension of FedGIN against
    FedGIN (no paper value): absolute and relative differences."""
    comparisons = [
        ("fedgin", other, test_scope, paper)
        for (scenario, other, test_scope), paper in PAPER_CLAIMS.items()
        if scenario == config.scenario
    ] + [(method, other, test, "– (not in the paper)") for method, other, test in EXTENSION_CLAIMS]
    rows = []
    for method, other, test_scope, paper in comparisons:
        name, label = METHODS[method].label, METHODS[other].label
        scope = [test_scope] if test_scope != "all" else [t for t in ("CT", "MRI") if t in tests]
        for point in points:
            for test in scope:
                mine = stats.get((point, name, test, MEAN_ROW))
                theirs = stats.get((point, label, test, MEAN_ROW))
                if mine is None or theirs is None or math.isnan(mine[0]) or math.isnan(theirs[0]):
                    continue
                absolute = mine[0] - theirs[0]
                relative = 100 * absolute / theirs[0] if theirs[0] > 0 else math.nan
                where = f"{point}, " if config.scenario == "limited" else ""
                rows.append(
                    [
                        f"{name} vs {label}",
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


def _validated_rows(run: PlannedRun, runs: Sequence[PlannedRun]) -> list[dict[str, str]]:
    """The rows with a validation score of a run's history (rounds.csv for a federation, metrics.csv
    otherwise), in order."""
    folder = trained_dir(run, list(runs))
    path = folder / ("rounds.csv" if METHODS[run.method].federated else "metrics.csv")
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row.get("val_score")]


def validation_curve(run: PlannedRun, runs: Sequence[PlannedRun]) -> list[float]:
    """The validation scores of a run, in order."""
    return [float(row["val_score"]) for row in _validated_rows(run, runs)]


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


# -- what the figures show --------------------------------------------------------------------------------
def main_point_of(runs: Sequence[PlannedRun]) -> str:
    """The scenario point of the per-organ tables, convergence and figures: complete, else the last ratio."""
    points = list(dict.fromkeys(run.point for run in runs))
    return "complete" if "complete" in points else points[-1]


def validation_curves(runs: Sequence[PlannedRun], point: str, seed: int) -> list[figures.ValidationCurve]:
    """Validation score per round of the seed's models at `point` (pooled runs: per validation interval,
    which is one round's steps); local models left out."""
    curves = []
    for run in runs:
        if run.point != point or run.seed != seed or run.site is not None:
            continue
        table = _validated_rows(run, runs)
        if not table:
            continue
        federated = METHODS[run.method].federated
        interval = max(1, run.config.train.val_interval)
        x = [float(row["round"]) if federated else float(row["step"]) / interval for row in table]
        curves.append(
            figures.ValidationCurve(run.label, x, [float(row["val_score"]) for row in table], federated)
        )
    return curves


#: The methods the overlay figure shows, the first three of them that the study has.
OVERLAY_METHODS = ("fedgin", "fl_no_gin", "centralized_gin", "ct_only", "mri_only")


def overlay_runs(config: StudyConfig, runs: Sequence[PlannedRun], point: str) -> list[PlannedRun]:
    """The runs whose predictions the overlay figure shows: the first seed's, of OVERLAY_METHODS."""
    seed = config.seeds[0]
    chosen = [
        run
        for method in OVERLAY_METHODS
        for run in runs
        if run.method == method and run.point == point and run.seed == seed and run.site is None
    ]
    return chosen[:3]


def overlay_case_ids(config: StudyConfig) -> list[str]:
    """The test cases the overlay figure shows, whose slices the study's evaluations keep: the first
    `overlay_cases` of each modality in each test cache, ordered by modality."""
    from fedgin.cache import Cache

    if config.overlay_cases == 0:
        return []
    cases = []
    for spec in config.test:
        by_modality: dict[str, int] = defaultdict(int)
        for entry in Cache(spec.cache).cases(split=(spec.splits or ["test"])[0]):
            if by_modality[entry.modality] < config.overlay_cases:
                by_modality[entry.modality] += 1
                cases.append((entry.modality, entry.case_id))
    return [case_id for _, case_id in sorted(cases, key=lambda case: case[0])]


def overlay_rows(
    config: StudyConfig, runs: Sequence[PlannedRun], point: str
) -> tuple[list[figures.OverlayRow], list[Path]]:
    """The overlay figure's rows (reference, then each chosen run's prediction) from the slices the runs'
    test evaluations kept, and the kept-slice files that are missing (then there are no rows)."""
    chosen = overlay_runs(config, runs, point)
    case_ids = overlay_case_ids(config) if chosen else []
    paths = {
        (run.label, case_id): kept_slice_path(trained_dir(run, list(runs)) / "test", case_id)
        for run in chosen
        for case_id in case_ids
    }
    missing = [path for path in paths.values() if not path.is_file()]
    if missing or not paths:
        return [], missing
    rows = []
    for case_id in case_ids:
        kept = [read_kept_slice(paths[(run.label, case_id)]) for run in chosen]
        panels = [("reference", kept[0].reference)] + [
            (run.label, one.prediction) for run, one in zip(chosen, kept, strict=True)
        ]
        rows.append(figures.OverlayRow(f"{kept[0].domain}\n{case_id}", kept[0].image, panels))
    return rows, []


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


def privacy_table(runs: Sequence[PlannedRun]) -> str:
    """The epsilon each federated run spent (its summary.json, federation.privacy), one row per run."""
    body = []
    for run in runs:
        summary = run.run_dir / "summary.json"
        privacy = json.loads(summary.read_text()).get("privacy") if summary.is_file() else None
        if privacy:
            body.append(
                [
                    run.label,
                    str(run.seed),
                    f"{privacy['epsilon']:.4g}",
                    f"{privacy['delta']:g}",
                    f"{privacy['noise_multiplier']:g}",
                    f"{privacy['clipping']} on the {privacy['clip_on']}",
                    str(privacy["rounds_accounted"]),
                ]
            )
    header = ["method", "seed", "epsilon", "delta", "noise multiplier", "clipping", "rounds"]
    return markdown_table(header, body) if body else ""


def cross_site_section(
    config: StudyConfig, runs: Sequence[PlannedRun], point: str, figure: Path
) -> list[str]:
    """The cross-site matrix (fedgin.study.cross_site) at `point`: models x sites, Dice averaged over
    organs on each site's held-out cases, mean ± std over the seeds; the heat map of the first seed with
    one (per site and domain) into `figure`. [] when no seed has one."""
    from fedgin.federation.cross_site import matrix, read_rows
    from fedgin.study.cross_site import cross_site_dir

    per_seed: dict[tuple[str, str], list[float]] = defaultdict(list)
    first_rows: list[dict] | None = None
    for seed in config.seeds:
        path = cross_site_dir(config, seed, point) / "cross_site.csv"
        if not path.is_file():
            continue
        rows = read_rows(path)
        first_rows = first_rows if first_rows is not None else rows
        for key, value in matrix(rows).items():
            per_seed[key].append(value)
    if first_rows is None:
        return []
    models = list(dict.fromkeys(model for model, _ in per_seed))
    sites = list(dict.fromkeys(site for _, site in per_seed))
    body = [[model, *(cell(over_seeds(per_seed[(model, site)])) for site in sites)] for model in models]
    figures.plot_cross_site(first_rows, figure)
    where = "" if point == "complete" else f" (MRI:CT {point})"
    return [
        f"## Cross-site evaluation{where}\n",
        "Every model scored at every site on that site's held-out cases (its caches' test split, the domains "
        "it trains on), on Flower: the sites return only summaries. Dice averaged over organs per patient, "
        "then over the site's patients, then mean ± std over seeds. A local model's row shows how a "
        "hospital's own model does at the other hospitals; the federated rows what federation buys each "
        "of them. Sites carved from one cache (skip/max cases) share its test split.\n",
        markdown_table(["model", *sites], body),
        f"![Cross-site Dice, seed {config.seeds[0]}](figures/{figure.name})\n",
    ]


def write_report(config: StudyConfig, runs: Sequence[PlannedRun]) -> Path:
    """report.md, results.csv and the figures in the study folder."""
    out = config.output
    rows = collect_results(runs)
    write_results_csv(rows, out / "results.csv")
    dice, hd95 = aggregate(rows, "dice"), aggregate(rows, "hd95")
    tests = _tests(rows)
    points = list(dict.fromkeys(run.point for run in runs))
    main_point = main_point_of(runs)
    figure_dir = out / "figures"
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
    if config.stats:
        from fedgin.study.site_data import statistics_section

        text += statistics_section(config)
    if fed.privacy is not None and (table := privacy_table(runs)):
        text += [
            "## Differential privacy of the federated runs\n",
            "Client-level (one site added or removed), RDP accountant, no sampling amplification; every "
            "federated method's global model after its last round (fedgin.federation.privacy).\n",
            table,
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
        federations = [label for label in labels if any(
            run.label == label and METHODS[run.method].federated for run in runs)]  # fmt: skip
        figures.plot_dice_vs_ratio(
            dice, list(labels), points, "MRI", figure_dir / "dice_vs_ratio.png", side_by_side=federations
        )
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
    if config.cross_site:
        text += cross_site_section(config, runs, main_point, figure_dir / "cross_site.png")
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
            "Dice as the mean over organs; relative = (method - other) / other. The paper's abstract does "
            "not say whether its percentages are relative or absolute, so both are given. Rows without a "
            "paper value compare this project's extensions of FedGIN (modality-balanced aggregation, "
            "GIN-IPA) with FedGIN.\n",
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
    figures.plot_dice_per_organ(
        dice, _labels(runs, main_point), main_point, tests, figure_dir / "dice_per_organ.png"
    )
    seed = config.seeds[0]
    figures.plot_validation_curves(
        validation_curves(runs, main_point, seed),
        f"seed {seed}" + (f", {main_point}" if main_point != "complete" else ""),
        figure_dir / "learning_curves.png",
    )
    text += [
        "## Figures\n",
        "![Dice per organ and method](figures/dice_per_organ.png)\n",
        f"![Learning curves (seed {config.seeds[0]})](figures/learning_curves.png)\n",
    ]
    overlays, missing = overlay_rows(config, runs, main_point)
    if overlays:
        figures.plot_overlays(overlays, figure_dir / "overlays.png")
        text += [f"![Test slices: reference and predictions (seed {seed})](figures/overlays.png)\n"]
    elif missing:
        text += [
            f"(No overlay figure: {len(missing)} test slices were not kept, e.g. {missing[0]}; evaluations "
            "by an earlier fedgin kept none, and `fedgin study --resume` keeps them from the runs' best "
            "checkpoints.)\n"
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
