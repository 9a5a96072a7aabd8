"""Deployment: the federation across sites on Flower's deployment engine (SuperLink + one SuperNode per site).

Thin helpers around Flower's own commands (`flower-superlink`, `flower-supernode`, `flwr supernode
register`, `flwr run`), written for Flower 1.41, where the SuperLink serves its Fleet, Control and Runtime
APIs over HTTPS on one `--host:--port`:

- `superlink_command`: TLS (`--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`) and SuperNode
  authentication (`--enable-supernode-auth`) ON unless `insecure=True` / `auth=False` is asked for; with
  `trusted_publishers`, only signed apps run (`fedgin.federation.guarded`).
- `register_command` + `register_supernode`: `flwr supernode register <site>.pub` (only registered public
  keys may connect), its JSON answer turned into an exit status.
- `supernode_command`: one per site, `--auth-supernode-private-key`, `--root-certificates`,
  `--trusted-entities`, and the node config `client-name=<site> cache=<local cache>`; the site's cache path
  never leaves the site.
- `write_app` + `run_command`: the Flower app folder (pyproject.toml pointing at `server_app` and
  `client_app` below, the run config naming the resolved fedgin config) and `flwr run` against it, the
  FAB signed with the operator's key.

`server_app` runs fedgin's `FederationServer` (rounds.csv, best/last checkpoints in `config.output`);
`client_app` is fedgin's ClientApp with the site's data taken from the node config. Each reply carries
only the trained weights (ArrayRecord), metrics (MetricRecord: num-examples, train-loss, steps, seconds)
and the site's name (ConfigRecord) — no images, labels or paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedgin.config import RunConfig, dump_toml, load_toml
from fedgin.errors import ConfigError
from fedgin.federation.client import CONFIG_KEY, client_spec, train_round
from fedgin.federation.supervisor import one_line
from fedgin.processes import alive, descendants

#: Name of the SuperLink connection fedgin writes into FLWR_HOME/config.toml.
CONNECTION = "fedgin"
#: Default port of the SuperLink's HTTPS API (Fleet, Control and Runtime in Flower 1.41).
SUPERLINK_PORT = 9092
#: Default port of a SuperNode's local Runtime API (bound to 127.0.0.1 on the site).
SUPERNODE_PORT = 9094
#: Keys of the app's run config (pyproject.toml [tool.flwr.app.config]).
RUN_CONFIG_KEY = "fedgin-config"

_BIN = Path(sys.executable).parent


def _exe(name: str) -> str:
    """A Flower executable from this environment (falls back to PATH)."""
    path = _BIN / name
    return str(path) if path.exists() else name


def flower_env(flwr_home: str | Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower's processes: telemetry and runtime installs off, FLWR_HOME given.

    The SuperLink starts `flower-superexec` (and SuperNodes `flwr-clientapp`) by name, so this
    environment's bin folder goes first on PATH.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_HOME": str(Path(flwr_home).resolve()),
            "PATH": f"{_BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
    return env


# -- commands ---------------------------------------------------------------------------------------------
def superlink_command(
    *,
    ca_cert: str | Path | None = None,
    server_cert: str | Path | None = None,
    server_key: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = SUPERLINK_PORT,
    database: str | Path | None = None,
    auth: bool = True,
    insecure: bool = False,
    trusted_publishers: str | Path | None = None,
    superexec_secret: str | Path | None = None,
) -> list[str]:
    """`flower-superlink` with TLS, SuperNode authentication and signed apps (all on unless turned off).

    With `trusted_publishers` (a trusted-entities YAML or a `.pub`) the SuperLink runs inside
    `fedgin.federation.guarded`, which admits only runs of apps those keys signed, in process isolation
    with its ServerApp executor authenticated by `superexec_secret` (required then).
    """
    command = [_exe("flower-superlink")]
    if trusted_publishers is not None:
        if superexec_secret is None:
            raise ConfigError("a SuperLink for signed apps needs a SuperExec secret file (superexec_secret)")
        command = [
            sys.executable, "-m", "fedgin.federation.guarded", "superlink",
            "--trusted-publishers", str(Path(trusted_publishers).resolve()), "--",
        ]  # fmt: skip
    if insecure:
        command.append("--insecure")
    else:
        if not (ca_cert and server_cert and server_key):
            raise ConfigError(
                "the SuperLink needs ca_cert, server_cert and server_key for TLS "
                "(make them with make_dev_certificates for testing) or an explicit insecure=True"
            )
        command += [
            "--ssl-ca-certfile", str(Path(ca_cert).resolve()),
            "--ssl-certfile", str(Path(server_cert).resolve()),
            "--ssl-keyfile", str(Path(server_key).resolve()),
        ]  # fmt: skip
    if auth:
        command.append("--enable-supernode-auth")
    command += ["--disable-runtime-dependency-installation", "--host", host, "--port", str(port)]
    if trusted_publishers is not None:
        secret = str(Path(superexec_secret).resolve())  # type: ignore[arg-type]  # checked above
        command += ["--isolation", "process", "--superexec-auth-secret-file", secret]
    if database is not None:
        command += ["--database", str(Path(database).resolve())]
    return command


def write_superexec_secret(path: str | Path) -> Path:
    """A random SuperExec auth secret (32 bytes, hex, 0600), kept if it exists already."""
    import secrets

    from fedgin.io_utils import atomic_write

    path = Path(path)
    if not path.is_file():
        atomic_write(path, lambda handle: handle.write(secrets.token_hex(32).encode()), mode=0o600)
    return path


def supernode_command(
    site: str,
    cache: str | Path | list[str | Path] | None,
    *,
    superlink: str = f"127.0.0.1:{SUPERLINK_PORT}",
    ca_cert: str | Path | None = None,
    private_key: str | Path | None = None,
    port: int = SUPERNODE_PORT,
    insecure: bool = False,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    trusted_publishers: str | Path | None = None,
) -> list[str]:
    """`flower-supernode` for one site: its name and local cache go in the node config, never on the wire.

    `trusted_publishers` (Flower's trusted-entities YAML) makes the site run only apps those keys signed.

    `cache` replaces the cache folder of every data entry of that site in `federation.clients`; a list
    gives one folder per data entry, in order (None keeps the paths of the run config, e.g. when all
    sites share one file system).
    """
    node_config = f"client-name={_toml_str(site)}"
    if cache is not None:
        folders = [cache] if isinstance(cache, str | Path) else list(cache)
        joined = os.pathsep.join(str(Path(folder).resolve()) for folder in folders)
        node_config += f" cache={_toml_str(joined)}"
    command = [_exe("flower-supernode")]
    if insecure:
        command.append("--insecure")
    else:
        if ca_cert is None:
            raise ConfigError("a SuperNode needs the CA certificate (ca_cert) or an explicit insecure=True")
        command += ["--root-certificates", str(Path(ca_cert).resolve())]
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(Path(private_key).resolve())]
    if trusted_publishers is not None:
        command += ["--trusted-entities", str(Path(trusted_publishers).resolve())]
    command += [
        "--superlink",
        superlink,
        "--node-config",
        node_config,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        command += ["--max-wait-time", str(max_wait_time)]
    return command


def register_command(
    public_key: str | Path, name: str | None = None, connection: str = CONNECTION
) -> list[str]:
    """`flwr supernode register <public key> <connection>`: allow one SuperNode's key on the SuperLink."""
    command = [_exe("flwr"), "supernode", "register", str(Path(public_key).resolve()), connection]
    if name:
        command += ["--name", name]
    return [*command, "--format", "json"]


def _answer(stdout: str) -> dict | None:
    """The JSON object `flwr ... --format json` printed (after any warnings), or None."""
    start = stdout.find("{")
    if start < 0:
        return None
    try:
        answer = json.loads(stdout[start:])
    except json.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def register_supernode(
    command: list[str], env: dict[str, str], *, what: str, timeout_s: float = 120.0
) -> int:
    """Run a `register_command`; the new SuperNode's id, or a one-line ConfigError with Flower's message.

    Flower 1.41 exits 0 even when the registration failed (it prints `{"success": false, "error-message":
    ...}`: a key already registered, an unreachable SuperLink, a TLS problem), so the answer decides.

    `what` names the registration in the error (e.g. "site ct (certs/supernodes/ct.pub)").
    """
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"registering {what}: no answer from the SuperLink within {timeout_s:.0f} s"
        ) from None
    except OSError as error:
        raise ConfigError(f"registering {what}: cannot run {command[0]} ({error.strerror})") from None
    answer = _answer(done.stdout)
    if answer is not None and answer.get("success") is True and done.returncode == 0:
        return int(answer["node-id"])
    if answer is not None and answer.get("error-message"):
        message = one_line(str(answer["error-message"]))
    else:
        message = (
            one_line(done.stderr + "\n" + done.stdout) or f"{command[0]} exited with code {done.returncode}"
        )
    if "already in use" in message:
        message += " (that key is registered already: `flwr supernode list` shows the SuperNodes)"
    raise ConfigError(f"registering {what} failed: {message}")


def run_command(
    app_dir: str | Path,
    connection: str = CONNECTION,
    stream: bool = False,
    publisher_key: str | Path | None = None,
) -> list[str]:
    """`flwr run <app> <connection>`: submit fedgin's app to the SuperLink (`--stream` follows the logs).

    With `publisher_key` the FAB is signed with it on the way (`fedgin.federation.guarded run`).
    """
    arguments = ["run", str(Path(app_dir).resolve()), connection]
    arguments += ["--stream"] if stream else ["--format", "json"]
    if publisher_key is None:
        return [_exe("flwr"), *arguments]
    return [
        sys.executable, "-m", "fedgin.federation.guarded", "run",
        "--publisher-key", str(Path(publisher_key).resolve()), "--", *arguments[1:],
    ]  # fmt: skip


def format_command(command: list[str]) -> str:
    return shlex.join(command)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- files ------------------------------------------------------------------------------------------------
def write_flower_config(
    flwr_home: str | Path,
    address: str,
    ca_cert: str | Path | None = None,
    *,
    insecure: bool = False,
    connection: str = CONNECTION,
) -> Path:
    """FLWR_HOME/config.toml with the SuperLink connection `flwr run` and `flwr supernode` use."""
    entry: dict[str, object] = {"address": address}
    if insecure:
        entry["insecure"] = True
    else:
        if ca_cert is None:
            raise ConfigError(
                "the SuperLink connection needs the CA certificate or an explicit insecure=True"
            )
        entry["root-certificates"] = str(Path(ca_cert).resolve())
    path = Path(flwr_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        tomli_w.dumps({"superlink": {"default": connection, connection: entry}}), encoding="utf-8"
    )
    return path


def write_app(
    config: RunConfig, app_dir: str | Path, *, resume: bool = False, overwrite: bool = False
) -> Path:
    """The Flower app folder for `flwr run`: pyproject.toml + fedgin.toml (the resolved run config).

    The run config carries the absolute path of fedgin.toml (read by the ServerApp on the SuperLink's
    machine); the clients get the settings they need from the server's messages.
    """
    app_dir = Path(app_dir).resolve()
    app_dir.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"output": Path(config.output).resolve()})
    dump_toml(config, app_dir / "fedgin.toml")
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "fedgin-federation",
            "version": "1.0.0",
            "description": f"fedgin federation {config.name}",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedgin",
                    "components": {
                        "serverapp": "fedgin.federation.deployment:server_app",
                        "clientapp": "fedgin.federation.deployment:client_app",
                    },
                    "config": {
                        RUN_CONFIG_KEY: str(app_dir / "fedgin.toml"),
                        "resume": resume,
                        "overwrite": overwrite,
                    },
                }
            }
        },
    }
    path = app_dir / "pyproject.toml"
    path.write_text(tomli_w.dumps(pyproject), encoding="utf-8")
    return path


def launch(command: list[str], env: dict[str, str], console: Console, dry_run: bool = False) -> None:
    """Print a Flower command and replace this process with it (so its pid and Ctrl-C are Flower's)."""
    console.print(format_command(command), highlight=False, soft_wrap=True)
    if dry_run:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, env)


# -- the apps ---------------------------------------------------------------------------------------------
def site_config(config: RunConfig, node_config: dict) -> RunConfig:
    """The run config with this site's data read from its own caches (`cache` in the node config).

    `cache` is one folder (it replaces the cache of every data entry of the site) or one folder per
    data entry, in the order of the run config, separated by the OS path separator (`:` on Linux).
    """
    if "cache" not in node_config:
        return config
    spec = client_spec(config, node_config)
    caches = [Path(part) for part in str(node_config["cache"]).split(os.pathsep) if part]
    if len(caches) == 1:
        caches *= len(spec.data)
    if len(caches) != len(spec.data):
        raise ConfigError(
            f"site {spec.name!r}: the node config names {len(caches)} caches but the run config gives the "
            f"site {len(spec.data)} data entries (one cache for all, or one per entry separated by "
            f"{os.pathsep!r})"
        )
    data = [entry.model_copy(update={"cache": cache}) for entry, cache in zip(spec.data, caches, strict=True)]
    clients = [
        client.model_copy(update={"data": data}) if client.name == spec.name else client
        for client in config.federation.clients
    ]
    return config.model_copy(update={"federation": config.federation.model_copy(update={"clients": clients})})


def deployment_train(message: Message, context: Context) -> Message:
    """fedgin's train step with the site's local cache from the node config."""
    node_config = dict(context.node_config)
    if "cache" in node_config:
        settings = message.content["config"]
        config = RunConfig.model_validate_json(str(settings[CONFIG_KEY]))
        settings[CONFIG_KEY] = site_config(config, node_config).model_dump_json()
    return train_round(message, context)


client_app = ClientApp()
client_app.train()(deployment_train)

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Load the run's fedgin config (path in the run config) and run the rounds as in simulation."""
    from fedgin.federation.server import FederationServer
    from fedgin.federation.simulation import check_federation
    from fedgin.training.trainer import prepare_run_dir

    run_config = dict(context.run_config)
    config = load_toml(str(run_config[RUN_CONFIG_KEY]), RunConfig)
    check_federation(config)
    run_dir = config.output
    resume_from = prepare_run_dir(run_dir, bool(run_config.get("resume")), bool(run_config.get("overwrite")))
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_toml(config, run_dir / "config.toml")
    server = FederationServer(config, Console(), resume_from=resume_from)
    server.main(grid, context)
    server.write_summary(server.seconds, engine="deployment")


# -- processes --------------------------------------------------------------------------------------------
@dataclass
class Process:
    """A started Flower process: its command, log file and pid."""

    name: str
    command: list[str]
    log: Path
    popen: subprocess.Popen = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


def start(
    name: str, command: list[str], log_dir: str | Path, env: dict[str, str], cwd: str | Path | None = None
) -> Process:
    """Start `command` in its own session with stdout and stderr in `<log_dir>/<name>.log`."""
    log = Path(log_dir) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as handle:
        popen = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=cwd, start_new_session=True,
        )  # fmt: skip
    (Path(log_dir) / f"{name}.pid").write_text(f"{popen.pid}\n")
    return Process(name, command, log, popen)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop(process: Process, timeout_s: float = 10.0) -> None:
    """SIGTERM the process and everything it started, SIGKILL what is left after `timeout_s`."""
    pids = [process.pid, *descendants(process.pid)]
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.popen.poll()
        pids += [pid for pid in descendants(process.pid) if pid not in pids]
        if not any(alive(pid) for pid in pids):
            break
        time.sleep(0.1)
    _signal([pid for pid in pids if alive(pid)], signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.popen.wait(timeout=5)


def stop_all(processes: list[Process], timeout_s: float = 10.0) -> None:
    """Stop processes in reverse start order (SuperNodes before the SuperLink)."""
    for process in reversed(processes):
        stop(process, timeout_s)


__all__ = [
    "CONNECTION",
    "Process",
    "client_app",
    "deployment_train",
    "flower_env",
    "format_command",
    "launch",
    "register_command",
    "register_supernode",
    "run_command",
    "server_app",
    "site_config",
    "start",
    "stop",
    "stop_all",
    "superlink_command",
    "supernode_command",
    "write_app",
    "write_flower_config",
]
