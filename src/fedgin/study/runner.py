"""Running a study: prepare its sources, train and test every planned run, resume what is unfinished."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from fedgin.config import dump_toml, read_toml
from fedgin.errors import ConfigError, FedginError
from fedgin.folders import MARKER, check_fillable, mark
from fedgin.folders import remove as remove_folder
from fedgin.io_utils import atomic_write_json
from fedgin.study.config import METHODS, StudyConfig
from fedgin.study.plan import PlannedRun, plan_study, unique_runs

#: Written into a run's folder once it is trained and tested; a run without it is (re)done on resume.
DONE_FILE = "done.json"
TEST_DIR = "test"
#: The fingerprints of the cached cases the study's runs were trained and tested on.
DATA_FILE = "data.json"
#: Where the last call of run_study spent its time (preparing, reporting); the profile reads it.
TIMING_FILE = "timing.json"


class StudyDataChanged(ConfigError):
    """The caches of a study changed since its finished runs used them (resuming would mix two data sets)."""


def data_fingerprint(config: StudyConfig) -> dict[str, str]:
    """Cache folder -> SHA-256 over its cases' ids and preparation fingerprints (which change with the
    source files and the preprocessing), for every cache the study trains, validates or tests on."""
    from fedgin.cache import index_fingerprint, read_index

    specs = [*config.val, *config.test]
    for site in config.sites:
        specs += [*site.ct, *site.mri]
    return {
        cache: index_fingerprint(read_index(Path(cache))) for cache in sorted({str(s.cache) for s in specs})
    }


def _check_data(config: StudyConfig, resume: bool) -> None:
    """Refuse to continue a study whose caches changed; record the caches' fingerprints otherwise."""
    recorded = config.output / DATA_FILE
    now = data_fingerprint(config)
    if resume and recorded.is_file():
        before = json.loads(recorded.read_text(encoding="utf-8"))
        changed = sorted(cache for cache in {*before, *now} if before.get(cache) != now.get(cache))
        if changed:
            raise StudyDataChanged(
                f"{recorded}: the cached data changed since this study's runs used it "
                f"({', '.join(changed)}); use another output folder or --overwrite"
            )
    atomic_write_json(recorded, now)


@dataclass
class StudyResult:
    output: Path
    runs: list[PlannedRun]
    report: Path
    seconds: float


def prepare_sources(config: StudyConfig, console: Console) -> None:
    """Prepare the study's source data sets into caches (cases already cached are skipped)."""
    from fedgin.prepare import prepare

    for spec in config.prepare:
        report = prepare(spec.source, spec.root, spec.cache, config.preprocess, split_override=spec.split)
        if report.failed:
            raise ConfigError(
                f"{spec.root}: {len(report.failed)} cases failed to prepare:\n" + "\n".join(report.failed)
            )
        console.print(f"{spec.cache}: {len(report.prepared)} prepared, {len(report.skipped)} unchanged")


def _check_output(config: StudyConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two different studies in one folder; --resume only continues the same study;
    --overwrite deletes only a study folder fedgin made (fedgin.folders)."""
    recorded = config.output / "study.toml"
    check_fillable(config.output, "study")
    if overwrite:
        remove_folder(config.output, "study")
        return
    if not recorded.is_file():
        if config.output.is_dir() and any(config.output.iterdir()) and not resume:
            raise ConfigError(f"{config.output}: folder is not empty; pass --overwrite to replace it")
        return
    if not resume:
        if {path.name for path in config.output.iterdir()} <= {recorded.name, MARKER}:
            return  # an earlier start was refused before anything ran: there is nothing to continue
        raise ConfigError(
            f"{config.output}: a study is already here; pass --resume to continue it or --overwrite"
        )
    before = read_toml(recorded)
    # Read back through today's StudyConfig, so that settings added since (with their defaults) and
    # other spellings of one value do not count as a change; what no longer validates does.
    with contextlib.suppress(FedginError, ValueError):
        before = StudyConfig.model_validate(before).model_dump(mode="json", exclude_none=True)
    now = config.model_dump(mode="json", exclude_none=True)
    # Where runs log their curves (tracking) and whether the matrix is made (cross_site) change no result;
    # methods and seeds may be added or dropped, as each has folders of its own.
    for key in ("tracking", "cross_site", "stats", "methods", "seeds"):
        before.pop(key, None)
        now.pop(key, None)
    if before != now:
        changed = sorted(key for key in {*before, *now} if before.get(key) != now.get(key))
        raise ConfigError(
            f"{recorded}: the study here was run with other settings ({', '.join(changed)} differ); "
            "use another output folder or --overwrite"
        )


def train_and_test(run: PlannedRun, config: StudyConfig, log: Console) -> dict:
    """Train one run (continuing a partial one), evaluate its best model on the test caches, mark it done."""
    from fedgin.evaluation.evaluate import evaluate_checkpoint
    from fedgin.federation import run_federation
    from fedgin.study.report import overlay_case_ids
    from fedgin.training.trainer import run_training

    run_dir = run.run_dir
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    started = time.perf_counter()
    if METHODS[run.method].federated:
        result = run_federation(run.config, resume=resume, overwrite=not resume, console=log)
        best_score, best_at = result.best_score, result.best_round
    else:
        trained = run_training(run.config, resume=resume, overwrite=not resume, console=log)
        best_score, best_at = trained.best_score, trained.best_step
    train_seconds = time.perf_counter() - started
    evaluate_checkpoint(
        run_dir / "checkpoints" / "best.pt",
        [spec.cache for spec in config.test],
        run_dir / TEST_DIR,
        split=evaluation_split(config),
        device=run.config.train.device,
        progress=False,
        method=run.label,
        keep_slices=overlay_case_ids(config),
    )
    done = {
        "method": run.method,
        "site": run.site,
        "seed": run.seed,
        "point": run.point,
        "budget_steps": run.budget_steps,
        "best_val_score": best_score,
        "best_at": best_at,
        "train_seconds": round(train_seconds, 2),
        "test_seconds": round(time.perf_counter() - started - train_seconds, 2),
    }
    atomic_write_json(run_dir / DONE_FILE, done)
    return done


def evaluation_split(config: StudyConfig) -> str:
    """The split every test cache is evaluated on: the first test selection's (default test)."""
    return (config.test[0].splits or ["test"])[0]


def keep_missing_slices(config: StudyConfig, runs: list[PlannedRun]) -> None:
    """Keep the overlay slices that test evaluations by an earlier fedgin did not (resuming its study),
    predicting only those cases with the run's best checkpoint; a run without one is left as it is (the
    report then says that the overlay is missing)."""
    from fedgin.evaluation.evaluate import keep_best_slices
    from fedgin.evaluation.results import kept_slice_path
    from fedgin.study.plan import trained_dir
    from fedgin.study.report import main_point_of, overlay_case_ids, overlay_runs

    case_ids = overlay_case_ids(config)
    for run in overlay_runs(config, runs, main_point_of(runs)):
        folder = trained_dir(run, runs)
        missing = [case for case in case_ids if not kept_slice_path(folder / TEST_DIR, case).is_file()]
        checkpoint = folder / "checkpoints" / "best.pt"
        if missing and checkpoint.is_file():
            keep_best_slices(
                checkpoint,
                [spec.cache for spec in config.test],
                folder / TEST_DIR,
                missing,
                split=evaluation_split(config),
                device=run.config.train.device,
            )


def run_study(
    config: StudyConfig, resume: bool = False, overwrite: bool = False, console: Console | None = None
) -> StudyResult:
    """Run (or continue) every run of the study, then write report.md and its figures; Ctrl-C names
    --resume (finished runs are kept)."""
    console = console or Console()
    started = time.perf_counter()
    _check_output(config, resume, overwrite)
    config.output.mkdir(parents=True, exist_ok=True)
    mark(config.output, "study")
    dump_toml(config, config.output / "study.toml")
    try:
        return _run_study(config, resume, console, started)
    except KeyboardInterrupt:
        # Not a run's own hint (a federation's "--overwrite" would delete the study's finished runs).
        raise KeyboardInterrupt(
            f"interrupted: the finished runs are kept in {config.output}; continue the study with --resume"
        ) from None


def _run_study(config: StudyConfig, resume: bool, console: Console, started: float) -> StudyResult:
    from fedgin.study.cross_site import run_cross_site_evaluations
    from fedgin.study.report import write_report
    from fedgin.study.site_data import run_site_statistics

    prepare_sources(config, console)
    prepared = time.perf_counter()
    _check_data(config, resume)
    if config.stats:
        run_site_statistics(config, console, resume)
    runs = plan_study(config)
    todo = unique_runs(runs)
    budget = ", ".join(map(str, sorted({run.budget_steps for run in runs if run.site is None})))
    local = config.federation.rounds * (config.federation.local_steps or 0)
    console.print(
        f"[bold]{config.name}[/]: {config.scenario} scenario, {len(config.seeds)} seeds, "
        f"{len(config.methods)} methods, {len(todo)} runs to train; step budget {budget} per model "
        f"(local models {local})"
    )
    trained_now: list[str] = []
    for index, run in enumerate(todo, 1):
        where = f"[{index}/{len(todo)}] seed {run.seed}" + (
            f", {run.point}" if run.point != "complete" else ""
        )
        if (run.run_dir / DONE_FILE).is_file():
            console.print(f"{where}: {run.label} done before ({run.run_dir})")
            continue
        run.run_dir.mkdir(parents=True, exist_ok=True)
        with open(run.run_dir.parent / f"{run.run_dir.name}.log", "a", encoding="utf-8") as handle:
            log = Console(file=handle, width=120, force_terminal=False)
            console.print(f"{where}: {run.label} ...", end=" ")
            done = train_and_test(run, config, log)
            trained_now.append(str(run.run_dir))
        console.print(
            f"best val {done['best_val_score']:.3f}, {done['train_seconds']:.0f} s train + "
            f"{done['test_seconds']:.0f} s test"
        )
    if config.cross_site:
        run_cross_site_evaluations(config, runs, console)
    reporting = time.perf_counter()
    keep_missing_slices(config, runs)
    report = write_report(config, runs)
    seconds = time.perf_counter() - started
    # Where this call's time went (runs trained in an earlier call have their times in done.json).
    atomic_write_json(
        config.output / TIMING_FILE,
        {
            "seconds": round(seconds, 2),
            "prepare_seconds": round(prepared - started, 2),
            "report_seconds": round(time.perf_counter() - reporting, 2),
            "trained": trained_now,
        },
    )
    console.print(f"study {config.output} in {seconds / 60:.1f} min; report: {report}")
    return StudyResult(config.output, runs, report, seconds)


__all__ = ["DONE_FILE", "TEST_DIR", "StudyResult", "keep_missing_slices", "run_study", "train_and_test"]
