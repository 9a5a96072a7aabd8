"""Axial-slice data set over memory-mapped cached volumes; a batch sampler mixing organ and background."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from fedgin.cache import Cache, CacheEntry
from fedgin.errors import DataError


@dataclass(frozen=True)
class _CaseRef:
    cache_root: Path
    entry: CacheEntry


class SliceDataset(Dataset):
    """Every axial slice of the selected cached cases; arrays are memory-mapped lazily in each worker."""

    def __init__(
        self,
        caches: Sequence[Cache | Path | str],
        split: str | None = "train",
        modalities: Sequence[str] | None = None,
        domains: Sequence[str] | None = None,
        case_ids: Sequence[str] | None = None,
    ) -> None:
        opened = [cache if isinstance(cache, Cache) else Cache(cache) for cache in caches]
        selected = [
            (cache, entry)
            for cache in opened
            for entry in cache.cases(split=split)
            if (modalities is None or entry.modality in modalities)
            and (domains is None or entry.domain in domains)
            and (case_ids is None or entry.case_id in case_ids)
        ]
        if not selected:
            where = ", ".join(str(cache.path) for cache in opened)
            raise DataError(
                where, f"no cached cases match split={split}, modalities={modalities}, domains={domains}"
            )
        self._index_cases(selected)

    @classmethod
    def from_entries(cls, selected: Sequence[tuple[Cache, CacheEntry]]) -> SliceDataset:
        """A data set over an explicit selection of cached cases (e.g. one client's share of a cache)."""
        if not selected:
            raise DataError("(no caches)", "no cached cases selected")
        dataset = cls.__new__(cls)
        dataset._index_cases(selected)
        return dataset

    def _index_cases(self, selected: Sequence[tuple[Cache, CacheEntry]]) -> None:
        self.cases: list[_CaseRef] = []
        slice_case, slice_index, foreground = [], [], []
        # The same case id may live in two caches (say a T1 and a T2 set of one source); the same case of
        # the same cache twice would be counted double.
        seen: set[tuple[Path, str]] = set()
        for cache, entry in selected:
            key = (cache.path.resolve(), entry.case_id)
            if key in seen:
                raise DataError(cache.path, f"case {entry.case_id} is selected twice")
            seen.add(key)
            if self.cases and (entry.height, entry.width) != self.slice_shape:
                first = self.cases[0].entry
                raise DataError(
                    cache.path / entry.image_file,
                    f"slices of {entry.case_id} are {entry.height}x{entry.width} but those of "
                    f"{first.case_id} are {first.height}x{first.width}; prepare all with the same size",
                )
            flags = cache.foreground(entry)
            if flags.shape[0] != entry.n_slices:
                raise DataError(cache.path / entry.image_file, "foreground flags do not match the slices")
            slice_case.append(np.full(entry.n_slices, len(self.cases)))
            slice_index.append(np.arange(entry.n_slices))
            foreground.append(flags)
            self.cases.append(_CaseRef(cache.path, entry))
        #: Per slice: index into self.cases, slice number within the case, and "holds an organ".
        self.slice_case = np.concatenate(slice_case)
        self.slice_index = np.concatenate(slice_index)
        self.foreground = np.concatenate(foreground).astype(bool)
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def num_cases(self) -> int:
        return len(self.cases)

    @property
    def slice_shape(self) -> tuple[int, int]:
        first = self.cases[0].entry
        return first.height, first.width

    @property
    def entries(self) -> list[CacheEntry]:
        return [ref.entry for ref in self.cases]

    def __len__(self) -> int:
        return int(self.slice_case.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are not shipped to DataLoader workers; each worker opens its own on first use.
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def _case_arrays(self, case: int) -> tuple[np.ndarray, np.ndarray]:
        if case not in self._arrays:
            ref = self.cases[case]
            self._arrays[case] = (
                np.load(ref.cache_root / ref.entry.image_file, mmap_mode="r"),
                np.load(ref.cache_root / ref.entry.label_file, mmap_mode="r"),
            )
        return self._arrays[case]

    def __getitem__(self, index: int) -> dict[str, Any]:
        case, z = int(self.slice_case[index]), int(self.slice_index[index])
        image, label = self._case_arrays(case)
        entry = self.cases[case].entry
        return {
            "image": torch.from_numpy(np.array(image[z], dtype=np.float32))[None],
            "label": torch.from_numpy(np.array(label[z], dtype=np.int64))[None],
            "case_id": entry.case_id,
            "domain": entry.domain,
            "modality": entry.modality,
            "slice": z,
        }


class ForegroundBatchSampler(Sampler[list[int]]):
    """Batches of slice indices with round(fraction * batch) organ slices and the rest background-only.

    When both kinds exist every batch holds at least one of each. Each kind is drawn without replacement
    from a shuffled pool that is refilled when used up, with the given generator (same seed, same batches).
    """

    def __init__(
        self,
        dataset: SliceDataset,
        batch_size: int,
        foreground_fraction: float = 0.5,
        generator: torch.Generator | None = None,
        num_batches: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError("foreground_fraction must be between 0 and 1")
        self.batch_size = batch_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.num_batches = num_batches if num_batches is not None else max(1, len(dataset) // batch_size)
        flags = np.asarray(dataset.foreground, dtype=bool)
        self.foreground_indices = torch.from_numpy(np.flatnonzero(flags))
        self.background_indices = torch.from_numpy(np.flatnonzero(~flags))
        n_fg = round(foreground_fraction * batch_size)
        if len(self.foreground_indices) and len(self.background_indices) and batch_size > 1:
            n_fg = min(max(n_fg, 1), batch_size - 1)  # both kinds in every batch
        elif not len(self.background_indices):
            n_fg = batch_size
        elif not len(self.foreground_indices):
            n_fg = 0
        self.foreground_per_batch = n_fg

    def __len__(self) -> int:
        return self.num_batches

    def _pool(self, indices: torch.Tensor) -> Iterator[int]:
        while True:
            for position in torch.randperm(len(indices), generator=self.generator).tolist():
                yield int(indices[position])

    def __iter__(self) -> Iterator[list[int]]:
        foreground = self._pool(self.foreground_indices) if self.foreground_per_batch else iter(())
        background = (
            self._pool(self.background_indices) if self.foreground_per_batch < self.batch_size else iter(())
        )
        for _ in range(self.num_batches):
            batch = [next(foreground) for _ in range(self.foreground_per_batch)]
            batch += [next(background) for _ in range(self.batch_size - self.foreground_per_batch)]
            order = torch.randperm(len(batch), generator=self.generator).tolist()
            yield [batch[position] for position in order]
