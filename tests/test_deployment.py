"""Deployment on loopback: a TLS SuperLink with SuperNode authentication, two sites, one round."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fedgin.config import RunConfig
from fedgin.federation import deployment as dep
from fedgin.federation.certificates import make_dev_certificates


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
        dep.superlink_command()


def test_tls_authenticated_round(caches: dict[str, Path], tmp_path: Path) -> None:
    certs = make_dev_certificates(tmp_path / "certs", 3, ["ct", "t2", "rogue"])
    home, logs = tmp_path / "flwr-home", tmp_path / "logs"
    env = dep.flower_env(home)
    port = free_port()
    address = f"127.0.0.1:{port}"
    dep.write_flower_config(home, address, certs.ca_cert)
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
            # the server's view of the sites' data is a placeholder: each SuperNode names its own cache
            "clients": [
                {"name": "ct", "data": [{"cache": "/nonexistent/ct"}]},
                {"name": "t2", "data": [{"cache": "/nonexistent/t2"}]},
            ],
        },
    )
    dep.write_app(config, tmp_path / "app")
    processes: list[dep.Process] = []
    try:
        link = dep.start(
            "superlink",
            dep.superlink_command(
                ca_cert=certs.ca_cert, server_cert=certs.server_cert, server_key=certs.server_key,
                port=port, database=tmp_path / "state.db",
            ),
            logs, env, cwd=tmp_path,
        )  # fmt: skip
        processes.append(link)
        wait_for(lambda: "Uvicorn running on https://" in link.text(), 30, "the SuperLink")
        for site in ("ct", "t2"):
            keys = certs.supernode(site)
            subprocess.run(dep.register_command(keys.public_key, site), env=env, check=True, timeout=60,
                           capture_output=True)  # fmt: skip
        for site, cache in (("ct", caches["ct"]), ("t2", caches["t2"]), ("rogue", caches["ct"])):
            command = dep.supernode_command(
                site, cache, superlink=address, ca_cert=certs.ca_cert,
                private_key=certs.supernode(site).private_key, port=free_port(), max_retries=2,
            )  # fmt: skip
            processes.append(dep.start(f"supernode-{site}", command, logs, env, cwd=tmp_path))
        ct, t2, rogue = processes[1:]
        wait_for(lambda: "SuperNode ID" in ct.text() and "SuperNode ID" in t2.text(), 60, "the SuperNodes")
        wait_for(lambda: not rogue.alive(), 60, "the unregistered SuperNode to be refused")
        assert "Failed to activate SuperNode" in rogue.text()
        assert "SuperNode ID" not in rogue.text()

        submitted = subprocess.run(dep.run_command(tmp_path / "app"), env=env, capture_output=True,
                                   text=True, timeout=120, cwd=tmp_path)  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert json.loads(submitted.stdout)["success"]
        summary = config.output / "summary.json"
        wait_for(summary.exists, 150, f"{summary} (logs in {logs})")
        assert json.loads(summary.read_text())["rounds"] == 1
        assert (config.output / "rounds.csv").read_text().count("\n") == 2
    finally:
        dep.stop_all(processes)
    for process in processes:
        assert not process.alive()
