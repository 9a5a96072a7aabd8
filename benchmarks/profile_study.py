"""Where a study's wall time goes: training steps, validation, test inference, Flower/Ray, caches, report.

Reads what a finished study folder records (no re-running): each run's done.json, metrics.csv or rounds.csv
and summary.json, and the study's timing.json. Usage:

    python benchmarks/profile_study.py runs/demo/study-complete [--markdown]

Pooled runs (centralized, CT-only, MRI-only, local): `train_seconds` of metrics.csv are the optimizer steps
(data, GIN, forward, backward), `val_seconds` the validations; the rest of the run (building the slice
data set, checkpoints, learning-curve plots) is "run set-up and checkpoints". Federations: the rounds' wall
time less the server's validation is "federated rounds" (the sites train in parallel, two at a time on
2 cores; it includes building each round's data set and model and the messages); the run's time outside
its round loop is "Flower/Ray start-up and shut-down".
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _sum(rows: list[dict[str, str]], column: str) -> float:
    return sum(float(row[column]) for row in rows if row.get(column) not in (None, ""))


def profile(study: Path) -> tuple[dict[str, float], float, dict]:
    """(category -> seconds, the study's wall seconds, details) of a finished study folder."""
    shares: dict[str, float] = defaultdict(float)
    details: dict = {"runs": 0, "steps": 0, "client_step_seconds": 0.0}
    for done_path in sorted(study.glob("runs/**/done.json")):
        run = done_path.parent
        done = json.loads(done_path.read_text(encoding="utf-8"))
        details["runs"] += 1
        shares["test inference"] += float(done["test_seconds"])
        train = float(done["train_seconds"])
        if (run / "rounds.csv").is_file():
            rows = _rows(run / "rounds.csv")
            summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
            rounds = float(summary.get("rounds_seconds") or _sum(rows, "seconds"))
            validation = _sum(rows, "val_seconds")
            shares["validation"] += validation
            shares["federated rounds (sites training in parallel)"] += rounds - validation
            shares["Flower/Ray start-up and shut-down"] += train - rounds
            details["client_step_seconds"] += sum(
                float(value) for row in rows for key, value in row.items() if key.startswith("train_seconds_")
            )
        else:
            rows = _rows(run / "metrics.csv")
            steps, validation = _sum(rows, "train_seconds"), _sum(rows, "val_seconds")
            shares["training steps"] += steps
            shares["validation"] += validation
            shares["run set-up and checkpoints"] += train - steps - validation
            details["steps"] += int(done["budget_steps"])
    timing_path = study / "timing.json"
    timing = json.loads(timing_path.read_text(encoding="utf-8")) if timing_path.is_file() else {}
    shares["preparing caches"] += float(timing.get("prepare_seconds", 0.0))
    shares["report (tables, figures, overlays)"] += float(timing.get("report_seconds", 0.0))
    total = float(timing.get("seconds", sum(shares.values())))
    shares["other (study bookkeeping)"] = max(0.0, total - sum(shares.values()))
    return dict(shares), total, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    shares, total, details = profile(args.study)
    lines = [f"{args.study}: {total:.0f} s ({total / 60:.1f} min), {details['runs']} runs"]
    if args.markdown:
        lines = ["| part | seconds | share |", "| --- | ---: | ---: |"]
    for name, seconds in sorted(shares.items(), key=lambda item: -item[1]):
        share = 100 * seconds / total if total else 0.0
        lines.append(f"| {name} | {seconds:.0f} | {share:.1f} % |" if args.markdown
                     else f"  {name:<48} {seconds:8.1f} s  {share:5.1f} %")  # fmt: skip
    lines.append(
        f"(the sites' own optimizer steps inside the federated rounds add up to "
        f"{details['client_step_seconds']:.0f} s of worker time)"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
