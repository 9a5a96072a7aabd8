"""Only the operator's signed app runs: an attacker holding ca.crt cannot run code on the server or a site.

The attacker's app is a real Flower app whose ServerApp and ClientApp each create a marker file; it is
submitted with Flower's own `flwr run` from another FLWR_HOME, to real SuperLinks and SuperNodes on loopback.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from fedgin.federation import flower
from fedgin.federation.app_signing import (
    SignatureError,
    load_trusted,
    make_publisher_key,
    sign_fab,
    verify_fab,
)
from fedgin.federation.certificates import make_dev_certificates
from flower_processes import Process, start, stop_all
from test_deployment import fedgin, free_port, wait_for

EVIL_APP = """
from pathlib import Path

from flwr.app import Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

server_app = ServerApp()
client_app = ClientApp()


@server_app.main()
def main(grid, context):
    Path(context.run_config["marker"] + ".server").touch()
    deadline = __import__("time").monotonic() + 30
    while not list(grid.get_node_ids()) and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.5)
    messages = [Message(RecordDict(), dst_node_id=node, message_type="train") for node in grid.get_node_ids()]
    grid.send_and_receive(messages, timeout=30)


@client_app.train()
def train(message, context):
    Path(context.run_config["marker"] + ".client").touch()
    return Message(RecordDict(), reply_to=message)
"""


def evil_app(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "evil.py").write_text(EVIL_APP)
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "evil", "version": "1.0.0", "license": "Apache-2.0", "dependencies": []},
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "mallory",
                    "components": {"serverapp": "evil:server_app", "clientapp": "evil:client_app"},
                    "config": {"marker": str(marker)},
                }
            }
        },
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    return folder


def test_signatures(tmp_path: Path) -> None:
    operator, mallory = make_publisher_key(tmp_path / "op"), make_publisher_key(tmp_path / "mallory")
    trusted = load_trusted(operator.trusted)
    content = b"a FAB's bytes"
    signed = sign_fab(content, operator.private_key, signed_at=1_000_000)
    assert verify_fab(content, signed, trusted, now=1_000_010) in trusted
    assert load_trusted(operator.public_key) == trusted  # a .pub works as well as the YAML
    cases = [
        (content, {}, "not signed"),
        (content, sign_fab(content, mallory.private_key, signed_at=1_000_000), "not by a trusted publisher"),
        (b"another FAB", signed, "does not match the app's content"),
    ]
    for data, verifications, problem in cases:
        with pytest.raises(SignatureError, match=problem):
            verify_fab(data, verifications, trusted, now=1_000_010)
    with pytest.raises(SignatureError, match="made 3600 s ago"):
        verify_fab(content, signed, trusted, now=1_003_600)  # a captured submission replayed an hour later


def attacker_env(tmp_path: Path, address: str, ca_cert: Path) -> dict[str, str]:
    """Someone with the public ca.crt and network access, in their own FLWR_HOME: no key of the operator."""
    home = tmp_path / "mallory-home"
    env = flower.flower_env(home)
    flower.write_flower_config(home, address, ca_cert)
    return env


def start_site(tmp_path: Path, certs, address: str, logs: Path, env, trusted: Path) -> Process:
    command = fedgin(
        "deploy", "supernode", "--site", "ct", "--superlink", address, "--ca-cert", certs.ca_cert,
        "--key", certs.supernode("ct").private_key, "--port", free_port(), "--state", tmp_path / "site",
        "--trusted-publishers", trusted,
    )  # fmt: skip
    return start("supernode", command, logs, env, cwd=tmp_path)


def start_superlink(
    tmp_path: Path, certs, address: str, logs: Path, env, processes: list, *extra: str
) -> Process:
    """`fedgin deploy superlink` on loopback, added to `processes` (stopped by the caller) before it is up."""
    command = fedgin("deploy", "superlink", "--certs", certs.directory, "--port", address.split(":")[1],
                     "--state", tmp_path / "server", *extra)  # fmt: skip
    link = start("superlink", command, logs, env, cwd=tmp_path)
    processes.append(link)
    wait_for(lambda: "Uvicorn running on https://" in link.text(), 30, "the SuperLink")
    return link


def register(certs, address: str, state: Path, env) -> None:
    subprocess.run(
        fedgin("deploy", "register", certs.supernode("ct").public_key, "--site", "ct", "--superlink", address,
               "--ca-cert", certs.ca_cert, "--state", state),
        env=env, check=True, timeout=60, capture_output=True,
    )  # fmt: skip


def test_guarded_superlink_admits_only_signed_apps(tmp_path: Path) -> None:
    """Unsigned, or signed by a second publisher: refused at submission; nothing runs anywhere."""
    certs = make_dev_certificates(tmp_path / "certs", 1, ["ct"])
    operator = make_publisher_key(certs.directory)
    mallory = make_publisher_key(tmp_path / "mallory-keys")
    address, logs, marker = f"127.0.0.1:{free_port()}", tmp_path / "logs", tmp_path / "pwned"
    env = flower.flower_env(tmp_path / "unused-home")
    processes: list[Process] = []
    try:
        link = start_superlink(tmp_path, certs, address, logs, env, processes)
        register(certs, address, tmp_path / "server", env)
        processes.append(start_site(tmp_path, certs, address, logs, env, operator.public_key))
        wait_for(lambda: "SuperNode ID" in processes[1].text(), 60, "the SuperNode")

        app = evil_app(tmp_path / "evil", marker)
        mallory_env = attacker_env(tmp_path, address, certs.ca_cert)
        unsigned = subprocess.run(
            [flower.executable("flwr"), "run", str(app), flower.CONNECTION, "--format", "json"],
            env=mallory_env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        other_signer = subprocess.run(
            flower.run_command(app, publisher_key=mallory.private_key),
            env=mallory_env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        for result, problem in ((unsigned, "not signed"), (other_signer, "not by a trusted publisher")):
            output = result.stdout + result.stderr
            # `flwr run --format json` exits 0 and says "success": false; the streaming form exits 1
            assert "Successfully started run" not in output and '"success": true' not in output, output
            assert f"run refused: the app is {problem}" in output or problem in output, output
        time.sleep(5)  # what would have run had a run been created
        assert "run refused: the app is not signed" in link.text()
        assert "not by a trusted publisher" in link.text()
        assert not marker.with_suffix(".server").exists() and not marker.with_suffix(".client").exists()

        # The Runtime API (same port) hands out the server's tasks only to the authenticated SuperExec.
        probe = subprocess.run(
            [sys.executable, "-c", ACQUIRE_TASK, address, str(certs.ca_cert)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert probe.returncode != 0, probe.stdout + probe.stderr
    finally:
        stop_all(processes)
    assert not any(process.alive() for process in processes)


ACQUIRE_TASK = """
import sys
from pathlib import Path
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.runtime import RuntimeHttpClient
client = RuntimeHttpClient.from_server_address(
    server_address=sys.argv[1], insecure=False, root_certificates=Path(sys.argv[2]).read_bytes(),
    interceptors=[], retry_invoker=None,
)
client.AcquireTask(AcquireTaskRequest(supported_task_types=["serverapp"]))
print("acquired without the SuperExec secret")
"""


def test_site_refuses_an_unsigned_app_even_from_its_superlink(tmp_path: Path) -> None:
    """A SuperLink that admits anything (compromised, or --allow-unsigned-apps): the site still refuses."""
    certs = make_dev_certificates(tmp_path / "certs", 1, ["ct"])
    operator = make_publisher_key(certs.directory)
    address, logs, marker = f"127.0.0.1:{free_port()}", tmp_path / "logs", tmp_path / "pwned"
    env = flower.flower_env(tmp_path / "unused-home")
    processes: list[Process] = []
    try:
        start_superlink(tmp_path, certs, address, logs, env, processes, "--allow-unsigned-apps")
        register(certs, address, tmp_path / "server", env)
        site = start_site(tmp_path, certs, address, logs, env, operator.public_key)
        processes.append(site)
        wait_for(lambda: "SuperNode ID" in site.text(), 60, "the SuperNode")
        app = evil_app(tmp_path / "evil", marker)
        submitted = subprocess.run(
            [flower.executable("flwr"), "run", str(app), flower.CONNECTION, "--format", "json"],
            env=attacker_env(tmp_path, address, certs.ca_cert), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr  # this SuperLink admits it
        server_marker = marker.with_suffix(".server")
        wait_for(server_marker.exists, 60, "the attacker's ServerApp on the unguarded server")
        wait_for(lambda: "could not be verified" in site.text() or "verification failed" in site.text(), 60,
                 "the site to refuse the app")  # fmt: skip
        time.sleep(3)
        assert not marker.with_suffix(".client").exists()
    finally:
        stop_all(processes)
