"""Flower's commands, app folder and environment, written for Flower 1.41 (where the SuperLink serves its
Fleet, Control and Runtime APIs over HTTPS on one `--host:--port`):

- `superlink_command`: TLS (`--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`) and SuperNode
  authentication (`--enable-supernode-auth`) ON unless `insecure=True` / `auth=False` is asked for; with
  `trusted_publishers`, only signed apps run (`fedgin.federation.guarded`).
- `register_node` / `unregister_node`: a site's SuperNode key added to (removed from) the SuperLink's
  database on its machine, with Flower's own LinkState (only registered public keys may connect).
- `supernode_command`: one per site, `--auth-supernode-private-key`, `--root-certificates`,
  `--trusted-entities`, and the node config `client-name=<site> cache=<local cache>`; the site's cache path
  never leaves the site.
- `write_app` + `run_command`: the Flower app folder (pyproject.toml pointing at fedgin's ServerApp and
  ClientApp, the app config naming the resolved fedgin config, which stays out of the FAB) and `flwr run`
  against it, the FAB signed with the operator's key.
- `flower_env`: the environment of every Flower process and of the simulation engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

import tomli_w
from rich.console import Console

from fedgin.config import RunConfig, dump_toml
from fedgin.errors import ConfigError
from fedgin.federation import protocol

#: Name of the SuperLink connection fedgin writes into FLWR_HOME/config.toml.
CONNECTION = "fedgin"
#: Default port of the SuperLink's HTTPS API (Fleet, Control and Runtime in Flower 1.41).
SUPERLINK_PORT = 9092
#: Default port of a SuperNode's local Runtime API (bound to 127.0.0.1 on the site).
SUPERNODE_PORT = 9094
#: The resolved fedgin run config in the app folder (read by the ServerApp; excluded from the FAB).
APP_RUN_CONFIG = "fedgin.toml"
#: App config key of fedgin.toml's SHA-256: the signed FAB covers the config file's content through it.
APP_CONFIG_SHA256 = "fedgin-config-sha256"

#: The ServerApp's runs root (set by `fedgin deploy superlink`, inherited through flower-superexec).
RUNS_ROOT_ENV = "FEDGIN_RUNS_ROOT"

_BIN = Path(sys.executable).parent


def executable(name: str) -> str:
    """A Flower executable from this environment (falls back to PATH)."""
    path = _BIN / name
    return str(path) if path.exists() else name


def flower_env(flwr_home: str | Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower: no telemetry, no runtime installs, FLWR_HOME given (and made).

    The SuperLink starts `flower-superexec` (and SuperNodes `flwr-clientapp`) by name, so this
    environment's bin folder goes first on PATH; Ray (the simulation engine) keeps every worker's log
    lines and no FutureWarning about GPU variables. `base` defaults to this process's environment.
    """
    env = dict(os.environ if base is None else base)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != str(_BIN):
        path = f"{_BIN}{os.pathsep}{path}"
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_HOME": str(Path(flwr_home).resolve()),
            "PATH": path,
            "PYTHONUNBUFFERED": "1",
            "RAY_DEDUP_LOGS": "0",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
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
    command = [executable("flower-superlink")]
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


def runs_root(folder: str | Path) -> Path:
    """The resolved runs root: an existing folder, not the file system's root."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"runs root {root}: not an existing folder")
    if root == Path(root.anchor):
        raise ConfigError(f"runs root {root}: the file system's root cannot be a runs root")
    return root


def below_runs_root(root: Path, path: str | Path, what: str) -> Path:
    """`path` resolved, or a ConfigError unless it lies strictly below `root` (the ServerApp writes and
    deletes only there, whatever a run configuration says)."""
    resolved = Path(path).expanduser().resolve()
    if root not in resolved.parents:
        raise ConfigError(
            f"{what} {resolved} is not below the SuperLink's runs root {root} "
            "(`fedgin deploy superlink --runs-root`): run refused"
        )
    return resolved


def write_superexec_secret(path: str | Path) -> Path:
    """A random SuperExec auth secret (32 bytes, hex, 0600), kept if it exists already."""
    import secrets

    from fedgin.io_utils import atomic_write

    path = Path(path)
    if not path.is_file():
        atomic_write(path, lambda handle: handle.write(secrets.token_hex(32).encode()), mode=0o600)
    return path


def node_config_argument(values: Mapping[str, str | int | float | bool]) -> str:
    """Flower's `--node-config` value: `key=value` pairs separated by spaces, each value written by tomli_w.

    Flower reads each value as TOML but finds where a quoted one ends at its next double quote, so a
    string holding one cannot be passed.
    """
    pairs = []
    for key, value in values.items():
        if isinstance(value, str) and '"' in value:
            raise ConfigError(
                f"node config {key}: {value!r} holds a double quote, which --node-config cannot carry"
            )
        _, toml_value = tomli_w.dumps({key: value}).rstrip("\n").split(" = ", 1)
        pairs.append(f"{key}={toml_value}")
    return " ".join(pairs)


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
    share_case_results: bool = False,
) -> list[str]:
    """`flower-supernode` for one site: its name and local cache go in the node config, never on the wire.

    `trusted_publishers` (Flower's trusted-entities YAML) makes the site run only apps those keys signed;
    `share_case_results` lets cross-site evaluations return its per-case rows (case ids and scores).

    `cache` replaces the cache folder of every data entry of that site in `federation.clients`; a list
    gives one folder per data entry, in order (None keeps the paths of the run config, e.g. when all
    sites share one file system).
    """
    node_config: dict[str, str | bool] = {protocol.NODE_CLIENT_NAME: site}
    if share_case_results:  # the site's own consent: per-case rows of cross-site evaluations leave it
        node_config[protocol.NODE_SHARE_CASES] = True
    if cache is not None:
        folders = [cache] if isinstance(cache, str | Path) else list(cache)
        node_config[protocol.NODE_CACHE] = os.pathsep.join(str(Path(folder).resolve()) for folder in folders)
    command = [executable("flower-supernode")]
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
        node_config_argument(node_config),
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


#: The SuperLink's database in its --state folder (`fedgin deploy superlink`).
SUPERLINK_DATABASE = "superlink.db"


def _schema_is_current(database: Path) -> bool:
    """The database's schema is at the installed Flower's latest revision (opening it then migrates
    nothing: Flower's SQLite migrations take no lock against a SuperLink migrating the same file)."""
    import sqlite3

    from alembic.script import ScriptDirectory
    from flwr.supercore.state.alembic.utils import build_alembic_config
    from sqlalchemy import create_engine

    heads = set(ScriptDirectory.from_config(build_alembic_config(create_engine("sqlite://"))).get_heads())
    try:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as db:
            versions = {row[0] for row in db.execute("SELECT version_num FROM alembic_version")}
    except sqlite3.Error:
        return False
    return versions == heads


def _linkstate(database: str | Path):
    """Flower's own LinkState on the SuperLink's SQLite database (WAL, busy timeout: safe beside the
    running SuperLink, which reads its nodes from the database on every request)."""
    from flwr.superlink.config_loader import get_federation_manager, get_objectstore_linkstate_factories

    database = Path(database)
    if not database.is_file():
        raise ConfigError(
            f"{database}: no SuperLink database (give the --state of `fedgin deploy superlink`, on the "
            "SuperLink's machine; it is made when the SuperLink first starts)"
        )
    if not _schema_is_current(database):
        raise ConfigError(
            f"{database}: not a SuperLink database of this Flower version, or one still being set up "
            "(wait until the SuperLink listens, then try again)"
        )
    _, factory = get_objectstore_linkstate_factories(str(database.resolve()), get_federation_manager())
    return factory.state()


def register_node(database: str | Path, public_key: str | Path, name: str) -> int:
    """Register a site's SuperNode key in the SuperLink's database; its new node id.

    Local on purpose: the guarded SuperLink refuses registration over its Control API, so only someone
    who can write the SuperLink's state folder registers a site. The node belongs to the same (only)
    account as the Control API's, so `flwr supernode list` shows it.
    """
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    from fedgin.federation.preflight import check_supernode_public_key

    key = public_key_to_bytes(check_supernode_public_key(public_key))
    state = _linkstate(database)
    try:
        return state.create_node(
            owner_aid=NOOP_FLWR_AID, owner_name=NOOP_ACCOUNT_NAME, public_key=key,
            heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL, name=name,
        )  # fmt: skip
    except ValueError:
        node = next((n for n in state.get_node_info() if bytes(n.public_key) == key), None)
        raise ConfigError(
            f"{public_key}: key registered already as SuperNode {node.node_id if node else '?'} "
            f"({node.name if node else ''}): `fedgin deploy unregister` it first to register it again"
        ) from None


def unregister_node(database: str | Path, node: str) -> tuple[int, str]:
    """Unregister a SuperNode by node id or site name; its (node id, name). A running SuperNode with that
    key is refused at its next request and stops (within seconds on loopback)."""
    from flwr.common.constant import NOOP_FLWR_AID
    from flwr.supercore.constant import NodeStatus

    state = _linkstate(database)
    registered = [n for n in state.get_node_info() if n.status != NodeStatus.UNREGISTERED]
    matches = [n for n in registered if str(n.node_id) == node or n.name == node]
    if len(matches) != 1:
        known = ", ".join(f"{n.node_id} ({n.name})" for n in registered) or "none"
        problem = "no registered SuperNode" if not matches else "several registered SuperNodes"
        raise ConfigError(f"{problem} with id or name {node!r} (registered: {known})")
    (match,) = matches
    state.delete_node(owner_aid=NOOP_FLWR_AID, node_id=match.node_id)
    return match.node_id, match.name


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
        return [executable("flwr"), *arguments]
    return [
        sys.executable, "-m", "fedgin.federation.guarded", "run",
        "--publisher-key", str(Path(publisher_key).resolve()), "--", *arguments[1:],
    ]  # fmt: skip


def format_command(command: list[str]) -> str:
    return shlex.join(command)


def launch(command: list[str], env: dict[str, str], console: Console, dry_run: bool = False) -> None:
    """Print a Flower command and replace this process with it (so its pid and Ctrl-C are Flower's)."""
    console.print(format_command(command), highlight=False, soft_wrap=True)
    if dry_run:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, env)


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
    config: RunConfig,
    app_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    task: str = protocol.TASK_TRAIN,
    out: str | Path | None = None,
    models: Mapping[str, str | Path] | None = None,
    split: str = "test",
) -> Path:
    """The Flower app folder for `flwr run`: pyproject.toml + fedgin.toml (the resolved run config).

    `task`: the rounds (train), federated statistics (stats, into `out`) or the cross-site evaluation of
    `models` (name -> checkpoint on this machine) on the sites' `split` (cross-site, into `out`).

    The app config carries the absolute path of fedgin.toml, read by the ServerApp on the SuperLink's
    machine, and its SHA-256 (so the app's signature covers its content); fedgin.toml is left out of the
    FAB (which reaches every site): each site learns only its own data specification, from the server's
    first message to it.
    """
    if task not in (protocol.TASK_TRAIN, protocol.TASK_STATS, protocol.TASK_CROSS_SITE):
        raise ConfigError(f"unknown task {task!r} (train, stats or cross-site)")
    task_settings: dict[str, str] = {}
    if task != protocol.TASK_TRAIN:
        default = "stats" if task == protocol.TASK_STATS else "cross_site"
        task_settings[protocol.APP_OUT] = str(Path(out or Path(config.output) / default).resolve())
    if task == protocol.TASK_CROSS_SITE:
        if not models:
            raise ConfigError("a cross-site evaluation needs at least one model (--model NAME=CHECKPOINT)")
        task_settings[protocol.APP_MODELS] = json.dumps(
            {n: str(Path(p).resolve()) for n, p in models.items()}
        )
        task_settings[protocol.APP_SPLIT] = split
    app_dir = Path(app_dir).resolve()
    app_dir.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"output": Path(config.output).resolve()})
    dump_toml(config, app_dir / APP_RUN_CONFIG)
    config_sha256 = hashlib.sha256((app_dir / APP_RUN_CONFIG).read_bytes()).hexdigest()
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
                    "fab-exclude": [APP_RUN_CONFIG],
                    "components": {
                        "serverapp": "fedgin.federation.deployment:server_app",
                        "clientapp": "fedgin.federation.client:app",
                    },
                    "config": {
                        protocol.APP_CONFIG_FILE: str(app_dir / APP_RUN_CONFIG),
                        APP_CONFIG_SHA256: config_sha256,
                        protocol.APP_RESUME: resume,
                        protocol.APP_OVERWRITE: overwrite,
                        protocol.APP_TASK: task,
                        **task_settings,
                    },
                }
            }
        },
    }
    path = app_dir / "pyproject.toml"
    path.write_text(tomli_w.dumps(pyproject), encoding="utf-8")
    return path


__all__ = [
    "CONNECTION",
    "below_runs_root",
    "executable",
    "flower_env",
    "format_command",
    "launch",
    "node_config_argument",
    "register_node",
    "run_command",
    "runs_root",
    "superlink_command",
    "supernode_command",
    "unregister_node",
    "write_app",
    "write_flower_config",
    "write_superexec_secret",
]
