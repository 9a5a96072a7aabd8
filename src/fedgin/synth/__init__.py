"""The embedded synthetic abdomen: one anatomy model per subject, rendered as CT, MRI T1 and MRI T2."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fedgin.config import SynthConfig
from fedgin.errors import ConfigError
from fedgin.synth.anatomy import Anatomy, Structure, Tissue, make_anatomy
from fedgin.synth.layouts import (
    Layout,
    affine_for,
    check_output_folder,
    plan_amos,
    plan_totalseg,
    write_amos_case,
    write_amos_dataset_json,
    write_totalseg_case,
    write_totalseg_meta,
)
from fedgin.synth.preview import save_preview
from fedgin.synth.render import SynthModality, render

__all__ = [
    "Anatomy",
    "Structure",
    "SynthCase",
    "SynthSummary",
    "Tissue",
    "generate",
    "make_subject",
    "save_preview",
    "subject_anatomy",
    "subject_image",
]

#: Stream tags that keep the anatomy, rendering and split random streams apart for one seed.
_ANATOMY_STREAM, _RENDER_STREAM, _SPLIT_STREAM = 0, 1, 2
_MODALITY_CODE: dict[str, int] = {"ct": 0, "mri_t1": 1, "mri_t2": 2}


@dataclass(frozen=True)
class SynthCase:
    """One written volume."""

    case_id: str
    subject: int
    modality: str
    split: str


@dataclass
class SynthSummary:
    """What `generate` wrote."""

    out: Path
    layout: str
    cases: list[SynthCase] = field(default_factory=list)
    seconds_per_subject: float = 0.0


def _seed_entropy(seed: int) -> int:
    return seed % 2**63  # SeedSequence wants a non-negative integer; negative seeds stay distinct


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_seed_entropy(seed), *stream]))


def subject_anatomy(config: SynthConfig, index: int) -> Anatomy:
    """Subject `index`'s anatomy: seeded by (seed, index) only, so every modality shows the same body."""
    return make_anatomy(tuple(config.shape), _rng(config.seed, _ANATOMY_STREAM, index))  # type: ignore[arg-type]


def subject_image(config: SynthConfig, index: int, modality: SynthModality, anatomy: Anatomy) -> np.ndarray:
    """Render `anatomy` in `modality`; noise, bias and jitter are seeded by (seed, index, modality)."""
    if modality not in _MODALITY_CODE:
        raise ConfigError(f"unknown synthetic modality {modality!r}; expected one of {list(_MODALITY_CODE)}")
    return render(anatomy, modality, _rng(config.seed, _RENDER_STREAM, index, _MODALITY_CODE[modality]))


def make_subject(
    config: SynthConfig, index: int, modality: SynthModality
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32 x-y-z, fedgin labels uint8 x-y-z, 4x4 RAS affine) of subject `index` in `modality`."""
    anatomy = subject_anatomy(config, index)
    image = subject_image(config, index, modality, anatomy)
    return image, anatomy.labels(), affine_for(config.spacing, config.shape)


def generate(
    config: SynthConfig,
    layout: Layout,
    out: Path,
    progress: bool = True,
    overwrite: bool = False,
) -> SynthSummary:
    """Write `config.subjects` subjects, once per modality, as NIfTI in the `layout` file layout.

    totalseg: `sXXXX/{ct,mri}.nii.gz` + `segmentations/` + `meta.csv`; one data set is CT or MRI (several MRI
    sequences make a mixed-sequence MRI set). amos: `imagesTr|Va/`, `labelsTr|Va/`, `dataset.json`, CT ids
    from 1, MRI ids from 500. A non-empty `out` is refused unless `overwrite`.
    """
    out = Path(out)
    modalities = list(dict.fromkeys(config.modalities))  # order kept, duplicates dropped
    if not modalities:
        raise ConfigError("synthetic data set: no modalities given (choose from ct, mri_t1, mri_t2)")
    if layout not in ("totalseg", "amos"):
        raise ConfigError(f"synthetic data set: layout must be totalseg or amos, got {layout!r}")
    check_output_folder(out, overwrite)
    split_rng = _rng(config.seed, _SPLIT_STREAM)
    planner = plan_totalseg if layout == "totalseg" else plan_amos
    plans = planner(config.subjects, modalities, split_rng)
    write_case = write_totalseg_case if layout == "totalseg" else write_amos_case
    affine = affine_for(config.spacing, config.shape)
    out.mkdir(parents=True, exist_ok=True)

    by_subject: dict[int, list] = {}
    for plan in plans:
        by_subject.setdefault(plan.subject, []).append(plan)
    summary = SynthSummary(out=out, layout=layout)
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]synth[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=False,
    ) as bar:
        task = bar.add_task(f"{layout} -> {out}", total=len(plans))
        for subject, subject_plans in sorted(by_subject.items()):
            anatomy = subject_anatomy(config, subject)
            for plan in subject_plans:
                image = subject_image(config, subject, plan.modality, anatomy)  # type: ignore[arg-type]
                write_case(out, plan, image, anatomy.structure, affine)
                summary.cases.append(SynthCase(plan.case_id, plan.subject, plan.modality, plan.split))
                bar.advance(task)
    if layout == "totalseg":
        write_totalseg_meta(out, plans, _rng(config.seed, _SPLIT_STREAM, 1))
    else:
        write_amos_dataset_json(out, plans, config.seed)
    summary.cases.sort(key=lambda case: case.case_id)
    summary.seconds_per_subject = (time.perf_counter() - started) / max(config.subjects, 1)
    return summary
