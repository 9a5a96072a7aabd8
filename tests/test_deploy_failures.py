"""Deployment failures end in one line, never silently: certificates, TLS files, registration, SuperNodes.

Everything runs for real on loopback: `fedgin certs`, a TLS SuperLink with SuperNode authentication, sites
registered in its database (`fedgin deploy register`), and `flower-supernode` under fedgin's supervisor
(`fedgin deploy supernode`).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from fedgin.cli import app
from fedgin.federation import flower
from fedgin.federation.app_signing import make_publisher_key
from fedgin.federation.certificates import make_dev_certificates
from fedgin.federation.supervisor import supervise
from fedgin.processes import alive, descendants
from flower_processes import start, stop
from test_deployment import fedgin, free_port, wait_for

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def one_error_line(output: str) -> str:
    """The output is exactly one line, an `error:` line (no traceback, no Flower report)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line contains `marker` (a port unique to one test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


# -- 1. fedgin certs ----------------------------------------------------------------------------------------
def test_certs_never_replaces_silently_and_adds_missing_sites(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert invoke("certs", "--out", out, "--sites", "ct,t2").exit_code == 0
    before = snapshot(out)

    # the same folder again with one more site: the CA, the server certificate and the old keys stay
    result = invoke("certs", "--out", out, "--sites", "ct,t2,mix")
    assert result.exit_code == 0, result.output
    assert "kept the existing CA" in result.output and "mix (new)" in result.output
    after = snapshot(out)
    assert all(after[name] == data for name, data in before.items())
    assert {"supernodes/mix.key", "supernodes/mix.pub"} <= set(after)
    assert (out / "supernodes" / "mix.key").stat().st_mode & 0o777 == 0o600
    assert not [path for path in out.iterdir() if "staging" in path.name]

    # an incomplete folder (the server key lost) is refused unless --overwrite
    (out / "server.key").unlink()
    kept = snapshot(out)
    error = one_error_line(invoke("certs", "--out", out, "--sites", "ct").output)
    assert "--overwrite" in error and "server.key" in error
    assert snapshot(out) == kept
    result = invoke("certs", "--out", out, "--sites", "ct,t2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "ca.crt").read_bytes() != before["ca.crt"]
    assert (out / "supernodes" / "ct.key").read_bytes() != before["supernodes/ct.key"]

    # a broken certificate in the folder is named, not replaced
    (out / "server.crt").write_text("not a certificate\n")
    error = one_error_line(invoke("certs", "--out", out, "--sites", "ct,new").output)
    assert "server.crt" in error and not (out / "supernodes" / "new.key").exists()


def test_certs_refuses_bad_days_names_and_unwritable_output(tmp_path: Path) -> None:
    for days in ("0", "-3"):
        result = invoke("certs", "--out", tmp_path / "expired", "--sites", "ct", "--days", days)
        assert result.exit_code == 2 and "--days" in one_error_line(result.output)
    assert not (tmp_path / "expired").exists()

    for name in ("../evil", ".hidden", "a/b", "ct,..", "x\\y"):
        result = invoke("certs", "--out", tmp_path / "named", "--sites", name)
        assert result.exit_code == 2 and "site name" in one_error_line(result.output), name
    assert not (tmp_path / "named").exists() and not (tmp_path / "evil.key").exists()

    # --out below a file, and a folder where a file must go: one line, and nothing half-written
    (tmp_path / "plain-file").write_text("x")
    result = invoke("certs", "--out", tmp_path / "plain-file" / "certs", "--sites", "ct")
    assert result.exit_code == 2 and "plain-file" in one_error_line(result.output)
    out = tmp_path / "certs"
    make_dev_certificates(out, 1, ["ct"])
    (out / "README-DEVELOPMENT-ONLY.txt").unlink()
    (out / "README-DEVELOPMENT-ONLY.txt").mkdir()  # in the way of the last file to be moved into place
    before = snapshot(out)
    result = invoke("certs", "--out", out, "--sites", "ct,t2")
    assert result.exit_code == 2, result.output
    error = one_error_line(result.output)
    assert "README-DEVELOPMENT-ONLY.txt" in error and "nothing was changed" in error
    assert snapshot(out) == before and not (out / "supernodes" / "t2.key").exists()  # t2 taken out again
    assert not [path for path in tmp_path.rglob("*") if "staging" in path.name]

    if os.geteuid() != 0:  # root writes through file modes
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        result = invoke("certs", "--out", locked / "certs", "--sites", "ct")
        assert result.exit_code == 2 and "cannot write" in one_error_line(result.output)


# -- 2. TLS files and keys checked before Flower starts ------------------------------------------------------
def expired_server_cert(certs, path: Path) -> Path:
    """A server certificate signed by the CA of `certs`, for the server key, expired yesterday."""
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=3))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA384())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_broken_tls_files_and_keys_are_refused_in_one_line(tmp_path: Path) -> None:
    certs = make_dev_certificates(tmp_path / "certs", 1, ["ct"])
    other = make_dev_certificates(tmp_path / "other", 1, ["ct"])
    junk = tmp_path / "junk"
    junk.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_private, rsa_public = tmp_path / "rsa.key", tmp_path / "rsa.pub"
    rsa_private.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    rsa_public.write_bytes(
        rsa_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )

    def superlink_with(name: str, replacement: Path, expected: str) -> None:
        folder = tmp_path / f"link-{name}-{replacement.name}"
        folder.mkdir()
        for file in ("ca.crt", "server.crt", "server.key"):
            source = replacement if file == name else certs.directory / file
            (folder / file).write_bytes(source.read_bytes())
        result = invoke("deploy", "superlink", "--certs", folder, "--allow-unsigned-apps", "--dry-run",
                        "--state", tmp_path / "state")  # fmt: skip
        assert result.exit_code == 2, result.output
        error = one_error_line(result.output)
        assert str(folder / name) in error and expected in error, error

    superlink_with("ca.crt", junk, "not a PEM CA certificate")
    superlink_with("ca.crt", certs.server_cert, "not a CA certificate")
    superlink_with("ca.crt", other.ca_cert, "not signed by the CA")  # reported on server.crt
    superlink_with("server.crt", other.server_cert, "not signed by the CA")
    superlink_with("server.crt", expired_server_cert(certs, tmp_path / "expired.crt"), "expired on")
    superlink_with("server.key", other.server_key, "does not match")
    superlink_with("server.key", junk, "not a PEM private key")

    # without --dry-run: the garbage CA stops `fedgin deploy superlink` before Flower starts
    bad = tmp_path / "link-ca.crt-junk"
    port = free_port()
    done = subprocess.run(
        fedgin("deploy", "superlink", "--certs", bad, "--allow-unsigned-apps", "--port", port,
               "--state", tmp_path / "state"),
        capture_output=True, text=True, timeout=60, env=flower.flower_env(tmp_path / "home"),
    )  # fmt: skip
    assert done.returncode == 2 and "ca.crt" in one_error_line(done.stderr), done.stdout + done.stderr
    assert "flower-superlink" not in done.stdout and not processes_with(str(port))

    supernode = ("deploy", "supernode", "--site", "ct", "--allow-unsigned-apps", "--dry-run",
                 "--state", tmp_path / "state")  # fmt: skip
    key = certs.supernode("ct").private_key
    for args, expected in (
        (("--ca-cert", tmp_path / "missing.crt", "--key", key), "missing.crt: CA certificate not found"),
        (("--ca-cert", junk, "--key", key), "junk: not a PEM CA certificate"),
        (("--ca-cert", certs.ca_cert, "--key", junk), "junk: not an OpenSSH private key"),
        (
            ("--ca-cert", certs.ca_cert, "--key", rsa_private),
            "rsa.key: SuperNode authentication needs an ECDSA",
        ),
        (
            ("--ca-cert", certs.ca_cert, "--key", certs.supernode("ct").public_key),
            "not an OpenSSH private key",
        ),
        (("--insecure", "--key", key), "--key needs TLS"),
    ):
        result = invoke(*supernode, *args)
        assert result.exit_code == 2 and expected in one_error_line(result.output), (args, result.output)

    register = ("deploy", "register", "--site", "ct", "--state", tmp_path / "state")
    for public_key, expected in (
        (junk, "junk: not an OpenSSH public key"),
        (rsa_public, "rsa.pub: SuperNode authentication needs an ECDSA"),
        (tmp_path / "missing.pub", "missing.pub: public key not found"),
        (key, "not an OpenSSH public key"),
    ):
        result = invoke(*register[:2], public_key, *register[2:])
        assert result.exit_code == 2 and expected in one_error_line(result.output), (
            public_key,
            result.output,
        )


# -- 3. and 4.: a real TLS SuperLink with SuperNode authentication -------------------------------------------
@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory):
    """A TLS SuperLink with SuperNode authentication on loopback, and the keys of four sites."""
    base = tmp_path_factory.mktemp("deploy_failures")
    certs = make_dev_certificates(base / "certs", 4, ["crash", "twice", "rogue", "plain"])
    address = f"127.0.0.1:{free_port()}"
    env = flower.flower_env(base / "operator")
    command = flower.superlink_command(
        ca_cert=certs.ca_cert, server_cert=certs.server_cert, server_key=certs.server_key,
        port=int(address.split(":")[1]), database=base / "superlink.db",
    )  # fmt: skip
    process = start("superlink", command, base / "logs", env)
    try:
        wait_for(lambda: "Uvicorn running on https://" in process.text(), 30, "the SuperLink")
        yield {"base": base, "certs": certs, "address": address, "env": env, "process": process}
    finally:
        stop(process)


def register(link: dict, site: str, *extra: object):
    """`fedgin deploy register` into the SuperLink's database (in this process: the CLI's start-up costs
    seconds on a loaded machine)."""
    public_key = link["certs"].supernode(site).public_key
    return invoke("deploy", "register", public_key, "--site", site, "--state", link["base"], *extra)


def test_register_and_unregister_fail_non_zero_in_one_line(link: dict, tmp_path: Path) -> None:
    first = register(link, "twice")
    assert first.exit_code == 0, first.output
    assert "registered site twice" in first.stdout and "as SuperNode" in first.stdout
    node_id = first.stdout.split("as SuperNode ")[1].split()[0]

    again = register(link, "twice")
    assert again.exit_code == 2, again.output
    assert f"key registered already as SuperNode {node_id}" in one_error_line(again.stderr)

    elsewhere = register(link, "plain", "--state", tmp_path)  # not the SuperLink's --state
    assert elsewhere.exit_code == 2, elsewhere.output
    assert "superlink.db: no SuperLink database" in one_error_line(elsewhere.stderr)
    (tmp_path / "superlink.db").write_text("not a database")
    junk = register(link, "plain", "--state", tmp_path)
    assert "not a SuperLink database of this Flower version" in one_error_line(junk.stderr)

    for node in ("nobody", "12345"):
        unknown = invoke("deploy", "unregister", node, "--state", link["base"])
        assert unknown.exit_code == 2, unknown.output
        error = one_error_line(unknown.stderr)
        assert f"no registered SuperNode with id or name '{node}'" in error and f"{node_id} (twice)" in error
    done = invoke("deploy", "unregister", node_id, "--state", link["base"])
    assert done.exit_code == 0 and f"unregistered SuperNode {node_id} (twice)" in done.stdout, done.output
    assert invoke("deploy", "unregister", "twice", "--state", link["base"]).exit_code == 2  # once only


def test_contradicting_or_missing_deploy_options_are_one_line(tmp_path: Path) -> None:
    key = make_publisher_key(tmp_path / "keys").private_key
    unsigned = invoke("deploy", "run", "--config", tmp_path / "fl.toml", "--unsigned", "--publisher-key", key,
                      "--dry-run", "--state", tmp_path / "state")  # fmt: skip
    assert unsigned.exit_code == 2
    assert "--unsigned and --publisher-key contradict each other" in one_error_line(unsigned.output)
    # Options a task would ignore are refused, not dropped.
    for extra, word in (
        (["--model", "m=x.pt"], "--model does not apply to --task train"),
        (["--split", "val"], "--split does not apply to --task train"),
        (["--task", "stats", "--rounds", "2"], "--rounds does not apply to --task stats"),
        (["--insecure", "--ca-cert", key], "--insecure and --ca-cert contradict each other"),
    ):
        refused = invoke("deploy", "run", "--config", tmp_path / "fl.toml", "--unsigned", "--dry-run",
                         "--state", tmp_path / "state", *extra)  # fmt: skip
        assert refused.exit_code == 2 and word in one_error_line(refused.output), refused.output
    link = invoke("deploy", "superlink", "--insecure", "--allow-unsigned-apps", "--runs-root",
                  tmp_path / "missing", "--dry-run", "--state", tmp_path / "state")  # fmt: skip
    assert link.exit_code == 2
    assert "runs root" in one_error_line(link.output) and "not an existing folder" in link.output


#: A SuperNode that Flower's SuperLink forgets after 20 s instead of 60 s: the heartbeat interval it
#: announces (HEARTBEAT_DEFAULT_INTERVAL, 30 s; the SuperLink keeps a node ONLINE for 2 intervals after
#: its last heartbeat) lowered to Flower's minimum of 10 s. Only the crashing node runs this; the restarted
#: one is the unmodified `flower-supernode` under fedgin's supervisor.
SHORT_HEARTBEAT = (
    "import sys; import flwr.supernode.fleet_http_connection as c, flwr.supercore.heartbeat as h; "
    "c.HEARTBEAT_DEFAULT_INTERVAL = h.HEARTBEAT_DEFAULT_INTERVAL = 10; "
    "from flwr.supernode.cli import flower_supernode; sys.argv[0] = 'flower-supernode'; flower_supernode()"
)


def test_supernode_restarted_after_a_crash_retries_until_activated(link: dict, tmp_path: Path) -> None:
    assert register(link, "crash").exit_code == 0
    certs, address, logs = link["certs"], link["address"], tmp_path / "logs"
    key = certs.supernode("crash").private_key
    port = free_port()
    command = flower.supernode_command("crash", None, superlink=address, ca_cert=certs.ca_cert,
                                       private_key=key, port=port)  # fmt: skip
    crashed = start("crashed", [sys.executable, "-c", SHORT_HEARTBEAT, *command[1:]], logs, link["env"])
    restarted = None
    try:
        wait_for(lambda: "SuperNode ID" in crashed.text(), 30, "the first SuperNode")
        left_behind = descendants(crashed.pid)
        os.kill(crashed.pid, signal.SIGKILL)  # a crash: no DeactivateNode reaches the SuperLink
        crashed.popen.wait(timeout=10)
        restarted = start(
            "restarted",
            fedgin("deploy", "supernode", "--site", "crash", "--superlink", address,
                   "--ca-cert", certs.ca_cert, "--key", key, "--port", port, "--allow-unsigned-apps",
                   "--activation-timeout", 60, "--state", tmp_path / "site"),
            logs, link["env"],
        )  # fmt: skip
        wait_for(lambda: "SuperNode ID" in restarted.text(), 75, f"the restarted SuperNode ({logs})")
        text = restarted.text()
        assert "activation refused" in text and "retrying in" in text, text  # refused at first, then retried
        assert "could not be activated" in link["process"].text()

        # Ctrl-C: the supervisor forwards SIGINT; Flower stops gracefully and nothing is left running
        running = [restarted.pid, *descendants(restarted.pid)]
        assert len(running) >= 3  # fedgin, flower-supernode, flower-superexec
        os.kill(restarted.pid, signal.SIGINT)
        restarted.popen.wait(timeout=15)
        assert restarted.popen.returncode == 0, restarted.text()
        wait_for(lambda: not any(map(alive, running)), 10, "the SuperNode's processes to end")
        assert not processes_with(str(port))
        # the crashed node's SuperExec notices that its parent is gone
        wait_for(lambda: not any(map(alive, left_behind)), 15, "the crashed SuperNode's SuperExec")
    finally:
        stop(crashed)
        if restarted is not None:
            stop(restarted)


def test_unregistered_supernode_gives_up_after_the_bound(link: dict) -> None:
    """The same refusal as after a crash, for a key that is never registered: bounded retries, one line."""
    certs = link["certs"]
    command = flower.supernode_command(
        "rogue", None, superlink=link["address"], ca_cert=certs.ca_cert,
        private_key=certs.supernode("rogue").private_key, port=free_port(),
    )  # fmt: skip
    output: list[str] = []
    notes: list[str] = []
    outcome = supervise(command, link["env"], timeout_s=6, first_delay_s=0.5, echo=output.append,
                        notify=notes.append)  # fmt: skip
    assert outcome.code == 1 and not outcome.connected
    assert outcome.attempts >= 2 and len(notes) == outcome.attempts - 1
    assert all("activation refused" in note for note in notes)
    assert "\n" not in outcome.error and "refused to activate this SuperNode for 6 s" in outcome.error
    assert "[code: 2004] Failed to activate SuperNode." in outcome.error
    assert not processes_with(command[command.index("--port") + 1])


def test_insecure_supernode_against_tls_ends_within_the_bound(link: dict, tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        fedgin("deploy", "supernode", "--site", "plain", "--superlink", link["address"], "--insecure",
               "--port", port, "--allow-unsigned-apps", "--activation-timeout", 6, "--state", tmp_path),
        capture_output=True, text=True, timeout=60, env=link["env"],
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    error = one_error_line(done.stderr)
    assert "did not connect within 6 s" in error and "--insecure" in error
    assert "Connection attempt failed" in done.stdout  # Flower's own log is passed through
    assert not processes_with(str(port))
