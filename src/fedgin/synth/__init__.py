"""The embedded synthetic abdomen: one anatomy per subject, rendered as CT or MRI under acquisition protocols.

Each case draws its protocol from the source's mix (`fedgin.synth.protocols`); the anatomy depends on
(seed, subject) only, so every protocol shows the same body.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fedgin.config import CTProtocol, MRProtocol, SynthConfig
from fedgin.errors import ConfigError
from fedgin.folders import mark
from fedgin.io_utils import atomic_write_json
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
from fedgin.synth.preview import save_preview, save_protocol_preview
from fedgin.synth.protocols import MIXES, PROTOCOLS, ResolvedMix, describe, family_of, resolve_mix
from fedgin.synth.render import Patient, SynthModality, render

__all__ = [
    "MIXES",
    "PROTOCOLS",
    "Anatomy",
    "Structure",
    "SynthCase",
    "SynthSummary",
    "Tissue",
    "generate",
    "make_subject",
    "resolve_mix",
    "save_preview",
    "save_protocol_preview",
    "subject_anatomy",
    "subject_image",
    "subject_protocol",
]

#: Stream tags that keep the anatomy, rendering, split, protocol and physiology random streams apart.
_ANATOMY_STREAM, _RENDER_STREAM, _SPLIT_STREAM, _PROTOCOL_STREAM, _PATIENT_STREAM = 0, 1, 2, 3, 4
_MODALITY_CODE: dict[str, int] = {"ct": 0, "mri_t1": 1, "mri_t2": 2}


@dataclass(frozen=True)
class SynthCase:
    """One written volume."""

    case_id: str
    subject: int
    modality: str
    split: str
    protocol: str = ""


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


def subject_patient(config: SynthConfig, index: int) -> Patient:
    """Subject `index`'s physiology (fat fractions): seeded by (seed, index), shared by all its scans."""
    return Patient.draw(_rng(config.seed, _PATIENT_STREAM, index))


def subject_protocol(config: SynthConfig, index: int, modality: str, mix: ResolvedMix | None = None) -> str:
    """The protocol subject `index` is scanned with in `modality`.

    The `config.subjects` subjects share the mix's protocols in proportion to the weights (a seeded
    stratified assignment); a subject beyond that count draws its protocol by weight.
    """
    mix = mix or resolve_mix(config.model_copy(update={"modalities": [modality]}))
    code = _modality_code(modality)
    if 0 <= index < config.subjects:
        return mix.assign(modality, config.subjects, _rng(config.seed, _PROTOCOL_STREAM, code))[index]
    return mix.choose(modality, _rng(config.seed, _PROTOCOL_STREAM, code, index))


def _modality_code(modality: str) -> int:
    if modality not in _MODALITY_CODE:
        raise ConfigError(f"unknown synthetic modality {modality!r}; expected one of {list(_MODALITY_CODE)}")
    return _MODALITY_CODE[modality]


def subject_image(
    config: SynthConfig,
    index: int,
    modality: SynthModality,
    anatomy: Anatomy,
    protocol: str | CTProtocol | MRProtocol | None = None,
) -> np.ndarray:
    """Render `anatomy` in `modality` under `protocol` (a name, a protocol, or None: the mix's draw).

    Noise, bias and timing are seeded by (seed, index, modality), so a subject rendered under two protocols
    differs only by what the protocols do.
    """
    code = _modality_code(modality)
    if protocol is None or isinstance(protocol, str):
        mix = resolve_mix(config.model_copy(update={"modalities": [modality]}))
        name = protocol if protocol is not None else subject_protocol(config, index, modality, mix)
        chosen = mix.entries[name][0] if name in mix.entries else PROTOCOLS.get(name)
        if chosen is None:
            raise ConfigError(f"unknown protocol {name!r}")
        protocol = chosen
    if family_of(protocol) != modality:
        raise ConfigError(f"a {family_of(protocol)} protocol cannot render modality {modality}")
    rng = _rng(config.seed, _RENDER_STREAM, index, code)
    return render(anatomy, protocol, rng, tuple(config.spacing), subject_patient(config, index))  # type: ignore[arg-type]


def make_subject(
    config: SynthConfig, index: int, modality: SynthModality, protocol: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32 x-y-z, fedgin labels uint8 x-y-z, 4x4 RAS affine) of subject `index` in `modality`."""
    anatomy = subject_anatomy(config, index)
    image = subject_image(config, index, modality, anatomy, protocol)
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
    from 1, MRI ids from 500. Every case's protocol is drawn from `config.protocols` (default: the layout's
    realistic mix) and recorded in meta.csv / dataset.json; `protocols.json` defines every protocol used.
    A non-empty `out` is refused unless `overwrite`; a bad mix is refused before anything is written.
    """
    out = Path(out)
    modalities = list(dict.fromkeys(config.modalities))  # order kept, duplicates dropped
    if not modalities:
        raise ConfigError("synthetic data set: no modalities given (choose from ct, mri_t1, mri_t2)")
    if layout not in ("totalseg", "amos"):
        raise ConfigError(f"synthetic data set: layout must be totalseg or amos, got {layout!r}")
    mix = resolve_mix(config, layout)
    check_output_folder(out, overwrite)
    split_rng = _rng(config.seed, _SPLIT_STREAM)
    planner = plan_totalseg if layout == "totalseg" else plan_amos
    # One stratified assignment per modality (subject_protocol would redo it for every case).
    assigned = {
        modality: mix.assign(
            modality, config.subjects, _rng(config.seed, _PROTOCOL_STREAM, _modality_code(modality))
        )
        for modality in modalities
    }
    plans = [
        replace(plan, protocol=assigned[plan.modality][plan.subject])
        for plan in planner(config.subjects, modalities, split_rng)
    ]
    write_case = write_totalseg_case if layout == "totalseg" else write_amos_case
    affine = affine_for(config.spacing, config.shape)
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "data")

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
                protocol = mix.protocol(plan.protocol)
                image = subject_image(config, subject, plan.modality, anatomy, protocol)  # type: ignore[arg-type]
                write_case(out, plan, image, anatomy.structure, affine)
                summary.cases.append(
                    SynthCase(plan.case_id, plan.subject, plan.modality, plan.split, plan.protocol)
                )
                bar.advance(task)
    if layout == "totalseg":
        write_totalseg_meta(out, plans, _rng(config.seed, _SPLIT_STREAM, 1))
    else:
        write_amos_dataset_json(out, plans, config.seed)
    used = sorted({plan.protocol for plan in plans})
    atomic_write_json(
        out / "protocols.json",
        {
            "mix": mix.name,
            "weights": {name: weight for name, (_, weight) in mix.entries.items()},
            "protocols": {
                name: {
                    "description": describe(mix.protocol(name)),
                    **mix.protocol(name).model_dump(mode="json"),
                }
                for name in used
            },
        },
    )
    summary.cases.sort(key=lambda case: case.case_id)
    summary.seconds_per_subject = (time.perf_counter() - started) / max(config.subjects, 1)
    return summary
