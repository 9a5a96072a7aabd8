"""Deployment on loopback: a TLS SuperLink with SuperNode authentication, two sites, one round."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedgin.config import RunConfig, dump_toml
from fedgin.federation import flower
from fedgin.federation.certificates import make_dev_certificates
from flower_processes import Process, start, stop_all


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_certificates_are_private(tmp_path: Path) -> None:
    certs = make_dev_certificates(tmp_path / "certs", 2, ["ct", "t2"])
    assert certs.server_key.stat().st_mode & 0o777 == 0o600
    assert certs.supernode("ct").private_key.stat().st_mode & 0o777 == 0o600
    assert certs.supernode("t2").public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert "DEVELOPMENT ONLY" in (tmp_path / "certs" / "README-DEVELOPMENT-ONLY.txt").read_text()
    with pytest.raises(Exception, match="insecure"):
        flower.superlink_command()


def fedgin(*args: object) -> list[str]:
    return [str(Path(sys.executable).parent / "fedgin"), *(str(arg) for arg in args)]


#: The deployment walk-through's federation with DP (clipped on the sites) and SecAgg+ (docs/deployment.md).
PRIVATE = {
    "secagg": {},
    "privacy": {"clip_on": "client", "clipping_norm": 1.0, "noise_multiplier": 0.5, "target_delta": 1e-3},
}


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp-secagg"])
def test_tls_authenticated_round(caches: dict[str, Path], tmp_path: Path, private: bool) -> None:
    """The deployment as a user types it: `fedgin certs`, `fedgin deploy superlink|register|supernode|run`;
    once plain, once with DP and SecAgg+."""
    certs = tmp_path / "certs"
    subprocess.run(fedgin("certs", "--out", certs, "--sites", "ct,mix,rogue"), check=True, timeout=60)
    server, logs = tmp_path / "server", tmp_path / "logs"
    address = f"127.0.0.1:{free_port()}"
    tls = ("--superlink", address, "--ca-cert", certs / "ca.crt")
    env = flower.flower_env(tmp_path / "unused-home")  # the wrappers set FLWR_HOME under each --state
    config = RunConfig(
        name="deploy-tiny",
        seed=7,
        output=tmp_path / "run",
        model={"channels": (4, 8), "strides": (2,), "num_res_units": 1},
        train={"batch_size": 4, "device": "cpu"},
        federation={
            "rounds": 1,
            "local_steps": 1,
            "min_clients": 2,
            "round_timeout_s": 90,
            # the server's view of the sites' data is a placeholder: each SuperNode names its own caches
            "clients": [
                {"name": "ct", "data": [{"cache": "/nonexistent/ct"}]},
                {"name": "mix", "data": [{"cache": "/nonexistent/ct"}, {"cache": "/nonexistent/t2"}]},
            ],
            **(PRIVATE if private else {}),
        },
    )
    dump_toml(config, tmp_path / "fl.toml")
    processes: list[Process] = []
    try:
        link = start(
            "superlink",
            fedgin("deploy", "superlink", "--certs", certs, "--port", address.split(":")[1],
                   "--state", server),
            logs, env, cwd=tmp_path,
        )  # fmt: skip
        processes.append(link)
        wait_for(lambda: "Uvicorn running on https://" in link.text(), 30, "the SuperLink")
        assert "--enable-supernode-auth" in link.text() and "--ssl-certfile" in link.text()
        assert "--trusted-publishers" in link.text() and "--superexec-auth-secret-file" in link.text()
        for site in ("ct", "mix"):
            public_key = certs / "supernodes" / f"{site}.pub"
            subprocess.run(fedgin("deploy", "register", public_key, "--site", site, "--state", server),
                           env=env, check=True, timeout=60, capture_output=True)  # fmt: skip
        site_caches = {"ct": [caches["ct"]], "mix": [caches["ct"], caches["t2"]]}
        if not private:  # the unregistered site: once is enough
            site_caches["rogue"] = [caches["ct"]]
        for site, folders in site_caches.items():
            command = fedgin(
                "deploy", "supernode", "--site", site, *tls, "--key", certs / "supernodes" / f"{site}.key",
                "--port", free_port(), "--state", tmp_path / f"site-{site}",
                "--trusted-publishers", certs / "publisher.pub",
                # an unregistered key is refused like a recently crashed one: give up soon for the test
                # 15 s: long enough for one refused activation on a loaded machine (5 s was not, once)
                *(["--activation-timeout", 15] if site == "rogue" else []),
                *(arg for folder in folders for arg in ("--cache", folder)),
            )  # fmt: skip
            processes.append(start(f"supernode-{site}", command, logs, env, cwd=tmp_path))
        ct, mix = processes[1:3]
        wait_for(lambda: "SuperNode ID" in ct.text() and "SuperNode ID" in mix.text(), 60, "the SuperNodes")
        if not private:
            rogue = processes[3]
            wait_for(lambda: not rogue.alive(), 60, "the unregistered SuperNode to be refused")
            assert "Failed to activate SuperNode" in rogue.text()
            assert "SuperNode ID" not in rogue.text()

        submitted = subprocess.run(
            fedgin("deploy", "run", "--config", tmp_path / "fl.toml", *tls, "--state", server,
                   "--publisher-key", certs / "publisher.key"),
            env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "admitted, app signed by fedgin-" in link.text()
        summary = config.output / "summary.json"
        wait_for(summary.exists, 150, f"{summary} (logs in {logs})")
        assert json.loads(summary.read_text())["rounds"] == 1
        with open(config.output / "rounds.csv", newline="") as handle:
            (row,) = list(csv.DictReader(handle))
        # each site trained on the slices of its own caches (the t2 fixture's train split has 24 slices)
        assert row["clients"] == "2" and int(row["examples_mix"]) == int(row["examples_ct"]) + 24
        if private:
            assert float(row["epsilon"]) > 0 and json.loads(summary.read_text())["privacy"]["epsilon"] > 0
            assert row["secagg_mean_only"] == "True"  # the server got the unmasked mean, no single update
        else:
            requests_on_the_same_supernodes(tmp_path, config, tls, server, certs, env, logs)
    finally:
        stop_all(processes)
    for process in processes:
        assert not process.alive()


def requests_on_the_same_supernodes(
    tmp_path: Path, config: RunConfig, tls: tuple, server: Path, certs: Path, env: dict, logs: Path
) -> None:
    """`deploy run --task stats` and `--task cross-site` answered by the SuperNodes that trained."""
    best = config.output / "checkpoints" / "best.pt"
    for task, extra, result in (
        ("stats", (), config.output / "stats" / "stats.json"),
        ("cross-site", ("--model", f"global={best}"), config.output / "cross_site" / "cross_site.csv"),
    ):
        submitted = subprocess.run(
            fedgin("deploy", "run", "--config", tmp_path / "fl.toml", *tls, "--state", server,
                   "--publisher-key", certs / "publisher.key", "--task", task, *extra),
            env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        wait_for(result.exists, 150, f"{result} (logs in {logs})")
    stats = json.loads((config.output / "stats" / "stats.json").read_text())
    assert sorted(stats["sites"]) == ["ct", "mix"] and set(stats["pooled"]) == {"ct", "mri_t2"}
    with open(config.output / "cross_site" / "cross_site.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["model"], row["site"]) for row in rows} == {("global", "ct"), ("global", "mix")}
    # the mix site scored its CT and its T2 test cases (from its own caches, named in its node config)
    assert {row["group"] for row in rows if row["site"] == "mix" and row["group_by"] == "domain"} == {
        "ct",
        "mri_t2",
    }
