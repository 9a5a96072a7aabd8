"""SliceDataset over cached cases and the foreground-balanced batch sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fedgin.cache import Cache
from fedgin.config import PreprocessConfig
from fedgin.errors import DataError
from fedgin.prepare import prepare
from fedgin.slices import ForegroundBatchSampler, SliceDataset
from nifti_factory import write_amos, write_totalseg


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("slices")
    write_totalseg(base / "ts", ["s0001", "s0002"], splits=["train", "val"])
    write_amos(base / "amos", train_ids=[3, 600])
    out = base / "cache"
    config = PreprocessConfig(spacing_mm=2.0, size=16)
    assert prepare("totalseg-ct", base / "ts", out, config, workers=1, progress=False).ok
    assert prepare("amos", base / "amos", out, config, workers=1, progress=False).ok
    return out


def test_items_and_foreground_flags(cache_path: Path) -> None:
    dataset = SliceDataset([cache_path], split="train")
    cache = Cache(cache_path)
    assert len(dataset) == sum(e.n_slices for e in cache.cases(split="train")) == 18
    item = dataset[7]
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 16, 16) and item["label"].dtype == torch.int64
    entry = cache.entry(item["case_id"])
    np.testing.assert_array_equal(item["label"][0].numpy(), cache.load_label(entry)[item["slice"]])
    assert item["modality"] == entry.modality and item["domain"] == entry.domain
    for index in range(len(dataset)):
        assert dataset.foreground[index] == bool(dataset[index]["label"].any())
    assert dataset.foreground.any() and not dataset.foreground.all()


def test_selection_filters(cache_path: Path) -> None:
    assert {e.modality for e in SliceDataset([Cache(cache_path)], modalities=["mri"]).entries} == {"mri"}
    assert len(SliceDataset([cache_path], split=None)) == 24
    only = SliceDataset([cache_path], split=None, case_ids=["totalseg-ct-s0002"])
    assert [e.case_id for e in only.entries] == ["totalseg-ct-s0002"]
    with pytest.raises(DataError, match="no cached cases"):
        SliceDataset([cache_path], split="test")


def test_different_slice_sizes_are_rejected(cache_path: Path, tmp_path: Path) -> None:
    write_totalseg(tmp_path / "ts", ["s0009"])
    other = tmp_path / "cache"
    prepare("totalseg-ct", tmp_path / "ts", other, PreprocessConfig(size=24), workers=1, progress=False)
    with pytest.raises(DataError, match="16x16"):
        SliceDataset([cache_path, other])


def test_sampler_mixes_foreground_and_background_deterministically(cache_path: Path) -> None:
    dataset = SliceDataset([cache_path], split=None)

    def batches(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return list(ForegroundBatchSampler(dataset, 4, foreground_fraction=0.25, generator=generator))

    first = batches(1)
    assert len(first) == len(dataset) // 4
    for batch in first:
        flags = dataset.foreground[batch]
        assert len(batch) == 4 and flags.sum() == 1 and (~flags).sum() == 3
    assert first == batches(1) and first != batches(2)
    sampler = ForegroundBatchSampler(dataset, 3, foreground_fraction=0.0, num_batches=5)
    assert len(list(sampler)) == 5 and all(dataset.foreground[b].any() for b in sampler)  # at least one organ
    loader = DataLoader(dataset, batch_sampler=ForegroundBatchSampler(dataset, 4, num_batches=2))
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["label"].shape == (4, 1, 16, 16)


def test_same_case_ids_in_two_caches_combine(cache_path: Path, tmp_path: Path) -> None:
    # A T1 and a T2 cache of one source carry the same case ids; training on both must see both.
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(cache_path, twin)
    single = SliceDataset([cache_path], split="train")
    both = SliceDataset([cache_path, twin], split="train")
    assert len(both) == 2 * len(single) and both.num_cases == 2 * single.num_cases
    cache = Cache(cache_path)
    with pytest.raises(DataError, match="selected twice"):
        SliceDataset.from_entries([(cache, entry) for entry in cache.cases()] * 2)
