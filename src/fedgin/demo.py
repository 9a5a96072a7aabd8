"""The main job on the embedded synthetic data set: generate, prepare and inspect it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from fedgin.config import PreprocessConfig, SynthConfig
from fedgin.io_utils import atomic_write_json, staged_folder


@dataclass(frozen=True)
class DemoDataset:
    """One synthetic data set of the demo and how it is prepared."""

    name: str
    layout: str
    source: str
    modalities: tuple[str, ...]
    protocols: str
    seed: int
    split: str | None = None


#: Training sites hold unpaired data (each data set has its own seed, hence its own subjects) drawn from the
#: TotalSegmentator-like protocol mixes; the AMOS-layout set is the held-out test source, drawn from the
#: AMOS-like mix (other protocols and vendors), as AMOS is in the study.
DEMO_DATASETS: tuple[DemoDataset, ...] = (
    DemoDataset("ts_ct", "totalseg", "totalseg-ct", ("ct",), "totalseg-ct", seed=1),
    DemoDataset("ts_mri_t1", "totalseg", "totalseg-mri", ("mri_t1",), "totalseg-mri", seed=2),
    DemoDataset("ts_mri_t2", "totalseg", "totalseg-mri", ("mri_t2",), "totalseg-mri", seed=3),
    DemoDataset("amos", "amos", "amos", ("ct", "mri_t1", "mri_t2"), "amos", seed=4, split="test"),
)


#: The demo's study trains one seed, so that `make demo` stays within about 20 minutes on 2 CPU cores; the
#: quick preset (`fedgin study --preset quick`) trains two and reports mean +- std over them.
DEMO_SEEDS: tuple[int, ...] = (42,)


@dataclass
class DemoResult:
    out: Path
    caches: dict[str, Path] = field(default_factory=dict)
    preview: Path | None = None
    protocol_preview: Path | None = None
    #: Whether any data set was generated (not reused): results from earlier data no longer apply.
    regenerated: bool = False


def generate_once(dataset: DemoDataset, config: SynthConfig, folder: Path, console: Console) -> bool:
    """Generate `folder` unless it already holds this exact configuration (then it is reused).

    Returns whether it generated (False: reused).
    """
    from fedgin.synth import generate

    record = folder.with_name(folder.name + ".synth.json")
    wanted = {"layout": dataset.layout, **config.model_dump(mode="json")}
    if folder.is_dir() and record.is_file() and json.loads(record.read_text()) == wanted:
        console.print(f"reusing {folder}")
        return False
    # Generate beside the target and move it in place, so an interrupted run never leaves a half data set
    # that a later run would take for a whole one; only a data set fedgin made is replaced.
    with staged_folder(folder, "data") as staging:
        summary = generate(config, dataset.layout, staging)  # type: ignore[arg-type]
    atomic_write_json(record, wanted)
    console.print(
        f"generated {folder}: {len(summary.cases)} cases, {summary.seconds_per_subject:.2f} s per subject"
    )
    return True


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
    from fedgin.synth import resolve_mix, save_preview, save_protocol_preview

    console = console or Console()
    preprocess = preprocess or PreprocessConfig()
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out=out)
    configs = {
        dataset.name: SynthConfig(
            subjects=subjects if dataset.layout == "totalseg" else max(2, subjects // 2),
            seed=dataset.seed,
            modalities=list(dataset.modalities),
            protocols=dataset.protocols,
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
        made = generate_once(dataset, configs[dataset.name], out / "data" / dataset.name, console)
        result.regenerated |= made
    result.preview = save_preview(out / "preview.png", configs["amos"], ["ct", "mri_t1", "mri_t2"])
    # One subject under every protocol of the demo's mixes: what the scanners do to one anatomy.
    names: dict[str, None] = {}
    for dataset in DEMO_DATASETS:
        mix = resolve_mix(configs[dataset.name], dataset.layout)
        for modality in dataset.modalities:
            names.update(dict.fromkeys(sorted(mix.for_modality(modality))))
    result.protocol_preview = save_protocol_preview(out / "protocols.png", configs["amos"], list(names))

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
    console.print(f"one subject under every protocol: {result.protocol_preview}")
    console.print(f"prepared caches: {out / 'cache'}")
    return result


def run_demo_study(
    out: Path,
    scenario: str = "complete",
    console: Console | None = None,
    fresh: bool = False,
    seeds: list[int] | None = None,
) -> Path:
    """The `quick` study preset on the demo's caches (continued if it ran before); returns report.md.

    `seeds` (default DEMO_SEEDS) replaces the preset's seeds. `fresh` (the demo's data were just generated)
    or caches that changed since the study's runs used them start the study again: its earlier runs were
    trained on other data.
    """
    from rich.markdown import Markdown

    from fedgin.study import load_study, preset_path, run_study
    from fedgin.study.report import aggregate, collect_results, main_table

    console = console or Console()
    config = load_study(preset_path("quick", scenario))
    # The preset names the caches under runs/demo; follow the demo's folder.
    config = type(config).model_validate_json(
        config.model_dump_json().replace('"runs/demo/', f'"{out.as_posix().rstrip("/")}/')
    )
    config = config.model_copy(update={"seeds": list(seeds or DEMO_SEEDS)})
    from fedgin.study.runner import StudyDataChanged

    console.rule(f"4. the quick FedGIN study ({scenario} data)")
    if fresh and config.output.is_dir():
        console.print(f"the demo's data are new: {config.output} starts again")
    try:
        result = run_study(config, resume=not fresh, overwrite=fresh, console=console)
    except StudyDataChanged as changed:
        console.print(f"{changed}\n-> starting {config.output} again")
        result = run_study(config, overwrite=True, console=console)
    rows = collect_results(result.runs)
    tests = [
        title for title in ("CT", "MRI", "MRI T1", "MRI T2") if any(row["test"] == title for row in rows)
    ]
    point = result.runs[0].point
    console.print(Markdown("**Test Dice, mean over organs (mean ± std over seeds)**\n\n"
                           + main_table(aggregate(rows, "dice"), result.runs, point, tests)))  # fmt: skip
    console.print(f"report: {result.report}")
    return result.report
