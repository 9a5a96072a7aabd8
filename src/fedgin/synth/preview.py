"""The data of the synthetic previews: which subjects, modalities, protocols and slices each tile shows
(drawn by `fedgin.figures`)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedgin.config import SynthConfig
from fedgin.figures import (
    AxialTile,
    display_window,
    most_organs_slice,
    save_protocol_montage,
    save_synth_montage,
    spread_slices,
)


def body_box(tissue: np.ndarray, margin: int = 3) -> tuple[slice, slice]:
    """In-plane (x, y) slices around everything that is not air, over all z."""
    body = tissue.any(axis=2)
    if not body.any():
        return slice(None), slice(None)
    xs, ys = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    return (
        slice(max(xs[0] - margin, 0), xs[-1] + margin + 1),
        slice(max(ys[0] - margin, 0), ys[-1] + margin + 1),
    )


def save_preview(
    out_png: Path,
    config: SynthConfig,
    modalities: Sequence[str] | None = None,
    subjects: int = 3,
    slices: int = 4,
) -> Path:
    """Save a montage: one row per (subject, modality), `slices` axial slices, organ contours and a legend.

    Each subject is shown under the protocol its mix draws for it.
    """
    from fedgin.synth import subject_anatomy, subject_image, subject_protocol

    modalities = list(modalities or config.modalities)
    subjects = max(1, min(subjects, config.subjects))
    rows = []
    for subject in range(subjects):
        anatomy = subject_anatomy(config, subject)
        labels = anatomy.labels()
        levels = spread_slices(labels, slices)
        for modality in modalities:
            protocol = subject_protocol(config, subject, modality)
            image = subject_image(config, subject, modality, anatomy, protocol)  # type: ignore[arg-type]
            window = display_window(image, modality)
            rows.append(
                [
                    AxialTile(image[:, :, z], labels[:, :, z], window, f"s{subject} {protocol} z={z}")
                    for z in levels
                ]
            )
    return save_synth_montage(out_png, rows)


def save_protocol_preview(
    out_png: Path, config: SynthConfig, protocols: Sequence[str], subject: int = 0, columns: int = 6
) -> Path:
    """Save a montage with one tile per protocol: subject `subject`'s same slice under each protocol.

    `protocols` are names of shipped protocols or of the config's custom ones; the anatomy is the same in
    every tile, so what differs is what the scanners do.
    """
    from fedgin.synth import subject_anatomy, subject_image
    from fedgin.synth.protocols import PROTOCOLS, describe, family_of

    custom = {} if config.protocols is None or isinstance(config.protocols, str) else config.protocols.custom
    library = {**PROTOCOLS, **custom}
    anatomy = subject_anatomy(config, subject)
    box_x, box_y = body_box(anatomy.tissue)
    labels = anatomy.labels()[box_x, box_y]
    z = most_organs_slice(labels)
    tiles = []
    for name in protocols:
        protocol = library[name]
        modality = family_of(protocol)
        image = subject_image(config, subject, modality, anatomy, protocol)[box_x, box_y]  # type: ignore[arg-type]
        title = "\n".join([name, *textwrap.wrap(describe(protocol), 38)])
        tiles.append(AxialTile(image[:, :, z], labels[:, :, z], display_window(image, modality), title))
    return save_protocol_montage(out_png, tiles, columns)
