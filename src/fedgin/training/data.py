"""Which cached cases a run trains and validates on, and whole-volume validation Dice."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedgin.cache import Cache, CacheEntry
from fedgin.config import DataSpec, ModelConfig, RunConfig
from fedgin.errors import ConfigError
from fedgin.evaluation.inference import predict_volume
from fedgin.evaluation.metrics import dice
from fedgin.labels import ORGAN_INDEX, ORGANS
from fedgin.patches import PatchSampler
from fedgin.slices import SliceDataset

CaseRef = tuple[Cache, CacheEntry]


def select_cases(spec: DataSpec, default_splits: Sequence[str]) -> list[CaseRef]:
    """The cases of one data spec: its cache, narrowed by split, domain and a maximum count."""
    cache = Cache(spec.cache)
    splits = spec.splits or list(default_splits)
    entries = [
        entry
        for entry in cache.cases()
        if entry.split in splits and (spec.domains is None or entry.domain in spec.domains)
    ]
    # Cases come in the index's stable order, so skip/max carve disjoint, reproducible shares.
    entries = entries[spec.skip_cases :]
    if spec.max_cases is not None:
        entries = entries[: spec.max_cases]
    if not entries:
        raise ConfigError(
            f"{spec.cache}: no cached cases in splits {splits}"
            + (f" with domains {spec.domains}" if spec.domains else "")
        )
    return [(cache, entry) for entry in entries]


def build_train_slices(config: RunConfig) -> SliceDataset | PatchSampler:
    """Axial slices for a 2D model, random patches for a 3D one."""
    if not config.data.train:
        raise ConfigError("data.train: no training data given (add [[data.train]] tables with a cache path)")
    selected = [case for spec in config.data.train for case in select_cases(spec, ["train"])]
    if config.model.dimensions == 3:
        return PatchSampler(selected, config.model.patch_size, config.train.foreground_fraction)
    return SliceDataset.from_entries(selected)


def organ_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Dice of each organ of one case (an organ absent from both counts as 1)."""
    return {organ: dice(pred == ORGAN_INDEX[organ], ref == ORGAN_INDEX[organ]) for organ in ORGANS}


@dataclass
class ValidationSet:
    """Held-out cases evaluated as whole volumes (slices stacked back), never pooled across patients."""

    cases: list[CaseRef]

    @property
    def domain_modality(self) -> dict[str, str]:
        return {entry.domain: entry.modality for _, entry in self.cases}

    def evaluate_organs(
        self, model: nn.Module, device: torch.device, amp: bool, model_config: ModelConfig
    ) -> dict[str, dict[str, float]]:
        """Per domain: mean over cases of each organ's Dice and of the per-case mean over organs ("mean")."""
        per_domain: dict[str, list[dict[str, float]]] = defaultdict(list)
        for cache, entry in self.cases:
            image = cache.load_image(entry)
            pred = predict_volume(
                model, image, device, model_config.dimensions, amp=amp, roi_size=model_config.patch_size
            )
            organs = organ_dice(pred, np.asarray(cache.load_label(entry)))
            per_domain[entry.domain].append(organs | {"mean": float(np.mean(list(organs.values())))})
        return {
            domain: {key: float(np.mean([case[key] for case in cases])) for key in (*ORGANS, "mean")}
            for domain, cases in sorted(per_domain.items())
        }

    def evaluate(
        self, model: nn.Module, device: torch.device, amp: bool, model_config: ModelConfig
    ) -> dict[str, float]:
        """Mean over cases of the per-case mean organ Dice, per domain."""
        return {
            domain: values["mean"]
            for domain, values in self.evaluate_organs(model, device, amp, model_config).items()
        }

    def record(
        self, model: nn.Module, device: torch.device, amp: bool, model_config: ModelConfig
    ) -> tuple[dict[str, float], float]:
        """Learning-curve columns (val_dice_<domain>, val_dice_<domain>_<organ>) and the selection score."""
        organ_scores = self.evaluate_organs(model, device, amp, model_config)
        columns: dict[str, float] = {}
        for domain, values in organ_scores.items():
            columns[f"val_dice_{domain}"] = round(values["mean"], 5)
            columns.update({f"val_dice_{domain}_{organ}": round(values[organ], 5) for organ in ORGANS})
        return columns, self.score({domain: values["mean"] for domain, values in organ_scores.items()})

    def score(self, scores: dict[str, float]) -> float:
        """The model-selection score: mean over modalities (CT, MRI) of their domains' mean Dice."""
        by_modality: dict[str, list[float]] = defaultdict(list)
        for domain, value in scores.items():
            by_modality[self.domain_modality[domain]].append(value)
        return (
            float(np.mean([np.mean(values) for values in by_modality.values()]))
            if by_modality
            else float("nan")
        )


def build_validation_set(config: RunConfig) -> ValidationSet:
    """The validation cases: data.val if given, else the val split of the training caches."""
    specs = config.data.val
    if specs is None:
        # A site's share of training cases (skip/max) says nothing about which validation cases it may use.
        specs = [
            spec.model_copy(update={"splits": ["val"], "skip_cases": 0, "max_cases": None})
            for spec in config.data.train
        ]
        cases = []
        for spec in specs:
            try:
                cases.extend(select_cases(spec, ["val"]))
            except ConfigError:
                continue  # a training cache without a val split simply adds no validation cases
    else:
        cases = [case for spec in specs for case in select_cases(spec, ["val"])]
    limit = config.train.val_max_cases
    if limit is not None:
        kept: dict[str, int] = defaultdict(int)
        limited = []
        for cache, entry in cases:
            if kept[entry.domain] < limit:
                kept[entry.domain] += 1
                limited.append((cache, entry))
        cases = limited
    return ValidationSet(cases)
