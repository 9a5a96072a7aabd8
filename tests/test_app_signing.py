"""Only the operator's signed app runs, as the operator signed it, once; only the operator registers sites.

The attacker (another FLWR_HOME, with or without ca.crt) uses Flower's own `flwr` CLI, or Flower's own
Control API client to replay a captured submission, against real SuperLinks and SuperNodes on loopback. The
attacker's app is a real Flower app whose ServerApp and ClientApp each create a marker file. The guarded
SuperLink and its site are shared by the tests of this module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from fedgin.config import RunConfig, dump_toml
from fedgin.federation import flower
from fedgin.federation.app_signing import (
    NonceStore,
    SignatureError,
    Submission,
    load_trusted,
    make_publisher_key,
    sign_fab,
    sign_run,
    verify_fab,
    verify_run,
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


def test_run_signatures_and_nonces(tmp_path: Path) -> None:
    operator, mallory = make_publisher_key(tmp_path / "op"), make_publisher_key(tmp_path / "mallory")
    trusted = load_trusted(operator.trusted)
    submitted = Submission("ab" * 32, {"overwrite": False, "rounds": 2}, "", b"")
    record = sign_run(submitted, operator.private_key, signed_at=1_000_000)
    signature = verify_run(submitted, record, trusted, now=1_000_010)
    for changed in (
        Submission("cd" * 32, submitted.override_config, "", b""),
        Submission(submitted.fab_sha256, {"overwrite": True, "rounds": 2}, "", b""),
        Submission(submitted.fab_sha256, {**submitted.override_config, "out": "/elsewhere"}, "", b""),
        Submission(submitted.fab_sha256, submitted.override_config, "another", b""),
    ):
        with pytest.raises(SignatureError, match="does not match this submission"):
            verify_run(changed, record, trusted, now=1_000_010)
    for bad, problem in (
        (None, "no run signature"),
        ("{", "malformed"),
        (sign_run(submitted, mallory.private_key, signed_at=1_000_000), "not by a trusted publisher"),
    ):
        with pytest.raises(SignatureError, match=problem):
            verify_run(submitted, bad, trusted, now=1_000_010)
    with pytest.raises(SignatureError, match="made 3600 s ago"):
        verify_run(submitted, record, trusted, now=1_003_600)

    nonces = NonceStore(tmp_path / "state" / "run-nonces.json", max_age_s=900)
    nonces.claim(signature, now=1_000_010)
    for store in (nonces, NonceStore(tmp_path / "state" / "run-nonces.json", max_age_s=900)):
        with pytest.raises(SignatureError, match="used already"):  # also after a restart
            store.claim(signature, now=1_000_020)
    later = verify_run(
        submitted, sign_run(submitted, operator.private_key, 1_002_000), trusted, now=1_002_000
    )
    nonces.claim(later, now=1_002_000)  # the first nonce is past its validity: forgotten
    assert set(json.loads((tmp_path / "state" / "run-nonces.json").read_text())) == {later.nonce}


def attacker_env(tmp_path: Path, address: str, ca_cert: Path | None) -> dict[str, str]:
    """Someone with network access in their own FLWR_HOME, with the public ca.crt or without (then TLS
    verification is off: see UNVERIFIED_FLWR); no key of the operator."""
    home = tmp_path / ("mallory-home" if ca_cert else "mallory-home-no-ca")
    env = flower.flower_env(home)
    if ca_cert is not None:
        flower.write_flower_config(home, address, ca_cert)
    else:
        connection = {"address": address}
        config = {"superlink": {"default": flower.CONNECTION, flower.CONNECTION: connection}}
        (home / "config.toml").write_text(tomli_w.dumps(config))
    return env


#: Flower's own `flwr` CLI with TLS verification off (no ca.crt needed).
UNVERIFIED_FLWR = """
import sys
import flwr.supercore.protobuf.client as client
original = client.ProtobufClient.__init__
def unverified(self, *args, **kwargs):
    kwargs["verify"] = False
    original(self, *args, **kwargs)
client.ProtobufClient.__init__ = unverified
from flwr.cli.app import app
app(args=sys.argv[1:], prog_name="flwr")
"""


def flwr(env: dict[str, str], *args: object, verify: bool = True) -> dict:
    """A real `flwr ... --format json` command's JSON answer."""
    command = [flower.executable("flwr")] if verify else [sys.executable, "-c", UNVERIFIED_FLWR]
    done = subprocess.run(
        [*command, *(str(arg) for arg in args), "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return json.loads(done.stdout[done.stdout.index("{") :])


def statuses(env: dict[str, str]) -> dict[int, str]:
    """`flwr supernode list`: node id -> status."""
    nodes = flwr(env, "supernode", "list")["nodes"]
    return {int(node["node-id"]): node["status"] for node in nodes}


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
    wait_for(lambda: "Uvicorn running on https://" in link.text(), 60, "the SuperLink")
    return link


def register(certs, state: Path, env, site: str = "ct") -> int:
    """`fedgin deploy register` on the SuperLink's machine: the new node id."""
    done = subprocess.run(
        fedgin("deploy", "register", certs.supernode(site).public_key, "--site", site, "--state", state),
        env=env, check=True, timeout=60, capture_output=True, text=True,
    )  # fmt: skip
    return int(done.stdout.split("as SuperNode ")[1].split()[0])


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory):
    """`fedgin deploy superlink` (signed apps, runs root ROOT) with the site ct registered and connected."""
    base = tmp_path_factory.mktemp("guarded")
    certs = make_dev_certificates(base / "certs", 3, ["ct", "evil", "spare"])
    operator = make_publisher_key(certs.directory)
    address, logs, root = f"127.0.0.1:{free_port()}", base / "logs", base / "root"
    root.mkdir()
    env = flower.flower_env(base / "unused-home")
    processes: list[Process] = []
    try:
        link = start_superlink(base, certs, address, logs, env, processes, "--runs-root", str(root))
        node_id = register(certs, base / "server", env)
        site = start_site(base, certs, address, logs, env, operator.public_key)
        processes.append(site)
        wait_for(lambda: "SuperNode ID" in site.text(), 60, "the SuperNode")
        yield {
            "base": base, "certs": certs, "operator": operator, "address": address, "logs": logs,
            "root": root, "env": env, "link": link, "site": site, "node_id": node_id,
        }  # fmt: skip
    finally:
        stop_all(processes)
    assert not any(process.alive() for process in processes)


def test_guarded_superlink_admits_only_signed_apps(guarded: dict) -> None:
    """Unsigned, or signed by a second publisher: refused at submission; nothing runs anywhere."""
    base, certs, address, link = guarded["base"], guarded["certs"], guarded["address"], guarded["link"]
    mallory = make_publisher_key(base / "mallory-keys")
    marker = base / "pwned"
    app = evil_app(base / "evil", marker)
    mallory_env = attacker_env(base, address, certs.ca_cert)
    unsigned = subprocess.run(
        [flower.executable("flwr"), "run", str(app), flower.CONNECTION, "--format", "json"],
        env=mallory_env, capture_output=True, text=True, timeout=60, cwd=base,
    )  # fmt: skip
    other_signer = subprocess.run(
        flower.run_command(app, publisher_key=mallory.private_key),
        env=mallory_env, capture_output=True, text=True, timeout=60, cwd=base,
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


def test_only_the_operator_registers_and_unregisters_sites(guarded: dict) -> None:
    """`flwr supernode register|unregister` from a second FLWR_HOME, with and without ca.crt: refused, the
    real site stays registered and online; the operator's local `fedgin deploy register|unregister` works."""
    base, certs, address, env = guarded["base"], guarded["certs"], guarded["address"], guarded["env"]
    real = guarded["node_id"]
    for ca_cert in (certs.ca_cert, None):
        mallory_env = attacker_env(base, address, ca_cert)
        verify = ca_cert is not None
        for command in (
            ("supernode", "register", certs.supernode("evil").public_key, flower.CONNECTION),
            ("supernode", "unregister", real, flower.CONNECTION),
        ):
            answer = flwr(mallory_env, *command, verify=verify)
            assert answer["success"] is False, (ca_cert, command, answer)
            assert "node registration is local to the SuperLink machine" in answer["error-message"], answer
    operator_env = attacker_env(base, address, certs.ca_cert)  # listing is allowed to anyone
    assert statuses(operator_env) == {real: "online"}
    assert guarded["site"].alive()

    # the operator, on the SuperLink's machine: visible to Flower at once, and revoked
    spare = register(certs, base / "server", env, "spare")
    assert statuses(operator_env) == {real: "online", spare: "registered"}
    done = subprocess.run(fedgin("deploy", "unregister", "spare", "--state", base / "server"),
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and f"unregistered SuperNode {spare} (spare)" in done.stdout, done.stderr
    assert statuses(operator_env) == {real: "online", spare: "unregistered"}


#: The operator's `fedgin deploy run` submission (Flower's StartRunRequest), written to a file, not sent.
CAPTURE = """
import sys
from pathlib import Path
from flwr.supercore.control.control_http_client import ControlHttpClient
from fedgin.federation import guarded
def capture(self, request):
    Path(sys.argv[1]).write_bytes(request.SerializeToString())
    raise SystemExit(0)
ControlHttpClient.StartRun = capture
guarded.main(sys.argv[2:])
"""

#: A captured StartRunRequest sent with Flower's own Control API client, its run config overridden by the
#: `KEY=VALUE` arguments (as `flwr run --run-config`): prints the run id or the refusal.
REPLAY = """
import sys
from pathlib import Path
from flwr.cli.flower_config import read_superlink_connection
from flwr.cli.utils import init_http_client_from_connection
from flwr.common.config import parse_config_args
from flwr.common.serde import user_config_to_proto
from flwr.proto.control_pb2 import StartRunRequest
request = StartRunRequest.FromString(Path(sys.argv[1]).read_bytes())
if sys.argv[2:] == ["--without-run-signature"]:  # the FAB as the sites receive it
    del request.fab.verifications["fedgin-run-signature"]
    del sys.argv[2:]
for key, value in user_config_to_proto(parse_config_args(sys.argv[2:])).items():
    request.override_config[key].CopyFrom(value)
try:
    client = init_http_client_from_connection(read_superlink_connection("fedgin"))
    print("run", client.StartRun(request).run_id)
except Exception as error:
    print("refused:", str(error).splitlines()[0])
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_signed_submission_runs_once_as_signed_and_below_the_runs_root(guarded: dict) -> None:
    """A captured signed submission replayed with `overwrite=true` or `out=<another folder>`: refused; sent
    as signed: admitted once, a plain replay refused; and a signed run whose output lies outside the
    SuperLink's runs root is refused by the ServerApp. No folder is touched."""
    base, certs, address, root = guarded["base"], guarded["certs"], guarded["address"], guarded["root"]
    finished, elsewhere = root / "finished-run", base / "elsewhere"
    for folder in (finished, elsewhere):
        folder.mkdir()
        (folder / "rounds.csv").write_text("round\n1\n")
    before = {folder: snapshot(folder) for folder in (finished, elsewhere)}
    sites = [{"name": "ct", "data": [{"cache": "/nonexistent/ct"}]}]
    config = RunConfig(
        name="replayed", output=finished, federation={"rounds": 1, "min_clients": 1, "clients": sites}
    )
    dump_toml(config, root / "fl.toml")

    def signed_submission(name: str, *options: object) -> Path:
        """`fedgin deploy run` as the operator types it (its app in ROOT/<name>), captured on its way out."""
        operator = root / name
        subprocess.run(
            fedgin("deploy", "run", "--config", root / "fl.toml", "--superlink", address, "--ca-cert",
                   certs.ca_cert, "--state", operator, "--publisher-key", guarded["operator"].private_key,
                   "--dry-run", *options),
            env=guarded["env"], check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        captured = base / f"{name}.bin"
        subprocess.run(
            [sys.executable, "-c", CAPTURE, captured, "run", "--publisher-key",
             guarded["operator"].private_key, "--", operator / "app", flower.CONNECTION, "--format", "json"],
            env=flower.flower_env(operator / ".flwr"), check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return captured

    def send(captured: Path, *overrides: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", REPLAY, captured, *overrides],
            env=attacker_env(base, address, certs.ca_cert), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return done.stdout.strip().splitlines()[-1]

    captured = signed_submission("operator-run")
    link = guarded["link"]
    assert send(captured, "overwrite=true").startswith("refused: Client error '403 Forbidden'")
    assert send(captured, f'out="{elsewhere}"').startswith("refused:")
    assert link.text().count("fedgin: run refused: the run signature does not match this submission") == 2
    assert send(captured, "--without-run-signature").startswith("refused:")
    assert "fedgin: run refused: the submission carries no run signature" in link.text()
    assert send(captured).startswith("run ")  # as signed: admitted (the operator's own submission)
    assert send(captured).startswith("refused:")  # the same again: a replay
    assert link.text().count("fedgin: run refused: this signed submission was used already") == 1

    # signed by the operator, but writing outside the runs root: the ServerApp refuses before writing
    outside = signed_submission("operator-outside", "--overwrite", "--out", elsewhere)
    run_id = int(send(outside).split()[1])
    operator_env = attacker_env(base, address, certs.ca_cert)

    def details() -> str:
        runs = {int(run["run-id"]): run for run in flwr(operator_env, "list")["runs"]}
        return runs[run_id]["status-details"] if runs[run_id]["status"].startswith("finished") else ""

    wait_for(details, 90, "the run outside the runs root to end")
    assert f"the train output {elsewhere} is not below the SuperLink's runs root {root}" in details()
    assert {folder: snapshot(folder) for folder in (finished, elsewhere)} == before


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
        register(certs, tmp_path / "server", env)
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
