"""Helpers shared by the benchmarks: the machine, medians, synthetic caches, memory of a process tree."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from fedgin.config import PreprocessConfig, SynthConfig
from fedgin.prepare import prepare
from fedgin.synth import generate

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def machine_info() -> dict:
    """What a figure was measured on: CPU model, cores, GPU, library versions, date (UTC)."""
    import flwr
    import monai
    import ray

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        # Two hosts that both call themselves "AMD EPYC" differed about 3x in a training step; the slower
        # one runs torch's AVX2 kernels. The vector extension torch dispatches to tells hosts apart.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE / 2**30, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "flwr": flwr.__version__,
        "ray": ray.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def machine_name(info: dict) -> str:
    """cpu-2core-avx2, or gpu-<name> where a GPU is present: the results file of this machine."""
    if info.get("gpu"):
        return "gpu-" + re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
    capability = re.sub(r"[^a-z0-9]+", "", str(info.get("cpu_capability", "")).lower())
    return f"cpu-{info['cores']}core" + (f"-{capability}" if capability else "")


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def synthetic_volumes(
    out: Path, subjects: int, shape: tuple[int, int, int] = (128, 128, 64), seed: int = 0
) -> Path:
    """`subjects` synthetic CTs of the demo's size (128 x 128 x 64 at 3 x 3 x 5 mm), TotalSegmentator
    layout; generated once, reused after."""
    if not (out / "meta.csv").is_file():
        config = SynthConfig(subjects=subjects, seed=seed, shape=shape, modalities=["ct"])
        generate(config, "totalseg", out, progress=False)
    return out


def prepared_cache(data: Path, out: Path, preprocess: PreprocessConfig, workers: int = 1) -> Path:
    """The cache of `data` (a TotalSegmentator-layout CT folder); prepared once, reused after."""
    report = prepare("totalseg-ct", data, out, preprocess, workers=workers, progress=False)
    if not report.ok:
        raise RuntimeError(f"prepare failed: {report.failed}")
    return out


# -- memory of a process tree (the benchmark's subprocess with Ray's processes) ----------------------------
def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (Ray's GCS, raylet and workers included)."""
    from fedgin.processes import descendants

    return [root, *descendants(root)]


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes; PSS shares each shared page among the processes that map it."""
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0, 0
    pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return rss, pss


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class TreeMemory:
    """Samples the summed RSS and PSS of a process tree every `interval` seconds; keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self.samples = 0
        self.at_peak: list[tuple[str, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = process_tree(self.root)
            rss = pss = 0
            breakdown = []
            for pid in pids:
                one_rss, one_pss = _memory(pid)
                rss, pss = rss + one_rss, pss + one_pss
                breakdown.append((_name(pid), one_rss, one_pss))
            if rss > self.peak_rss:
                self.at_peak = breakdown
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def as_dict(self) -> dict:
        return {
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "peak_pss_mb": round(self.peak_pss / 2**20, 1),
            "peak_processes": self.peak_processes,
            "memory_samples": self.samples,
            # Per process at the RSS peak: MB of RSS and PSS summed over processes of the same name.
            "at_peak_mb": {
                name: [
                    round(sum(r for n, r, _ in self.at_peak if n == name) / 2**20, 1),
                    round(sum(p for n, _, p in self.at_peak if n == name) / 2**20, 1),
                    sum(1 for n, _, _ in self.at_peak if n == name),
                ]
                for name in sorted({n for n, _, _ in self.at_peak})
            },
        }


def wait_until_quiet(max_load: float, timeout_s: float) -> list[float]:
    """Wait (at most timeout_s) until the 1-minute load average is below max_load; returns the last load."""
    deadline = time.monotonic() + timeout_s
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(10)
    return load_average()
