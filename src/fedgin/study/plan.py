"""The study's runs: one RunConfig per (seed, scenario point, method, site), with one step budget."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from fedgin.config import ClientSpec, DataConfig, DataSpec, RunConfig, TrackingConfig
from fedgin.errors import ConfigError
from fedgin.study.config import METHODS, MethodInfo, StudyConfig, StudySite, parse_ratio
from fedgin.training.data import select_cases


@dataclass
class SiteData:
    """A site's training data at one scenario point (empty lists when it holds none there)."""

    name: str
    ct: list[DataSpec] = field(default_factory=list)
    mri: list[DataSpec] = field(default_factory=list)

    @property
    def specs(self) -> list[DataSpec]:
        return [*self.ct, *self.mri]


@dataclass
class PlannedRun:
    """One training run of the study and where its results go."""

    seed: int
    point: str  # "complete" or the limited scenario's MRI:CT ratio
    method: str
    site: str | None
    config: RunConfig
    budget_steps: int
    n_ct_cases: int
    n_mri_cases: int
    identity: str = ""  # hash of what determines the result: equal runs are trained once

    @property
    def label(self) -> str:
        name = METHODS[self.method].label
        return f"{name} ({self.site})" if self.site else name

    @property
    def run_dir(self) -> Path:
        return self.config.output


def count_cases(specs: list[DataSpec]) -> int:
    return sum(len(select_cases(spec, ["train"])) for spec in specs)


def _take(specs_by_site: list[tuple[str, list[DataSpec]]], wanted: int | None) -> dict[str, list[DataSpec]]:
    """Narrow data specs (sites in order) to `wanted` cases in all; None keeps everything."""
    taken: dict[str, list[DataSpec]] = {}
    remaining = wanted
    for site, specs in specs_by_site:
        for spec in specs:
            available = len(select_cases(spec, ["train"]))
            take = available if remaining is None else min(available, remaining)
            if take > 0:
                taken.setdefault(site, []).append(
                    spec.model_copy(update={"max_cases": take}) if take < available else spec
                )
            if remaining is not None:
                remaining -= take
    return taken


def scenario_points(config: StudyConfig) -> dict[str, list[SiteData]]:
    """Each scenario point's data per site: `complete` has one; `limited` one per MRI:CT ratio."""
    sites: list[StudySite] = config.sites
    if config.scenario == "complete":
        return {"complete": [SiteData(site.name, list(site.ct), list(site.mri)) for site in sites]}
    mri = _take([(site.name, site.mri) for site in sites], config.limited_mri_cases)
    n_mri = count_cases([spec for specs in mri.values() for spec in specs])
    if n_mri < config.limited_mri_cases:
        raise ConfigError(
            f"limited scenario: limited_mri_cases is {config.limited_mri_cases} but the sites hold only "
            f"{n_mri} MRI training cases"
        )
    points = {}
    for ratio in config.ratios:
        per_mri = parse_ratio(ratio)
        wanted = None if per_mri is None else round(per_mri * n_mri)
        ct = _take([(site.name, site.ct) for site in sites], wanted) if wanted != 0 else {}
        points[ratio] = [SiteData(site.name, ct.get(site.name, []), mri.get(site.name, [])) for site in sites]
    return points


def _identity(config: RunConfig) -> str:
    """What decides a run's result (not its name or folder): equal identities give equal models."""
    data = config.model_dump(mode="json", exclude={"name", "output", "tracking"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _run_config(
    study: StudyConfig,
    seed: int,
    output: Path,
    train: list[DataSpec],
    steps: int,
    method: MethodInfo,
    **federation: object,
) -> RunConfig:
    """A run of the study: the shared recipe with this run's data, seed, budget and the method's GIN
    (on or off, with or without IPA)."""
    return RunConfig(
        name=f"{study.name}/{output.name}",
        seed=seed,
        output=output,
        data=DataConfig(train=train, val=list(study.val) or None),
        preprocess=study.preprocess,
        model=study.model,
        gin=study.gin.model_copy(update={"enabled": method.gin, "ipa": method.gin and method.ipa}),
        affine=study.affine,
        # Pooled runs validate (and keep their best model) as often as a federation does: once a round.
        train=study.train.model_copy(
            update={
                "steps": steps,
                "epochs": None,
                "val_interval": max(1, steps // study.federation.rounds),
                "checkpoint_interval": max(1, steps // study.federation.rounds),
            }
        ),
        federation=study.federation.model_copy(update=federation),
        tracking=TrackingConfig(tensorboard=_tensorboard_dir(study, output)),
    )


def _tensorboard_dir(study: StudyConfig, output: Path) -> Path | None:
    """A run's TensorBoard folder: the study's, then the run's place under runs/ (seed, scenario point)."""
    if study.tracking.tensorboard is None:
        return None
    return study.tracking.tensorboard / output.parent.relative_to(study.output / "runs")


def _weighting(config: StudyConfig, method: MethodInfo, active: list[SiteData]) -> str:
    """The federation weighting of a method at a scenario point. Where the sites hold one modality only
    (the limited scenario's 1:0), balancing modalities weighs like the examples do, so the run is the
    same as its unbalanced twin's and is trained once."""
    if method.weighting == "examples":
        return config.federation.weighting
    modalities = {name for site in active for name in ("ct", "mri") if getattr(site, name)}
    return method.weighting if len(modalities) > 1 else "examples"


def plan_study(config: StudyConfig) -> list[PlannedRun]:
    """Every run of the study, in the order they are trained (seed by seed)."""
    runs: list[PlannedRun] = []
    rounds, local_steps = config.federation.rounds, int(config.federation.local_steps or 0)
    points = scenario_points(config)
    for seed in config.seeds:
        for point, sites in points.items():
            active = [site for site in sites if site.specs]
            budget = rounds * local_steps * len(active)  # total optimizer steps of the whole federation
            folder = (
                config.output
                / "runs"
                / f"seed{seed}"
                / (point.replace(":", "-") if point != "complete" else "")
            )

            for method in config.methods:
                info = METHODS[method]
                n_ct = count_cases([s for site in active for s in site.ct])
                n_mri = count_cases([s for site in active for s in site.mri])
                if info.data == "site":
                    for site in active:
                        local = _run_config(
                            config,
                            seed,
                            folder / f"local-{site.name}",
                            site.specs,
                            rounds * local_steps,
                            info,
                        )
                        runs.append(
                            PlannedRun(seed, point, method, site.name, local, rounds * local_steps,
                                       count_cases(site.ct), count_cases(site.mri))
                        )  # fmt: skip
                    continue
                if info.federated:
                    clients = [ClientSpec(name=site.name, data=site.specs) for site in active]
                    run = _run_config(
                        config, seed, folder / method, [], budget, info, clients=clients,
                        min_clients=len(clients), server_eval=list(config.val),
                        weighting=_weighting(config, info, active),
                    )  # fmt: skip
                else:
                    pooled = {
                        "ct": [s for site in active for s in site.ct],
                        "mri": [s for site in active for s in site.mri],
                        "all": [s for site in active for s in site.specs],
                    }[info.data]
                    if not pooled:
                        continue  # e.g. CT-only where the scenario point holds no CT
                    run = _run_config(config, seed, folder / method, pooled, budget, info)
                    n_ct = n_ct if info.data != "mri" else 0
                    n_mri = n_mri if info.data != "ct" else 0
                runs.append(PlannedRun(seed, point, method, None, run, budget, n_ct, n_mri))
    for run in runs:
        run.identity = _identity(run.config)
    return runs


def unique_runs(runs: list[PlannedRun]) -> list[PlannedRun]:
    """The first run of each identity (limited: a site's local model is the same at every ratio)."""
    seen: dict[str, PlannedRun] = {}
    for run in runs:
        seen.setdefault(run.identity, run)
    return list(seen.values())


def trained_dir(run: PlannedRun, runs: list[PlannedRun]) -> Path:
    """Where the model of `run` was trained (its own folder, or that of an identical earlier run)."""
    return next(other.run_dir for other in runs if other.identity == run.identity)


__all__ = [
    "PlannedRun",
    "SiteData",
    "count_cases",
    "plan_study",
    "scenario_points",
    "trained_dir",
    "unique_runs",
]
