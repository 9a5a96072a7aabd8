"""The FedGIN study: every method, scenario point and seed on one data set, and its report."""

from fedgin.study.config import METHODS, PRESETS, StudyConfig, load_study, preset_path
from fedgin.study.plan import PlannedRun, plan_study
from fedgin.study.runner import StudyResult, run_study

__all__ = [
    "METHODS",
    "PRESETS",
    "PlannedRun",
    "StudyConfig",
    "StudyResult",
    "load_study",
    "plan_study",
    "preset_path",
    "run_study",
]
