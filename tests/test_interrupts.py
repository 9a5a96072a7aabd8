"""Real signals: Ctrl-C ends `fedgin federate` and `fedgin cross-site` in seconds with Ray stopped; a
killed `federate` or `prepare` leaves no orphans."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedgin.checkpoints import load_checkpoint
from fedgin.config import PreprocessConfig, RunConfig, SynthConfig, dump_toml
from fedgin.folders import MARKER, kind_of
from fedgin.prepare import prepare
from fedgin.processes import alive, descendants
from fedgin.synth import generate
from test_deployment import fedgin, free_port
from test_federation import fl_config
from test_ray_sockets import exposed

ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
#: The seconds a Ctrl-C may take to end `fedgin federate` or `cross-site` (Ray shut down included).
INTERRUPT_LIMIT_S = 10.0
#: The seconds Ray's processes (agents included) may outlive a SIGKILLed `fedgin federate`.
ORPHAN_LIMIT_S = 5.0


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


def start_in_foreground(args: list[object], tmp_path: Path, name: str) -> subprocess.Popen:
    """`fedgin ARGS` as a terminal's foreground job: its own process group, SIGINT at its default.

    A test runner started in the background of a non-interactive shell (as CI may be) ignores SIGINT, and
    an ignored signal stays ignored across exec: a handler here (not SIG_IGN) makes the child start with
    the default, whatever this process inherited. Output goes to NAME.out and NAME.err in `tmp_path`.
    """
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
            return subprocess.Popen(
                fedgin(*args), stdout=out, stderr=err, env=ENV, start_new_session=True
            )  # its own process group, as a terminal's foreground job
    finally:
        signal.signal(signal.SIGINT, inherited)


def client_apps(pid: int) -> list[int]:
    """The ClientApp actors (Ray worker processes) under `pid`: a round's training has begun."""
    found = []
    for child in descendants(pid):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"ray::ClientAppActor"):
                found.append(child)
        except OSError:
            continue
    return found


def wait_for_client_apps(process: subprocess.Popen, stderr: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not client_apps(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None and client_apps(process.pid), stderr.read_text()


def interrupt_in_seconds(process: subprocess.Popen, stderr: Path) -> tuple[str, list[int]]:
    """Ctrl-C (SIGINT to the process group): the command ends within INTERRUPT_LIMIT_S with status 130
    and one line on stderr, and no process it started (Ray's included) is left a few seconds later.
    Returns that line and the process tree as it was before the Ctrl-C."""
    tree = descendants(process.pid)  # Ray's GCS, raylet, agents and the ClientApp actors
    assert len(tree) >= 3, tree
    assert exposed(process.pid) == []  # Ray listens on loopback only
    os.killpg(process.pid, signal.SIGINT)
    code = process.wait(timeout=INTERRUPT_LIMIT_S)  # a hang fails here (TimeoutExpired)
    errors = stderr.read_text()
    assert code == 130, errors
    lines = errors.strip().splitlines()
    assert len(lines) == 1, errors  # one short message: no traceback, no ActorDiedError, no Ray noise
    assert survivors(tree, within_s=5.0) == []  # Ray shut down, no worker or agent left behind
    return lines[0], tree


def read_rounds(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "rounds.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def two_sites(caches: dict[str, Path], tmp_path: Path, rounds: int) -> tuple[RunConfig, Path]:
    """The tiny two-site federation (CT and MRI T2 caches) and its TOML."""
    clients = [
        {"name": "ct", "data": [{"cache": caches["ct"]}]},
        {"name": "mri", "data": [{"cache": caches["t2"]}]},
    ]
    config = fl_config(caches, tmp_path / "run", clients, rounds=rounds, client_validation=False)
    config_path = tmp_path / "fl.toml"
    dump_toml(config, config_path)
    return config, config_path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_ctrl_c_stops_federate_in_seconds_and_resume_finishes(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    """Ctrl-C after round 1 of 3 is written: the round is kept and --resume finishes the run; then Ctrl-C
    on `fedgin cross-site` of its best model ends that in seconds as well."""
    config, config_path = two_sites(caches, tmp_path, rounds=3)
    last = config.output / "checkpoints" / "last.pt"
    server = start_in_foreground(["federate", "--config", config_path], tmp_path, "federate")
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.poll() is None and last.exists(), (tmp_path / "federate.err").read_text()
        line, tree = interrupt_in_seconds(server, tmp_path / "federate.err")
        assert line.startswith("interrupted:") and "--resume" in line and str(last) in line
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

    best = config.output / "checkpoints" / "best.pt"
    evaluation = start_in_foreground(
        ["cross-site", "--config", config_path, "--model", f"global={best}", "--split", "train"],
        tmp_path,
        "cross-site",
    )
    tree = []
    try:
        wait_for_client_apps(evaluation, tmp_path / "cross-site.err")
        line, tree = interrupt_in_seconds(evaluation, tmp_path / "cross-site.err")
        assert line.startswith("interrupted before the cross-site results were complete"), line
    finally:
        kill_all(evaluation, tree)
    assert not (config.output / "cross_site").exists()


#: When the Ctrl-C comes: seconds after round 1's ClientApp actors started.
ROUND_1_MOMENTS_S = [0.0, 1.0, 2.5, 5.0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
@pytest.mark.parametrize("after_s", ROUND_1_MOMENTS_S)
def test_ctrl_c_during_round_1_ends_federate_in_seconds(
    caches: dict[str, Path], tmp_path: Path, after_s: float
) -> None:
    """Ctrl-C while round 1 trains (it hung in 6 of 8 tries: a thread of Flower's engine waited forever
    on a ClientApp actor after Ray was shut down): exit within 10 s, Ray stopped, the hint right."""
    config, config_path = two_sites(caches, tmp_path, rounds=3)
    server = start_in_foreground(["federate", "--config", config_path], tmp_path, "federate")
    tree: list[int] = []
    try:
        wait_for_client_apps(server, tmp_path / "federate.err")
        time.sleep(after_s)
        line, tree = interrupt_in_seconds(server, tmp_path / "federate.err")
    finally:
        kill_all(server, tree)
    last = config.output / "checkpoints" / "last.pt"
    if last.exists():  # round 1 was finished and committed before the Ctrl-C
        assert "--resume" in line and str(last) in line, line
    else:  # --overwrite replaces this unfinished run only: nothing but its config.toml and marker are there
        assert line.startswith("interrupted before round 1 finished") and "--overwrite" in line, line
        written = sorted(path.name for path in config.output.iterdir() if path.name != ".flwr")
        assert written == [MARKER, "config.toml"], written
        assert kind_of(config.output) == "run"  # so that --overwrite will replace it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_sigkill_of_federate_takes_ray_with_it(caches: dict[str, Path], tmp_path: Path) -> None:
    """`fedgin federate` SIGKILLed mid-round: every process of Ray's (GCS, raylet, workers, and the
    agents that lived on for a minute) ends within a few seconds."""
    _, config_path = two_sites(caches, tmp_path, rounds=3)
    server = start_in_foreground(["federate", "--config", config_path], tmp_path, "federate")
    tree: list[int] = []
    try:
        wait_for_client_apps(server, tmp_path / "federate.err")
        tree = descendants(server.pid)
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:60] for pid in tree if alive(pid)}
        os.kill(server.pid, signal.SIGKILL)  # the process only: nothing else gets a signal
        server.wait(timeout=30)
        assert survivors(tree, within_s=ORPHAN_LIMIT_S) == [], commands
    finally:
        kill_all(server, tree)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_ctrl_c_of_the_superlink_takes_its_superexec(tmp_path: Path) -> None:
    """The guarded SuperLink (`python -m fedgin.federation.guarded superlink`) interrupted: the
    flower-superexec it started ends with it (it lived on for up to 40 s, polling --parent-pid)."""
    certs = tmp_path / "certs"
    made = subprocess.run(
        fedgin("certs", "--out", certs, "--sites", "ct"), capture_output=True, text=True, env=ENV, timeout=120
    )
    assert made.returncode == 0, made.stderr
    command = ["deploy", "superlink", "--certs", certs, "--port", free_port(), "--state", tmp_path / "state"]
    link = start_in_foreground(command, tmp_path, "superlink")
    superexec: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not superexec and link.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            for pid in descendants(link.pid):
                with contextlib.suppress(OSError):
                    if b"flower-superexec" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        superexec.append(pid)
        assert superexec, (tmp_path / "superlink.out").read_text()
        guarded = int(Path(f"/proc/{superexec[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert b"fedgin.federation.guarded" in Path(f"/proc/{guarded}/cmdline").read_bytes()
        os.kill(guarded, signal.SIGINT)  # the SuperLink alone: superexec gets no signal of its own
        assert survivors(superexec, within_s=5.0) == []
    finally:
        kill_all(link, superexec)


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
