"""Federations that differ in one [federation] setting, each tested on the held-out AMOS-layout set.

Two suites on the four-site quick federation (examples/four_sites_quick.toml):

- `robust`: FedAvg and each robust rule, with no poisoned site and with one of four sites sending
  sign-flipped weights (federation.fault) -> docs/robustness/;
- `privacy`: FedGIN with server-side clipping and Gaussian noise at several noise multipliers, each with the
  epsilon the accountant reports -> docs/privacy/.

Every run is a normal `fedgin federate` run under runs/four_sites/<suite>/<variant> (finished runs are kept:
the script resumes), evaluated on its final global model (checkpoints/last.pt: what the federation ends
with, which for a poisoned FedAvg is not the best round's). Writes results.csv, results.md, a bar chart and
the validation curves of every run (to see that each has levelled off) into the docs folder.

    .venv/bin/python benchmarks/federation_variants.py --suite robust
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedgin.config import RunConfig, load_toml
from fedgin.evaluation.evaluate import evaluate_checkpoint
from fedgin.federation import run_federation
from fedgin.prepare import prepare

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "examples" / "four_sites_quick.toml"
TEST_CACHE = ROOT / "runs" / "demo" / "cache64" / "amos"
POISONED_SITE = "site_ct_b"
SIGN_FLIP = {"fault": {"site": POISONED_SITE, "mode": "sign_flip"}}

#: (variant name, [federation] overrides, label in the table).
ROBUST: list[tuple[str, dict, str]] = []
for strategy, settings in (
    ("fedavg", {}),
    ("median", {}),
    ("trimmed_mean", {"trim_beta": 0.25}),
    ("krum", {"num_malicious": 1}),
    ("multikrum", {"num_malicious": 1, "multikrum_select": 2}),
):
    ROBUST.append((f"{strategy}-clean", {"strategy": strategy, **settings}, strategy))
    ROBUST.append((f"{strategy}-signflip", {"strategy": strategy, **settings, **SIGN_FLIP}, strategy))

#: Server-side fixed clipping at 2.0, about the L2 norm of a site's update in round 12 of the clean FedGIN run
#: (7.5 in round 1, 0.26 in round 40: `update_norm_*` in its rounds.csv): early rounds are clipped, late not.
CLIP = {"clipping": "fixed", "clip_on": "server", "clipping_norm": 2.0, "target_delta": 1e-3}
PRIVACY: list[tuple[str, dict, str]] = [
    ("no-dp", {}, "no DP"),  # the robust suite's fedavg-clean (linked, not trained again)
    *(
        (f"noise-{z:g}", {"privacy": {**CLIP, "noise_multiplier": z}}, f"z = {z:g}")
        for z in (0.01, 0.03, 0.1, 1.0)
    ),
]
SUITES = {"robust": ROBUST, "privacy": PRIVACY}
DEMO_CACHES = {
    "ts_ct": ("totalseg-ct", None),
    "ts_mri_t1": ("totalseg-mri", None),
    "ts_mri_t2": ("totalseg-mri", None),
    "amos": ("amos", "test"),
}


def prepare_caches(config: RunConfig) -> None:
    """The quick preset's 64 x 64 caches from the demo's data (kept when already prepared)."""
    for name, (source, split) in DEMO_CACHES.items():
        cache = ROOT / "runs" / "demo" / "cache64" / name
        if not (cache / "index.csv").is_file():
            root = ROOT / "runs" / "demo" / "data" / name
            if not root.is_dir():
                sys.exit(f"{root}: the demo's data are missing (run `make demo` or `fedgin demo --no-study`)")
            prepare(source, root, cache, config.preprocess, split_override=split, progress=False)


def run_variant(base: RunConfig, out: Path, name: str, overrides: dict) -> Path:
    federation = base.federation.model_dump(mode="json") | overrides
    config = RunConfig.model_validate(
        base.model_dump(mode="json") | {"name": name, "output": str(out / name), "federation": federation}
    )
    done = out / name / "summary.json"
    if not (done.is_file() and json.loads(done.read_text()).get("rounds") == config.federation.rounds):
        resume = (out / name / "checkpoints" / "last.pt").is_file()
        started = time.perf_counter()
        run_federation(config, resume=resume, overwrite=not resume)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    return out / name


def test_dice(run: Path) -> dict[str, float]:
    """Mean over test patients of the mean Dice over organs, per modality and over all patients."""
    eval_dir = run / "eval_last"
    per_case = eval_dir / "per_case.csv"
    if not per_case.is_file():
        evaluate_checkpoint(run / "checkpoints" / "last.pt", [TEST_CACHE], eval_dir, progress=False)
    cases: dict[str, list[float]] = defaultdict(list)
    modality: dict[str, str] = {}
    with open(per_case, newline="") as handle:
        for row in csv.DictReader(handle):
            cases[row["case_id"]].append(float(row["dice"]))
            modality[row["case_id"]] = row["modality"]
    means = {case: float(np.mean(values)) for case, values in cases.items()}
    result = {"all": float(np.mean(list(means.values())))}
    for kind in sorted(set(modality.values())):
        result[kind] = float(np.mean([means[case] for case in means if modality[case] == kind]))
    return result


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "rounds.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def flatness(rows: list[dict[str, str]]) -> float:
    """Change of the validation score over the last quarter of the rounds (mean of last 2 vs 2 before)."""
    scores = [float(row["val_score"]) for row in rows]
    quarter = max(2, len(scores) // 4)
    return float(np.mean(scores[-2:]) - np.mean(scores[-quarter - 2 : -quarter]))


def write_outputs(suite: str, rows: list[dict], curves: dict[str, list[float]], docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with open(docs / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = [f"{value:.3f}" if isinstance(value, float) else str(value) for value in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    (docs / "results.md").write_text("\n".join(lines) + "\n")

    figure, (bars, lines_axis) = plt.subplots(1, 2, figsize=(12, 4.2))
    if suite == "robust":
        dice = {(r["strategy"], r["poisoned"] == "none"): r["test_dice"] for r in rows}
        # strategies with both runs measured
        labels = [
            s for s in dict.fromkeys(r["strategy"] for r in rows) if (s, True) in dice and (s, False) in dice
        ]
        clean = [dice[s, True] for s in labels]
        bad = [dice[s, False] for s in labels]
        x = np.arange(len(labels))
        bars.bar(x - 0.2, clean, 0.4, label="no poisoned site")
        bars.bar(x + 0.2, bad, 0.4, label=f"{POISONED_SITE} sign-flipped")
        bars.set_xticks(x, labels)
        bars.set_title("final test Dice (AMOS-layout set, mean over organs)")
    else:
        labels = [row["variant"] for row in rows]
        x = np.arange(len(labels))
        bars.bar(x, [row["test_dice"] for row in rows])
        bars.set_xticks(
            x,
            [
                f"{row['variant']}\neps {row['epsilon']:.3g}"
                if not math.isnan(row["epsilon"])
                else row["variant"]
                for row in rows
            ],
        )
        bars.tick_params(axis="x", labelsize=7)
        bars.set_title("final test Dice vs noise (epsilon at the run's delta)")
    bars.set_ylim(0, 1)
    bars.set_ylabel("Dice")
    bars.legend() if suite == "robust" else None
    for name, scores in curves.items():
        lines_axis.plot(range(1, len(scores) + 1), scores, label=name)
    lines_axis.set_xlabel("round")
    lines_axis.set_ylabel("validation score (mean Dice over domains)")
    lines_axis.set_title("validation score of the global model per round")
    lines_axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(docs / f"{suite}.png", dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "four_sites")
    parser.add_argument("--docs", type=Path, default=None, help="default: docs/robustness or docs/privacy")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    args = parser.parse_args()
    base = load_toml(args.base, RunConfig)
    prepare_caches(base)
    out = args.out / args.suite
    if (
        args.suite == "privacy"
        and not (out / "no-dp").exists()
        and (args.out / "robust" / "fedavg-clean").is_dir()
    ):
        out.mkdir(parents=True, exist_ok=True)
        (out / "no-dp").symlink_to(Path("..") / "robust" / "fedavg-clean")  # the same run (same config)
    docs = args.docs or ROOT / "docs" / ("robustness" if args.suite == "robust" else "privacy")
    rows, curves = [], {}
    for name, overrides, label in SUITES[args.suite]:
        if args.only is not None and name not in args.only:
            continue
        run = run_variant(base, out, name, overrides)
        dice = test_dice(run)
        rounds = history(run)
        summary = json.loads((run / "summary.json").read_text())
        row = {"variant": name}
        if args.suite == "robust":
            row |= {"strategy": label, "poisoned": "sign_flip" if "fault" in overrides else "none"}
        else:
            last = rounds[-1]
            row |= {
                "epsilon": float(last.get("epsilon") or math.nan),
                "delta": overrides.get("privacy", {}).get("target_delta", math.nan),
            }
        row |= {
            "test_dice": dice["all"],
            "test_dice_ct": dice.get("ct", math.nan),
            "test_dice_mri": dice.get("mri", math.nan),
            "final_val": float(rounds[-1]["val_score"]),
            "best_val": float(summary["best"]["score"] if "best" in summary else summary["best_score"]),
            "val_change_last_quarter": flatness(rounds),
            "minutes": float(summary.get("seconds", math.nan)) / 60,
        }
        rows.append(row)
        curves[name] = [float(r["val_score"]) for r in rounds]
        print(json.dumps(row), flush=True)
    if rows:
        write_outputs(args.suite, rows, curves, docs)
        print(f"wrote {docs}/results.csv, results.md and {args.suite}.png")


if __name__ == "__main__":
    main()
