"""The study: its plan (scenarios, budgets), a miniature study end to end, its report against the runs."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
from rich.console import Console

from fedgin.errors import ConfigError
from fedgin.federation.cross_site import matrix, read_rows
from fedgin.study import PRESETS, StudyConfig, load_study, plan_study, preset_path, run_study
from fedgin.study.plan import unique_runs
from fedgin.study.report import write_report
from fedgin.study.runner import StudyDataChanged, data_fingerprint, keep_missing_slices


def study_config(caches: dict[str, Path], output: Path, **overrides: object) -> StudyConfig:
    settings: dict = {
        "name": "mini",
        "output": output,
        "seeds": [7],
        "methods": ["fedgin", "centralized_gin"],
        "sites": [
            {"name": "site_ct", "ct": [{"cache": caches["ct"]}]},
            {"name": "site_mri", "mri": [{"cache": caches["t2"]}]},
        ],
        "val": [{"cache": caches["ct"]}, {"cache": caches["t2"]}],
        "test": [{"cache": caches["ct"], "splits": ["test"]}, {"cache": caches["t2"], "splits": ["test"]}],
        "model": {"channels": (4, 8), "strides": (2,), "num_res_units": 1},
        "train": {"batch_size": 4, "device": "cpu"},
        "federation": {"rounds": 2, "local_steps": 2, "round_timeout_s": 120},
        "overlay_cases": 1,
    }
    settings.update(overrides)
    return StudyConfig.model_validate(settings)


def test_presets_load_and_plan_the_same_budget_for_every_method() -> None:
    for preset in PRESETS:
        for scenario in ("complete", "limited"):
            config = load_study(preset_path(preset, scenario))
            assert config.scenario == scenario and config.federation.local_steps
    config = load_study(preset_path("paper", "complete"))
    assert config.preprocess.size == 256 and config.federation.rounds == 100
    assert config.seeds == [42, 123, 215] and config.train.loss == "focal_dice"
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_path("huge", "complete")


def test_limited_scenario_adds_ct_by_case_ratio(caches: dict[str, Path], tmp_path: Path) -> None:
    config = study_config(
        caches, tmp_path / "limited", scenario="limited", methods=["local", "fl_no_gin", "ct_only"],
        ratios=["1:0", "1:1", "1:2", "all"], limited_mri_cases=1,
    )  # fmt: skip
    runs = plan_study(config)
    federated = {run.point: run for run in runs if run.method == "fl_no_gin"}
    assert {point: (run.n_mri_cases, run.n_ct_cases) for point, run in federated.items()} == {
        "1:0": (1, 0), "1:1": (1, 1), "1:2": (1, 2), "all": (1, 2),
    }  # fmt: skip
    # Same budget for every model of a scenario point: rounds x local steps x participating sites.
    assert federated["1:0"].budget_steps == 2 * 2 * 1 and federated["1:1"].budget_steps == 2 * 2 * 2
    assert len(federated["1:0"].config.federation.clients) == 1  # the CT site holds nothing at 1:0
    ct_only = {run.point: run for run in runs if run.method == "ct_only"}
    assert "1:0" not in ct_only and ct_only["1:1"].config.train.steps == federated["1:1"].budget_steps
    # The MRI site's local model is the same at every ratio: trained once.
    local_mri = [run for run in runs if run.method == "local" and run.site == "site_mri"]
    assert len(local_mri) == 4 and len({run.identity for run in local_mri}) == 1
    # ... and so is every run of 1:2 and all (the fixture's CT has 2 training cases): 3 + 3 duplicates.
    assert len(runs) == 14 and len(unique_runs(runs)) == 8
    with pytest.raises(ConfigError, match="limited_mri_cases"):
        plan_study(study_config(caches, tmp_path / "x", scenario="limited", limited_mri_cases=9))


def per_case_means(per_case: Path) -> dict[str, float]:
    """Test modality -> mean over patients of each patient's mean Dice over organs, from per_case.csv."""
    by_case: dict[tuple[str, str], list[float]] = {}
    with open(per_case, newline="") as handle:
        for row in csv.DictReader(handle):
            by_case.setdefault((row["modality"], row["case_id"]), []).append(float(row["dice"]))
    modalities = {modality for modality, _ in by_case}
    return {
        modality.upper(): statistics.fmean(
            statistics.fmean(values) for (m, _), values in by_case.items() if m == modality
        )
        for modality in modalities
    }


def test_miniature_study_report_matches_the_runs(caches: dict[str, Path], tmp_path: Path) -> None:
    config = study_config(caches, tmp_path / "study")
    result = run_study(config, console=Console(file=io.StringIO()))
    out = config.output
    report = (out / "report.md").read_text(encoding="utf-8")
    for figure in ("dice_per_organ.png", "learning_curves.png", "overlays.png"):
        assert (out / "figures" / figure).stat().st_size > 5000, figure
    assert (out / "study.toml").is_file() and len(result.runs) == 2

    with open(out / "results.csv", newline="") as handle:
        results = list(csv.DictReader(handle))
    for run in result.runs:
        expected = per_case_means(run.run_dir / "test" / "per_case.csv")
        assert set(expected) == {"CT", "MRI"}
        for test, value in expected.items():
            (row,) = [
                r for r in results if r["label"] == run.label and r["test"] == test and r["organ"] == "mean"
            ]
            assert math.isclose(float(row["dice"]), value, abs_tol=1e-6)
        # The main table's row: one seed, so the cell is the run's value itself.
        dice_table = report.split("## Dice, mean over organs")[1]
        line = next(line for line in dice_table.splitlines() if line.startswith(f"| {run.label} |"))
        assert (
            line == f"| {run.label} | {expected['CT']:.3f} | {expected['MRI']:.3f} | {expected['MRI']:.3f} |"
        )
    # Dice per test protocol: per patient the mean over organs, then the mean over the protocol's patients;
    # `*` where no training case of the sites has that protocol.
    by_protocol = report.split("## Dice per test protocol")[1].split("\n## ")[0]
    trained_with = {
        row["protocol"]
        for name in ("ct", "t2")
        for row in csv.DictReader((caches[name] / "index.csv").read_text().splitlines())
        if row["split"] == "train"
    }
    for run in result.runs:
        patients: dict[tuple[str, str], list[float]] = {}
        with open(run.run_dir / "test" / "per_case.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                patients.setdefault((row["protocol"], row["case_id"]), []).append(float(row["dice"]))
        column = ["fedgin", "centralized_gin"].index(run.method) + 3
        for protocol in {p for p, _ in patients}:
            expected = statistics.fmean(
                statistics.fmean(values) for (p, _), values in patients.items() if p == protocol
            )
            mark = "" if protocol in trained_with else " *"
            line = next(line for line in by_protocol.splitlines() if line.startswith(f"| {protocol}{mark} |"))
            assert line.strip("| ").split(" | ")[column] == f"{expected:.3f}", line
    assert "protocols" in by_protocol and "unseen" in by_protocol
    assert "| FedGIN vs Centralized GIN | CT | close (about equal) |" in report
    assert (
        "720" not in report
        and "| FedGIN | FedAvg over the sites, GIN on every batch | yes | 8 | 2 | 2 |" in report
    )

    # The sites' data, described on Flower before training: the report links the figures.
    stats = json.loads((out / "stats" / "stats.json").read_text())
    assert sorted(stats["sites"]) == sorted(site.name for site in config.sites)
    assert "## The sites' data (federated statistics)" in report
    assert "(stats/intensity_histograms.png)" in report and (out / "stats" / "organ_volumes.png").is_file()

    # The cross-site matrix: FedGIN at every site, on the site's own test cases, on Flower.
    section = report.split("## Cross-site evaluation")[1].split("\n## ")[0]
    rows = read_rows(out / "cross_site" / "seed7" / "cross_site.csv")
    sites = [site.name for site in config.sites]
    assert {row["site"] for row in rows} == set(sites) and {row["model"] for row in rows} == {"FedGIN"}
    cells = matrix(rows)
    values = " | ".join(f"{cells['FedGIN', site]:.3f}" for site in sites)
    assert f"| FedGIN | {values} |" in section
    assert (out / "figures" / "cross_site.png").stat().st_size > 5000

    # Interrupted part-way: the unfinished run is trained again, the finished one is kept.
    fedgin_run, central_run = result.runs
    kept = (fedgin_run.run_dir / "checkpoints" / "best.pt").stat().st_mtime_ns
    (central_run.run_dir / "done.json").unlink()
    with pytest.raises(ConfigError, match="--resume"):
        run_study(config, console=Console(file=io.StringIO()))
    log = io.StringIO()
    again = run_study(config, resume=True, console=Console(file=log, width=200))
    assert "FedGIN done before" in log.getvalue() and "Centralized GIN ..." in log.getvalue()
    assert (fedgin_run.run_dir / "checkpoints" / "best.pt").stat().st_mtime_ns == kept
    assert (central_run.run_dir / "done.json").is_file()
    assert again.report.read_text(encoding="utf-8") == report
    changed = config.model_copy(update={"train": config.train.model_copy(update={"batch_size": 2})})
    with pytest.raises(ConfigError, match="train differ"):
        run_study(changed, resume=True, console=Console(file=io.StringIO()))

    # Caches that changed since the finished runs used them (new data, other preprocessing): no resume.
    recorded = json.loads((out / "data.json").read_text(encoding="utf-8"))
    assert recorded == data_fingerprint(config) and len(recorded) >= 2
    (out / "data.json").write_text(json.dumps({**recorded, next(iter(recorded)): "0" * 64}))
    with pytest.raises(StudyDataChanged, match="cached data changed"):
        run_study(config, resume=True, console=Console(file=io.StringIO()))

    # The report reads files only: the overlays come from the slices the test evaluations kept. Those of
    # an earlier fedgin kept none; resuming keeps them from the best checkpoints, and the report is the same.
    kept = sorted((out / "runs").glob("*/*/test/kept_slices/*.npz"))
    assert len(kept) == 2 * 2  # two runs x one CT and one MRI test case
    for path in kept:
        path.unlink()
    keep_missing_slices(config, result.runs)
    assert sorted((out / "runs").glob("*/*/test/kept_slices/*.npz")) == kept
    for run in result.runs:
        shutil.rmtree(run.run_dir / "checkpoints")
    (out / "figures" / "overlays.png").unlink()
    assert write_report(config, result.runs).read_text(encoding="utf-8") == report
    assert (out / "figures" / "overlays.png").stat().st_size > 5000
    # Neither kept slices nor checkpoints: the report says why it has no overlay figure.
    for path in kept:
        path.unlink()
    keep_missing_slices(config, result.runs)
    without = write_report(config, result.runs).read_text(encoding="utf-8")
    assert "No overlay figure: 4 test slices were not kept" in without and "overlays.png" not in without


def test_data_fingerprint_follows_the_cached_cases(caches: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(caches["ct"], copy)
    config = study_config({**caches, "ct": copy}, tmp_path / "study")
    before = data_fingerprint(config)
    index = (copy / "index.csv").read_text(encoding="utf-8").splitlines()
    columns = index[0].split(",")
    first = index[1].split(",")
    first[columns.index("protocol")] = "another_protocol"  # metadata only: the same cached arrays
    (copy / "index.csv").write_text("\n".join([index[0], ",".join(first), *index[2:]]) + "\n")
    assert data_fingerprint(config) == before
    first[columns.index("fingerprint")] = "f" * 16  # re-prepared from other files or settings
    (copy / "index.csv").write_text("\n".join([index[0], ",".join(first), *index[2:]]) + "\n")
    after = data_fingerprint(config)
    assert after[str(copy)] != before[str(copy)]
    assert {k: v for k, v in after.items() if k != str(copy)} == {
        k: v for k, v in before.items() if k != str(copy)
    }


def test_resume_accepts_a_study_recorded_before_new_settings_existed(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    """A study.toml written before a setting was added (here GIN's kernel_sizes and alpha_range) is the
    same study when the new settings hold their defaults; a changed setting still refuses --resume."""
    import tomli_w

    from fedgin.study.runner import _check_output

    config = study_config(caches, tmp_path / "study")
    config.output.mkdir(parents=True)
    recorded = config.model_dump(mode="json", exclude_none=True)
    for added in ("kernel_sizes", "alpha_range"):
        del recorded["gin"][added]
    (config.output / "study.toml").write_text(tomli_w.dumps(recorded))
    _check_output(config, resume=True, overwrite=False)

    # Seeds and methods may be added (each has folders of its own); the training recipe may not change.
    recorded["seeds"] = [*recorded["seeds"], 99]
    recorded["methods"] = ["fedgin"]
    (config.output / "study.toml").write_text(tomli_w.dumps(recorded))
    _check_output(config, resume=True, overwrite=False)
    recorded["train"]["batch_size"] = 16
    (config.output / "study.toml").write_text(tomli_w.dumps(recorded))
    with pytest.raises(ConfigError, match=r"other settings \(train differ\)"):
        _check_output(config, resume=True, overwrite=False)


def test_the_extensions_of_fedgin_plan_ipa_and_balanced_weights(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    config = study_config(
        caches, tmp_path / "ext", scenario="limited", ratios=["1:0", "1:1"], limited_mri_cases=1,
        methods=["fl_no_gin", "fedgin", "fedgin_balanced", "fedgin_ipa", "fedgin_ipa_balanced"],
    )  # fmt: skip
    runs = {(run.point, run.method): run for run in plan_study(config)}
    for point in ("1:0", "1:1"):
        assert (
            not runs[(point, "fedgin")].config.gin.ipa and not runs[(point, "fl_no_gin")].config.gin.enabled
        )
        assert (
            runs[(point, "fedgin_ipa")].config.gin.ipa and runs[(point, "fedgin_ipa_balanced")].config.gin.ipa
        )
    weighting = {key: run.config.federation.weighting for key, run in runs.items()}
    assert (
        weighting[("1:1", "fedgin_balanced")]
        == weighting[("1:1", "fedgin_ipa_balanced")]
        == "modality_balanced"
    )
    assert weighting[("1:1", "fedgin")] == weighting[("1:1", "fedgin_ipa")] == "examples"
    # At 1:0 only the MRI site takes part: balancing changes nothing, so each balanced run is its twin.
    assert runs[("1:0", "fedgin_balanced")].identity == runs[("1:0", "fedgin")].identity
    assert runs[("1:0", "fedgin_ipa_balanced")].identity == runs[("1:0", "fedgin_ipa")].identity
    assert runs[("1:1", "fedgin_balanced")].identity != runs[("1:1", "fedgin")].identity
    # The paper's methods stay a study's default.
    settings = config.model_dump()
    del settings["methods"]
    assert StudyConfig.model_validate(settings).methods == [
        "local", "ct_only", "mri_only", "fl_no_gin", "fedgin", "centralized", "centralized_gin"
    ]  # fmt: skip


def test_a_resumed_study_adds_methods_and_reports_them_against_fedgin(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    config = study_config(
        caches, tmp_path / "study", scenario="limited", ratios=["1:0", "1:1"], limited_mri_cases=1,
        methods=["fedgin"], stats=False, cross_site=False,
    )  # fmt: skip
    run_study(config, console=Console(file=io.StringIO()))
    fedgin_run = config.output / "runs" / "seed7" / "1-1" / "fedgin"
    done_before = (fedgin_run / "done.json").read_text()
    config.methods = ["fedgin", "fedgin_ipa_balanced"]
    log = io.StringIO()
    run_study(config, resume=True, console=Console(file=log, width=200))
    assert "FedGIN done before" in log.getvalue()
    assert (fedgin_run / "done.json").read_text() == done_before  # not trained again
    balanced = config.output / "runs" / "seed7" / "1-1" / "fedgin_ipa_balanced"
    with open(balanced / "rounds.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert {"weight_site_ct", "weight_site_mri"} <= set(header)
    report = (config.output / "report.md").read_text(encoding="utf-8")
    assert "| FedGIN+IPA, modality-balanced vs FedGIN | 1:1, MRI | – (not in the paper) |" in report
    assert (config.output / "figures" / "dice_vs_ratio.png").stat().st_size > 20000


def test_a_study_refused_before_anything_ran_starts_again_without_resume(tmp_path: Path) -> None:
    """A first start that stopped at a missing data folder left only study.toml: the same command again
    names the data problem, not "a study is already here"."""
    from fedgin.errors import DataError

    config = StudyConfig.model_validate(
        {
            "output": str(tmp_path / "study"),
            "seeds": [1],
            "methods": ["fedgin"],
            "sites": [{"name": "a", "ct": [{"cache": str(tmp_path / "c_ct")}]}],
            "test": [{"cache": str(tmp_path / "c_test")}],
            "prepare": [
                {"source": "totalseg-ct", "root": str(tmp_path / "missing"), "cache": str(tmp_path / "c_ct")}
            ],
        }
    )
    for _ in range(2):
        with pytest.raises(DataError, match="data folder not found"):
            run_study(config, console=Console(quiet=True))
    assert sorted(path.name for path in (tmp_path / "study").iterdir()) == [".fedgin", "study.toml"]
