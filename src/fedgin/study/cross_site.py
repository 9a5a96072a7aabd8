"""The study's cross-site evaluation: every federated model and every local model on every site's held-out
cases, on Flower (fedgin.federation.cross_site), once per seed and scenario point.

Each local model scored at the other sites shows what federation buys each hospital: a site's own model
against the federated ones on its own cases and on the others'.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from fedgin.config import ClientSpec
from fedgin.study.config import METHODS, StudyConfig
from fedgin.study.plan import PlannedRun, trained_dir

#: The methods whose models the study evaluates across sites.
CROSS_SITE_METHODS = (*(name for name, info in METHODS.items() if info.federated), "local")
CROSS_SITE_DIR = "cross_site"


def cross_site_dir(config: StudyConfig, seed: int, point: str) -> Path:
    """Where the study keeps one seed's (and scenario point's) cross-site evaluation."""
    folder = config.output / CROSS_SITE_DIR / f"seed{seed}"
    return folder if point == "complete" else folder / point.replace(":", "-")


def evaluated_runs(runs: Sequence[PlannedRun], seed: int, point: str) -> list[PlannedRun]:
    return [r for r in runs if r.seed == seed and r.point == point and r.method in CROSS_SITE_METHODS]


def run_cross_site_evaluations(config: StudyConfig, runs: Sequence[PlannedRun], console: Console) -> None:
    """The cross-site matrix of every (seed, point) whose models are all trained; an evaluation already
    done for the same models is kept (a resumed study does not repeat it)."""
    from fedgin.federation.cross_site import Model, run_cross_site

    if config.federation.fedbn:
        console.print("cross-site evaluation skipped: FedBN keeps each site's normalisation layers local")
        return
    for seed in config.seeds:
        for point in dict.fromkeys(run.point for run in runs):
            chosen = evaluated_runs(runs, seed, point)
            federated = [run for run in chosen if run.site is None]
            local = [run for run in chosen if run.site is not None]
            if not chosen:
                continue
            checkpoints = {run.label: trained_dir(run, runs) / "checkpoints" / "best.pt" for run in chosen}
            if not all(path.is_file() for path in checkpoints.values()):
                continue
            out = cross_site_dir(config, seed, point)
            recorded = out / "cross_site.json"
            wanted = {name: str(path) for name, path in checkpoints.items()}
            if recorded.is_file() and json.loads(recorded.read_text(encoding="utf-8"))["models"] == wanted:
                continue
            base = (federated or local)[0].config
            if federated:
                clients = list(base.federation.clients)
            else:
                clients = [ClientSpec(name=run.site, data=run.config.data.train) for run in local]
            run_config = base.model_copy(
                update={
                    "output": out.parent,
                    "federation": base.federation.model_copy(update={"clients": clients, "fedbn": False}),
                }
            )
            where = f"seed {seed}" + (f", {point}" if point != "complete" else "")
            console.print(f"cross-site evaluation ({where}): {len(chosen)} models x {len(clients)} sites ...")
            models = [Model.from_checkpoint(name, path) for name, path in checkpoints.items()]
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out.parent / f"{out.name}.log", "a", encoding="utf-8") as handle:
                run_cross_site(run_config, models, out, console=Console(file=handle, width=120))


__all__ = ["CROSS_SITE_DIR", "CROSS_SITE_METHODS", "cross_site_dir", "run_cross_site_evaluations"]
