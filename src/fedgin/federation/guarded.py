"""Flower's own SuperLink and `flwr run`, with fedgin's app signatures in the path.

`python -m fedgin.federation.guarded superlink --trusted-publishers FILE -- <flower-superlink args>`
    runs Flower's `flower-superlink` in this process after wrapping its Control API's `start_run`: a run
    is created only when its FAB carries a valid, recent signature of a trusted publisher and the
    submission (FAB hash, run configuration, federation) a run signature of one, with a nonce never
    admitted before (`fedgin.federation.app_signing`; the nonces in `<database folder>/run-nonces.json`).
    Every path that creates a run (the Control API over HTTPS and gRPC, automations) goes through that
    function. The FAB's verifications are stored with it, so the sites' SuperNodes (`--trusted-entities`)
    check the same FAB signature themselves.
    The Control API's node registration and federation changes are refused (`guard_node_registration`):
    the operator registers a site's key on the SuperLink's machine (`fedgin deploy register`, which writes
    to the SuperLink's database with Flower's own LinkState). With `--isolation process`
    (what `fedgin deploy superlink` uses) it also starts the ServerApp executor, `flower-superexec`, with
    the SuperExec auth secret, so that only that process can take the server's tasks from the Runtime API
    (which Flower 1.41 serves on the same host and port as the Fleet and Control APIs).

`python -m fedgin.federation.guarded run --publisher-key KEY -- <flwr run args>`
    runs Flower's `flwr run` with the FAB it builds signed by the operator's key, and its request (FAB hash,
    run configuration, federation, a fresh nonce and the time) signed as well.

Flower is pinned (1.41.0); `tests/test_app_signing.py` submits real apps to a real SuperLink, so a Flower
release that moves these functions fails the tests instead of silently dropping the check.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from logging import ERROR, INFO
from pathlib import Path

from fedgin.federation.app_signing import (
    MAX_SIGNATURE_AGE_S,
    RUN_SIGNATURE_KEY,
    NonceStore,
    SignatureError,
    Submission,
    load_private_key,
    load_trusted,
    sign_fab,
    sign_run,
    verify_fab,
    verify_run,
)

#: The run's nonces, in the folder of the SuperLink's database (its state folder).
NONCES_FILE = "run-nonces.json"
#: Control API calls that change who belongs to the federation: refused over the network.
NODE_HANDLERS = (
    "register_node",
    "unregister_node",
    "add_node_to_federation",
    "remove_node_from_federation",
    "create_federation",
    "archive_federation",
    "remove_account_from_federation",
    "create_invitation",
    "accept_invitation",
    "configure_simulation_federation",
)


def submission(request) -> Submission:
    """The signed parts of a StartRunRequest (the same on the operator's side and the SuperLink's)."""
    from flwr.common.serde import user_config_from_proto

    return Submission(
        fab_sha256=hashlib.sha256(bytes(request.fab.content)).hexdigest(),
        override_config=dict(user_config_from_proto(request.override_config)),
        federation=request.federation,
        federation_config=request.override_federation_config.SerializeToString(deterministic=True),
    )


def guard_start_run(
    trusted: dict[str, str], nonces: NonceStore, max_age_s: float = MAX_SIGNATURE_AGE_S
) -> None:
    """Wrap Flower's Control API `start_run` so that only signed submissions of signed apps create a run,
    each once."""
    from flwr.supercore import log
    from flwr.supercore.error import ApiErrorCode, FlowerError
    from flwr.supercore.fab import Fab
    from flwr.superlink.servicer.control import control_handlers

    original = control_handlers.start_run
    if getattr(original, "fedgin_guarded", False):
        return

    def start_run(request, account, state, fleet_api_type, **kwargs):  # Flower's signature
        content = bytes(request.fab.content)
        verifications = dict(request.fab.verifications)
        run_signature = verifications.pop(RUN_SIGNATURE_KEY, None)
        try:
            if request.app_spec or not content:
                raise SignatureError(
                    "only apps submitted with their content are accepted (no hub or stored apps)"
                )
            unsigned = [
                name
                for name in ("series_id", "connector_ids", "connector_refs", "user_prompt")
                if getattr(request, name)
            ]
            if unsigned:  # parts of a request that `fedgin deploy run` never sends, so never signs
                raise SignatureError(f"unsigned request fields: {', '.join(unsigned)}")
            signer = verify_fab(content, verifications, trusted, max_age_s)
            signature = verify_run(submission(request), run_signature, trusted, max_age_s)
            nonces.claim(signature)
        except SignatureError as error:
            log(ERROR, "fedgin: run refused: %s", error)
            raise FlowerError(
                ApiErrorCode.NO_PERMISSIONS, f"run refused: {error}", f"run refused: {error}"
            ) from None
        response = original(request, account, state, fleet_api_type, **kwargs)
        # Flower keeps verifications only for hub apps: store the FAB's with it for the sites to check
        # (the run signature stays here: it is spent).
        state.store_fab(Fab(hashlib.sha256(content).hexdigest(), content, verifications))
        log(INFO, "fedgin: run %s admitted, app signed by %s", response.run_id, signer)
        return response

    start_run.fedgin_guarded = True  # type: ignore[attr-defined]
    control_handlers.start_run = start_run


def guard_node_registration() -> None:
    """Refuse the Control API's node registration and federation changes: anyone who reaches the port
    could call them (Flower's Control API has no accounts without its enterprise plugins)."""
    from flwr.supercore import log
    from flwr.supercore.error import ApiErrorCode, FlowerError
    from flwr.superlink.servicer.control import control_handlers

    message = (
        "node registration is local to the SuperLink machine: "
        "fedgin deploy register|unregister --state <the SuperLink's --state>"
    )

    def refuse(name: str):
        def refused(*args, **kwargs):
            log(ERROR, "fedgin: %s refused: %s", name, message)
            raise FlowerError(ApiErrorCode.NO_PERMISSIONS, f"{name} refused: {message}", message)

        refused.fedgin_guarded = True  # type: ignore[attr-defined]
        return refused

    for name in NODE_HANDLERS:
        if not getattr(getattr(control_handlers, name), "fedgin_guarded", False):
            setattr(control_handlers, name, refuse(name))


def _state_folder(flower_args: list[str]) -> Path:
    """The folder of the SuperLink's --database (this process's folder for an in-memory one)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--database", default="")
    database = parser.parse_known_args(flower_args)[0].database
    in_memory = not database or database.startswith(":") or "://" in database
    return Path.cwd() if in_memory else Path(database).resolve().parent


def _superexec_command(flower_args: list[str]) -> list[str] | None:
    """The ServerApp executor for a SuperLink in process isolation (None in subprocess isolation)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--isolation", default="subprocess")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="9092")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--ssl-ca-certfile")
    parser.add_argument("--superexec-auth-secret-file")
    known, _ = parser.parse_known_args(flower_args)
    if known.isolation != "process":
        return None
    host = "127.0.0.1" if known.host in ("0.0.0.0", "::", "") else known.host
    host = f"[{host}]" if ":" in host else host
    command = [
        str(Path(sys.executable).parent / "flower-superexec"),
        "--runtime-api-address",
        f"{host}:{known.port}",
    ]
    command += ["--insecure"] if known.insecure else ["--root-certificates", str(known.ssl_ca_certfile)]
    if known.superexec_auth_secret_file:
        command += ["--superexec-auth-secret-file", known.superexec_auth_secret_file]
    return [*command, "--parent-pid", str(os.getpid())]


def superlink_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="fedgin-superlink")
    parser.add_argument("--trusted-publishers", required=True, type=Path)
    parser.add_argument("--max-signature-age", type=float, default=MAX_SIGNATURE_AGE_S)
    parser.add_argument("flower_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    flower_args = [arg for arg in args.flower_args if arg != "--"]
    nonces = NonceStore(_state_folder(flower_args) / NONCES_FILE, args.max_signature_age)
    guard_start_run(load_trusted(args.trusted_publishers), nonces, args.max_signature_age)
    guard_node_registration()
    superexec = _superexec_command(flower_args)
    if superexec is not None:
        # It retries until the SuperLink below listens, and exits with this process: --parent-pid is
        # polled (it lived on for up to 40 s after a Ctrl-C), PR_SET_PDEATHSIG is at once.
        from fedgin.processes import die_with_parent

        subprocess.Popen(superexec, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *flower_args]
    flower_superlink()


def run_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="fedgin-run")
    parser.add_argument("--publisher-key", required=True, type=Path)
    parser.add_argument("flwr_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    import importlib

    from flwr.cli.app import app
    from flwr.supercore.fab import Fab

    flower_run = importlib.import_module("flwr.cli.run.run")  # the module (its package exports the function)

    load_private_key(args.publisher_key)  # a bad key fails here, before anything is built or sent

    def signed_fab(hash_str: str, content: bytes, verifications: dict[str, str]) -> Fab:
        return Fab(hash_str, content, sign_fab(content, args.publisher_key) if content else verifications)

    def signed_request(**fields):
        request = start_run_request(**fields)
        if request.fab.content:
            request.fab.verifications[RUN_SIGNATURE_KEY] = sign_run(submission(request), args.publisher_key)
        return request

    start_run_request = flower_run.StartRunRequest
    # `flwr run` builds its FAB and then its request with these names
    flower_run.Fab = signed_fab
    flower_run.StartRunRequest = signed_request
    app(args=["run", *[arg for arg in args.flwr_args if arg != "--"]], prog_name="flwr")


def main(argv: list[str] | None = None) -> None:
    from fedgin.errors import FedginError

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"superlink": superlink_main, "run": run_main}
    if not argv or argv[0] not in commands:
        sys.exit(f"usage: python -m fedgin.federation.guarded {{{','.join(commands)}}} ...")
    try:
        commands[argv[0]](argv[1:])
    except FedginError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
