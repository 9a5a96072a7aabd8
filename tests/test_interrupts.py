"""Real signals: Ctrl-C ends `fedgin federate` cleanly; a killed `prepare` leaves no orphans."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedgin.checkpoints import load_checkpoint
from fedgin.config import PreprocessConfig, SynthConfig, dump_toml
from fedgin.prepare import prepare
from fedgin.processes import alive, descendants
from fedgin.synth import generate
from test_deployment import fedgin
from test_federation import fl_config

ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
#: The seconds a Ctrl-C may take to end `fedgin federate` (Ray shut down included).
INTERRUPT_LIMIT_S = 20.0


def survivors(pids: list[int], within_s: float) -> list[int]:
    """Those of `pids` still alive after waiting up to `within_s` seconds for them to end."""
    deadline = time.monotonic() + within_s
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def kill_all(process: subprocess.Popen, pids: list[int]) -> None:
    """Test clean-up: SIGKILL whatever of the command's tree is still there."""
    for pid in [process.pid, *descendants(process.pid), *pids]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


def read_rounds(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "rounds.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_ctrl_c_stops_federate_in_seconds_and_resume_finishes(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    """SIGINT to the process group (what Ctrl-C in a terminal does) after round 1 of 3 is written."""
    clients = [
        {"name": "ct", "data": [{"cache": caches["ct"]}]},
        {"name": "mri", "data": [{"cache": caches["t2"]}]},
    ]
    config = fl_config(caches, tmp_path / "run", clients, rounds=3, client_validation=False)
    config_path = tmp_path / "fl.toml"
    dump_toml(config, config_path)
    last = config.output / "checkpoints" / "last.pt"
    stderr = tmp_path / "federate.err"
    # A test runner started in the background of a non-interactive shell (as CI may be) ignores SIGINT, and
    # an ignored signal stays ignored across exec. A terminal's foreground job has SIGINT at its default: a
    # handler here (not SIG_IGN) makes the child start with the default, whatever this process inherited.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(tmp_path / "federate.out", "w") as out, open(stderr, "w") as err:
            server = subprocess.Popen(
                fedgin("federate", "--config", str(config_path)),
                stdout=out,
                stderr=err,
                env=ENV,
                start_new_session=True,  # its own process group, as a terminal's foreground job
            )
    finally:
        signal.signal(signal.SIGINT, inherited)
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.poll() is None and last.exists(), stderr.read_text()
        tree = descendants(server.pid)  # Ray's GCS, raylet, agents and the ClientApp actors
        assert len(tree) >= 3, tree
        os.killpg(server.pid, signal.SIGINT)
        code = server.wait(timeout=INTERRUPT_LIMIT_S)  # a hang fails here (TimeoutExpired)
        errors = stderr.read_text()
        assert code == 130, errors
        lines = errors.strip().splitlines()
        assert len(lines) == 1, errors  # one short message: no traceback, no ActorDiedError, no Ray noise
        assert lines[0].startswith("interrupted:") and "--resume" in lines[0] and str(last) in lines[0]
        assert survivors(tree, within_s=5.0) == []  # Ray shut down, no worker left behind
    finally:
        kill_all(server, tree)

    kept = load_checkpoint(last)["round"]
    assert 1 <= kept < 3
    assert [int(row["round"]) for row in read_rounds(config.output)] == list(range(1, kept + 1))

    resumed = subprocess.run(
        fedgin("federate", "--config", str(config_path), "--resume"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {config.output} after round {kept}" in " ".join(resumed.stdout.split())
    assert [row["round"] for row in read_rounds(config.output)] == ["1", "2", "3"]
    assert load_checkpoint(last)["round"] == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_sigkill_of_prepare_takes_its_workers_and_resource_tracker(tmp_path: Path) -> None:
    """`fedgin prepare --workers 2` SIGKILLed mid-run: its pool workers and resource tracker end with it."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    synth = SynthConfig(subjects=16, seed=11, shape=(96, 96, 48), spacing=(3, 3, 5), modalities=["ct"])
    generate(synth, "totalseg", data, progress=False)
    index = cache / "index.csv"
    command = fedgin(
        "prepare", "--source", "totalseg-ct", "--root", str(data), "--out", str(cache), "--workers", "2"
    )
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, start_new_session=True
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        # Mid-run: both workers and the resource tracker started, at least one case written.
        while process.poll() is None and time.monotonic() < deadline:
            children = descendants(process.pid)
            if len(children) >= 3 and index.exists() and len(index.read_text().splitlines()) >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, "prepare ended before it could be killed"
        cases_done = len(index.read_text().splitlines()) - 1
        assert cases_done < 16, "prepare ended before it could be killed"
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children}
        assert any(b"resource_tracker" in line for line in commands.values()), commands
        assert sum(b"spawn_main" in line for line in commands.values()) == 2, commands
        os.kill(process.pid, signal.SIGKILL)  # the process only, not its group: no signal reaches a worker
        process.wait(timeout=30)
        assert survivors(children, within_s=5.0) == [], commands
    finally:
        kill_all(process, children)

    # What was indexed before the kill is complete: a rerun keeps it and prepares the rest.
    report = prepare("totalseg-ct", data, cache, PreprocessConfig(), workers=2, progress=False)
    assert report.ok, report.failed
    assert len(report.skipped) >= cases_done and len(report.prepared) + len(report.skipped) == 16
