"""prepare -> Cache round trip, index fields, skip/resume/invalidate, worker processes and the summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import fedgin.prepare as prepare_module
from fedgin.cache import INDEX_COLUMNS, Cache, read_index, summarize
from fedgin.cli import app
from fedgin.config import PreprocessConfig
from fedgin.errors import DataError
from fedgin.preprocessing import preprocess
from fedgin.sources import discover
from nifti_factory import write_amos, write_meta, write_totalseg

CONFIG = PreprocessConfig(spacing_mm=2.0, size=16)


@pytest.fixture
def totalseg(tmp_path: Path) -> Path:
    root = tmp_path / "totalseg"
    write_totalseg(
        root, ["s0001", "s0002", "s0003"], splits=["train", "train", "val"], axcodes={"s0002": "LPS"}
    )
    return root


def test_prepare_round_trip_and_index(totalseg: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    report = prepare_module.prepare("totalseg-ct", totalseg, out, CONFIG, workers=1, progress=False)
    assert report.ok and report.prepared == ["totalseg-ct-s0001", "totalseg-ct-s0002", "totalseg-ct-s0003"]
    cache = Cache(out)
    assert [e.case_id for e in cache.cases(split="train")] == ["totalseg-ct-s0001", "totalseg-ct-s0002"]
    assert cache.cases(modality="mri") == []
    header = (out / "index.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == INDEX_COLUMNS
    prepare_info = json.loads((out / "prepare.json").read_text())
    assert prepare_info["config"] == CONFIG.model_dump(mode="json")
    assert prepare_info["sources"][0]["source"] == "totalseg-ct"
    for case in discover("totalseg-ct", totalseg):
        entry = cache.entry(case.uid)
        loaded = case.load()
        expected = preprocess(loaded.image, loaded.label, "ct", CONFIG)
        image = cache.load_image(entry)
        assert isinstance(image, np.memmap)
        np.testing.assert_array_equal(image, expected.image)
        np.testing.assert_array_equal(cache.load_label(entry, mmap=False), expected.label)
        assert cache.geometry(entry) == expected.geometry
        assert (entry.n_slices, entry.height, entry.width) == (6, 16, 16)
        assert entry.spacing == pytest.approx((2.0, 2.0, 5.0))
        assert entry.original_shape == (24, 20, 6) and entry.original_spacing == pytest.approx(
            (1.5, 2.0, 5.0)
        )
        assert entry.organ_voxels["liver"] == int((expected.label == 1).sum()) > 0
        flags = cache.foreground(entry)
        np.testing.assert_array_equal(flags, expected.label.reshape(6, -1).any(axis=1))
        assert entry.foreground_slices == flags.sum()
        assert entry.original_percentiles[0] < entry.original_percentiles[2]


def test_rerun_skips_and_config_change_reprepares(totalseg: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare_module.prepare("totalseg-ct", totalseg, out, CONFIG, workers=1, progress=False)
    again = prepare_module.prepare("totalseg-ct", totalseg, out, CONFIG, workers=1, progress=False)
    assert again.prepared == [] and len(again.skipped) == 3
    # A touched source file changes the fingerprint of its case only.
    (totalseg / "s0002" / "ct.nii.gz").touch()
    touched = prepare_module.prepare("totalseg-ct", totalseg, out, CONFIG, workers=1, progress=False)
    assert touched.prepared == ["totalseg-ct-s0002"]
    bigger = PreprocessConfig(spacing_mm=2.0, size=24)
    changed = prepare_module.prepare("totalseg-ct", totalseg, out, bigger, workers=1, progress=False)
    assert len(changed.prepared) == 3 and changed.skipped == []
    assert {e.height for e in Cache(out).cases()} == {24}


def test_interrupted_run_resumes(totalseg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cache"
    real = prepare_module.prepare_case
    calls = []

    def interrupt_on_second(case, *args, **kwargs):
        calls.append(case.uid)
        if len(calls) == 2:
            (out / "cases" / f".{case.uid}_image.npy.123.tmp").write_bytes(b"half")  # a stray write
            raise KeyboardInterrupt
        return real(case, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare_case", interrupt_on_second)
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare("totalseg-ct", totalseg, out, CONFIG, workers=1, progress=False)
    assert list(read_index(out)) == ["totalseg-ct-s0001"]
    monkeypatch.setattr(prepare_module, "prepare_case", real)
    resumed = prepare_module.prepare("totalseg-ct", totalseg, out, CONFIG, workers=1, progress=False)
    assert resumed.skipped == ["totalseg-ct-s0001"] and len(resumed.prepared) == 2
    assert len(Cache(out).cases()) == 3
    assert not list((out / "cases").glob(".*.tmp"))


def test_worker_processes_and_two_sources_in_one_cache(totalseg: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    report = prepare_module.prepare("totalseg-ct", totalseg, out, CONFIG, workers=2, progress=True)
    assert report.ok and len(report.prepared) == 3
    amos = tmp_path / "amos"
    write_amos(amos, train_ids=[1, 501])
    report = prepare_module.prepare(
        "amos", amos, out, CONFIG, workers=1, progress=False, split_override="test"
    )
    assert report.prepared == ["amos-amos_0001", "amos-amos_0501"]
    cache = Cache(out)
    assert len(cache.cases()) == 5
    assert [e.modality for e in cache.cases(split="test")] == ["ct", "mri"]
    console = Console(record=True, width=160)
    console.print(summarize(cache))
    text = console.export_text()
    assert "liver" in text and "mri" in text and "Intensity percentiles" in text
    assert "Cases per protocol" not in text  # no source here records a protocol
    assert {e.protocol for e in cache.cases()} == {""}


def test_cache_without_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no cache index"):
        Cache(tmp_path)


def _protocol_meta(root: Path, protocols: list[str]) -> None:
    rows = [[case_id, split, protocol] for case_id, split, protocol in zip(
        ["s0001", "s0002", "s0003"], ["train", "train", "val"], protocols, strict=True
    )]  # fmt: skip
    write_meta(root, ["image_id", "split", "protocol"], rows)


def _index_rows(out: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(out / "index.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_protocol_in_index_old_index_opens_and_resume_updates_it(totalseg: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    _protocol_meta(totalseg, ["ct_pv_120kvp_soft_3mm", "", "ct_pv_120kvp_soft_3mm"])
    prepare_module.prepare("totalseg-ct", totalseg, out, CONFIG, workers=1, progress=False)
    columns, rows = _index_rows(out)
    assert "protocol" in columns
    assert [row["protocol"] for row in rows] == ["ct_pv_120kvp_soft_3mm", "", "ct_pv_120kvp_soft_3mm"]
    cache = Cache(out)
    assert [e.protocol for e in cache.cases()] == ["ct_pv_120kvp_soft_3mm", "", "ct_pv_120kvp_soft_3mm"]
    console = Console(record=True, width=160)
    console.print(summarize(cache))
    text = console.export_text()
    assert "Cases per protocol" in text and "ct_pv_120kvp_soft_3mm" in text and "unknown" in text

    # An index written before the protocol column existed still opens, every protocol unknown.
    old_columns = [name for name in columns if name != "protocol"]
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=old_columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    assert [e.protocol for e in Cache(out).cases()] == ["", "", ""]
    console = Console(record=True, width=160)
    console.print(summarize(Cache(out)))
    assert "Cases per protocol" not in console.export_text()

    # A resumed prepare skips the unchanged cases and writes the source's current protocols for them.
    _protocol_meta(totalseg, ["mr3t_t1_gre_opposed", "ct_art_100kvp_sharp_1mm", ""])
    resumed = prepare_module.prepare("totalseg-ct", totalseg, out, CONFIG, workers=1, progress=False)
    assert resumed.prepared == [] and len(resumed.skipped) == 3
    columns, rows = _index_rows(out)
    assert tuple(columns) == INDEX_COLUMNS
    assert [row["protocol"] for row in rows] == ["mr3t_t1_gre_opposed", "ct_art_100kvp_sharp_1mm", ""]
    assert [e.protocol for e in Cache(out).cases()] == ["mr3t_t1_gre_opposed", "ct_art_100kvp_sharp_1mm", ""]


def test_index_case_id_that_is_a_path_is_refused_on_reading(totalseg: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare_module.prepare("totalseg-ct", totalseg, out, CONFIG, workers=1, progress=False)
    columns, rows = _index_rows(out)
    rows[1]["case_id"] = "../../escape/x"  # the arrays it names stay valid: only the id is a path
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    expected = f"{out / 'index.csv'}: line 3: case_id '../../escape/x' is not a plain name (it holds a path"
    with pytest.raises(DataError) as error:
        Cache(out)
    assert str(error.value).startswith(expected)
    before = sorted(tmp_path.rglob("*"))
    for command in (["inspect", str(out)], ["prepare", "--source", "totalseg-ct", "--root", str(totalseg),
                                            "-o", str(out), "--workers", "1"]):  # fmt: skip
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert line.startswith(f"error: {expected}"), line
    assert sorted(tmp_path.rglob("*")) == before
