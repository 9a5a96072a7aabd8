"""The benchmarks' bookkeeping (no timings): machine names, medians of repeated runs, the results table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_federation_overhead  # noqa: E402
import run_all  # noqa: E402
from common import machine_name  # noqa: E402

RESULTS = sorted((BENCHMARKS / "results").glob("*.json"))


def test_machine_name_tells_cpu_kinds_and_gpus_apart() -> None:
    assert machine_name({"cores": 2, "cpu_capability": "AVX2", "gpu": None}) == "cpu-2core-avx2"
    assert machine_name({"cores": 16, "cpu_capability": "AVX512", "gpu": None}) == "cpu-16core-avx512"
    assert machine_name({"cores": 2, "gpu": None}) == "cpu-2core"  # results written before the field existed
    assert machine_name({"cores": 16, "cpu_capability": "AVX512", "gpu": "NVIDIA H200"}) == "gpu-nvidia-h200"


def test_repeated_runs_combine_into_medians_with_the_ratio_range() -> None:
    runs = [
        {"clients": 2, "ratio": ratio, "flower_s": flower, "load_before": [1.0], "load_after": [load]}
        for ratio, flower, load in [(1.2, 24.0, 1.1), (1.0, 20.0, 1.2), (1.5, 30.0, 1.3)]
    ]
    row = bench_federation_overhead.combine(runs)
    assert row["ratio"] == 1.2 and row["flower_s"] == 24.0
    assert row["ratio_range"] == [1.0, 1.5]
    assert row["repeats"] == 3 and row["runs"] == runs
    assert row["clients"] == 2 and row["load_after"] == [1.3]
    single = bench_federation_overhead.combine(runs[:1])
    assert single["repeats"] == 1 and single["ratio_range"] == [1.2, 1.2]


def test_the_paper_preset_step_count_follows_from_the_preset() -> None:
    paper = run_all.paper_training_steps()
    # 2 sites x 100 rounds x 250 local steps for each of 7 methods, 3 seeds.
    assert paper["steps"] == 2 * 100 * 250 * 7 * 3
    assert (paper["size"], paper["batch"]) == (256, 8)


@pytest.mark.parametrize("path", RESULTS, ids=[path.stem for path in RESULTS])
def test_every_recorded_result_renders_with_its_targets(path: Path) -> None:
    results = json.loads(path.read_text())
    table = run_all.markdown(results)
    for target in ("< 3% of a 2D step", "< 5%", "< 1.10", "< 2x"):
        assert target in table, f"{path.name}: no row for the target {target}"
    assert "paper-complete" in table
    verdicts = [line for line in table.splitlines() if "| met |" in line or "| missed |" in line]
    assert len(verdicts) >= 5


def test_calibration_tables_split_the_test_protocols_into_seen_and_unseen(tmp_path: Path) -> None:
    import calibrate_synth

    rows = [  # (case, source, domain, protocol, dice of each organ)
        ("a", "totalseg-ct", "ct", "ct_pv_120kvp_standard_3mm", 0.8),
        ("b", "amos", "ct", "ct_pv_120kvp_standard_3mm", 0.6),  # in the TotalSegmentator-like mix
        ("c", "amos", "ct", "ct_del_120kvp_standard_5mm", 0.4),  # in no training mix
        ("d", "amos", "ct", "ct_del_120kvp_standard_5mm", 0.2),
    ]
    header = "method,case_id,source,modality,domain,split,protocol,organ,dice\n"
    for name in calibrate_synth.RUNS:
        lines = [header]
        for case, source, domain, protocol, dice in rows:
            for organ in ("liver", "kidneys", "spleen", "pancreas", "gallbladder", "mean"):
                value = -1.0 if organ == "mean" else dice  # the mean rows are not averaged again
                lines.append(f"{name},{case},{source},ct,{domain},test,{protocol},{organ},{value}\n")
        (tmp_path / "runs" / name / "eval").mkdir(parents=True)
        (tmp_path / "runs" / name / "eval" / "per_case.csv").write_text("".join(lines))
    main, per_protocol = calibrate_synth.tables(tmp_path).split("\n\n")
    cells = main.splitlines()[2].split(" | ")
    assert cells[1:5] == ["0.800 ± 0.000", "", "", "0.600 ± 0.000"]  # TS CT, TS T1, TS T2, AMOS CT seen
    assert cells[5] == "0.300 ± 0.100"  # AMOS CT unseen: the two delayed-phase cases
    assert "| amos | `ct_del_120kvp_standard_5mm` | no | 2 | 0.30 |" in per_protocol


@pytest.mark.parametrize("path", sorted((BENCHMARKS / "results" / "sections").glob("*.json")))
def test_a_recorded_single_section_renders(path: Path) -> None:
    """results/sections/ holds runs of some sections only (`run_all.py --only ...`)."""
    results = json.loads(path.read_text())
    table = run_all.markdown(results)
    for section in results["sections"]:
        assert section in path.stem and "|" in table
