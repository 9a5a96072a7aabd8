"""Calibration of the synthetic protocol mixes (SPEC section 5): CT-only and MRI-only, with and without GIN.

Trains four 2D U-Nets (0.21M parameters, 4000 steps of batch 8, lr 1e-3, seed 42) on the demo's
TotalSegmentator-like training sets: CT only, and MRI T1 + T2, each without and with GIN. Tests each on
held-out sets of the same mixes (other subjects) and on a larger AMOS-like set, and prints per test set and
per protocol the mean over patients of each patient's mean Dice over the five organs, with the AMOS-like
protocols split into those a training mix holds (seen) and the others (unseen).

    python benchmarks/calibrate_synth.py --out runs/calibration     # about 50 minutes on 2 CPU cores

Everything it writes stays under --out; a second call continues (finished runs are kept).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

RUNS = {
    "ct_no_gin": ("ct", False),
    "ct_gin": ("ct", True),
    "mri_no_gin": ("mri", False),
    "mri_gin": ("mri", True),
}
#: Held-out sets: (name, layout, modalities, mix, subjects, seed).
HELD_OUT = (
    ("ts_ct_held_out", "totalseg", "ct", "totalseg-ct", 24, 11),
    ("ts_mri_held_out", "totalseg", "mri_t1,mri_t2", "totalseg-mri", 24, 12),
    ("amos_test", "amos", "ct,mri_t1,mri_t2", "amos", 30, 13),
)


def fedgin(*args: object) -> None:
    command = [sys.executable, "-m", "fedgin", *map(str, args)]
    print("$ fedgin " + " ".join(map(str, args)), flush=True)
    subprocess.run(command, check=True)


def run_toml(out: Path, name: str, kind: str, gin: bool) -> Path:
    demo = out / "demo" / "cache"
    caches = [demo / "ts_ct"] if kind == "ct" else [demo / "ts_mri_t1", demo / "ts_mri_t2"]
    train = "".join(f'[[data.train]]\ncache = "{cache.as_posix()}"\n' for cache in caches)
    path = out / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nseed = 42\noutput = "{(out / "runs" / name).as_posix()}"\n{train}'
        f"[gin]\nenabled = {str(gin).lower()}\n"
        "[model]\nchannels = [16, 32, 64, 128]\nstrides = [2, 2, 2]\n"
        "[train]\nsteps = 4000\nbatch_size = 8\nlr = 0.001\nval_interval = 500\nval_max_cases = 3\n",
        encoding="utf-8",
    )
    return path


def patients(per_case: Path) -> list[tuple[float, str, str, str]]:
    """(mean Dice over organs, source, domain, protocol) per patient."""
    dice: dict[str, list[float]] = defaultdict(list)
    meta: dict[str, tuple[str, str, str]] = {}
    with open(per_case, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["organ"] != "mean":
                dice[row["case_id"]].append(float(row["dice"]))
                meta[row["case_id"]] = (row["source"], row["domain"], row["protocol"])
    return [(statistics.fmean(values), *meta[case]) for case, values in dice.items()]


def tables(out: Path) -> str:
    from fedgin.synth.protocols import MIXES

    seen = set(MIXES["totalseg-ct"]) | set(MIXES["totalseg-mri"])
    columns = [("TS CT", "totalseg-ct", "ct", None), ("TS T1", "totalseg-mri", "mri_t1", None),
               ("TS T2", "totalseg-mri", "mri_t2", None)]  # fmt: skip
    for label, domain in (("CT", "ct"), ("T1", "mri_t1"), ("T2", "mri_t2")):
        columns += [
            (f"AMOS {label} seen", "amos", domain, True),
            (f"AMOS {label} unseen", "amos", domain, False),
        ]
    lines = ["| model | " + " | ".join(c[0] for c in columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    by_protocol: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name in RUNS:
        rows = patients(out / "runs" / name / "eval" / "per_case.csv")
        cells = []
        for _, source, domain, wanted in columns:
            values = [
                v
                for v, s, d, p in rows
                if s == source and d == domain and (wanted is None or (p in seen) == wanted)
            ]
            cells.append(
                f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}" if values else ""
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for v, s, d, p in rows:
            by_protocol[(s, d, p)][name].append(v)
    lines += ["", "| test source | protocol | in a training mix | cases | " + " | ".join(RUNS) + " |"]
    lines.append("|" + " --- |" * (len(RUNS) + 4))
    for (source, _, protocol), values in sorted(by_protocol.items()):
        count = len(next(iter(values.values())))
        cells = [f"{statistics.fmean(values[name]):.2f}" for name in RUNS]
        known = "yes" if protocol in seen else "no"
        lines.append(f"| {source} | `{protocol}` | {known} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/calibration"))
    out = parser.parse_args().out
    fedgin("demo", "--out", out / "demo", "--no-study")
    for name, layout, modalities, mix, subjects, seed in HELD_OUT:
        data, cache = out / "data" / name, out / "cache" / name
        if not (data / ("dataset.json" if layout == "amos" else "meta.csv")).is_file():
            fedgin("synth", "--out", data, "--layout", layout, "--modality", modalities, "--protocols", mix,
                   "--subjects", subjects, "--seed", seed, "--overwrite")  # fmt: skip
        source = "amos" if layout == "amos" else ("totalseg-ct" if modalities == "ct" else "totalseg-mri")
        fedgin("prepare", "--source", source, "--root", data, "--out", cache, "--split", "test")
    tests = [arg for name, *_ in HELD_OUT for arg in ("--data", out / "cache" / name)]
    for name, (kind, gin) in RUNS.items():
        run_dir = out / "runs" / name
        if (run_dir / "eval" / "per_case.csv").is_file():
            continue
        resume = "--resume" if (run_dir / "checkpoints" / "last.pt").is_file() else "--overwrite"
        fedgin("train", "--config", run_toml(out, name, kind, gin), resume)
        fedgin("evaluate", "--checkpoint", run_dir / "checkpoints" / "best.pt", *tests,
               "--out", run_dir / "eval", "--method", name)  # fmt: skip
    report = tables(out)
    (out / "calibration.md").write_text(report + "\n", encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
