"""The main job on the embedded synthetic data set: generate, prepare and inspect it."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from fedgin.config import PreprocessConfig, SynthConfig
from fedgin.io_utils import atomic_write_json


@dataclass(frozen=True)
class DemoDataset:
    """One synthetic data set of the demo and how it is prepared."""

    name: str
    layout: str
    source: str
    modalities: tuple[str, ...]
    seed: int
    split: str | None = None


#: Training sites hold unpaired data (each data set has its own seed, hence its own subjects); the AMOS-layout
#: set is the held-out test source, as AMOS is in the study.
DEMO_DATASETS: tuple[DemoDataset, ...] = (
    DemoDataset("ts_ct", "totalseg", "totalseg-ct", ("ct",), seed=1),
    DemoDataset("ts_mri_t1", "totalseg", "totalseg-mri", ("mri_t1",), seed=2),
    DemoDataset("ts_mri_t2", "totalseg", "totalseg-mri", ("mri_t2",), seed=3),
    DemoDataset("amos", "amos", "amos", ("ct", "mri_t1", "mri_t2"), seed=4, split="test"),
)


@dataclass
class DemoResult:
    out: Path
    caches: dict[str, Path] = field(default_factory=dict)
    preview: Path | None = None


def generate_once(dataset: DemoDataset, config: SynthConfig, folder: Path, console: Console) -> None:
    """Generate `folder` unless it already holds this exact configuration (then it is reused)."""
    from fedgin.synth import generate

    record = folder.with_name(folder.name + ".synth.json")
    wanted = {"layout": dataset.layout, **config.model_dump(mode="json")}
    if folder.is_dir() and record.is_file() and json.loads(record.read_text()) == wanted:
        console.print(f"reusing {folder}")
        return
    # Generate beside the target and move it in place, so an interrupted run never leaves a half data set
    # that a later run would take for a whole one.
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    summary = generate(config, dataset.layout, partial, overwrite=True)  # type: ignore[arg-type]
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    atomic_write_json(record, wanted)
    console.print(
        f"generated {folder}: {len(summary.cases)} cases, {summary.seconds_per_subject:.2f} s per subject"
    )


def run_demo(
    out: Path,
    subjects: int = 30,
    workers: int = 2,
    preprocess: PreprocessConfig | None = None,
    console: Console | None = None,
) -> DemoResult:
    """Generate the embedded data sets, prepare a cache of each and print what they hold."""
    from fedgin.cache import Cache, summarize
    from fedgin.prepare import prepare
    from fedgin.synth import save_preview

    console = console or Console()
    preprocess = preprocess or PreprocessConfig()
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out=out)
    configs = {
        dataset.name: SynthConfig(
            subjects=subjects if dataset.layout == "totalseg" else max(2, subjects // 3),
            seed=dataset.seed,
            modalities=list(dataset.modalities),
        )
        for dataset in DEMO_DATASETS
    }
    atomic_write_json(
        out / "demo.json",
        {
            "synth": {name: config.model_dump(mode="json") for name, config in configs.items()},
            "preprocess": preprocess.model_dump(mode="json"),
        },
    )

    console.rule("1. synthetic data")
    for dataset in DEMO_DATASETS:
        generate_once(dataset, configs[dataset.name], out / "data" / dataset.name, console)
    result.preview = save_preview(out / "preview.png", configs["amos"], ["ct", "mri_t1", "mri_t2"])

    console.rule("2. preprocessing into caches")
    failures: list[str] = []
    for dataset in DEMO_DATASETS:
        cache_dir = out / "cache" / dataset.name
        report = prepare(
            dataset.source,
            out / "data" / dataset.name,
            cache_dir,
            preprocess,
            workers=workers,
            split_override=dataset.split,
        )
        failures.extend(report.failed)
        result.caches[dataset.name] = cache_dir
        console.print(
            f"{cache_dir}: {len(report.prepared)} prepared, {len(report.skipped)} unchanged, "
            f"{len(report.failed)} failed"
        )
    if failures:
        from fedgin.errors import FedginError

        raise FedginError("demo data failed to prepare:\n" + "\n".join(failures))

    console.rule("3. what the caches hold")
    for name, cache_dir in result.caches.items():
        console.print(f"[bold]{name}[/]: {cache_dir}")
        console.print(summarize(Cache(cache_dir)))
    console.print(f"\npreview of the synthetic modalities: {result.preview}")
    console.print(f"prepared caches: {out / 'cache'}")
    return result


def run_demo_study(out: Path, scenario: str = "complete", console: Console | None = None) -> Path:
    """The `quick` study preset on the demo's caches (continued if it ran before); returns report.md."""
    from rich.markdown import Markdown

    from fedgin.study import load_study, preset_path, run_study
    from fedgin.study.report import aggregate, collect_results, main_table

    console = console or Console()
    config = load_study(preset_path("quick", scenario))
    # The preset names the caches under runs/demo; follow the demo's folder.
    config = type(config).model_validate_json(
        config.model_dump_json().replace('"runs/demo/', f'"{out.as_posix().rstrip("/")}/')
    )
    console.rule(f"4. the quick FedGIN study ({scenario} data)")
    result = run_study(config, resume=True, console=console)
    rows = collect_results(result.runs)
    tests = [
        title for title in ("CT", "MRI", "MRI T1", "MRI T2") if any(row["test"] == title for row in rows)
    ]
    point = result.runs[0].point
    console.print(Markdown("**Test Dice, mean over organs (mean ± std over seeds)**\n\n"
                           + main_table(aggregate(rows, "dice"), result.runs, point, tests)))  # fmt: skip
    console.print(f"report: {result.report}")
    return result.report
