"""Flower's own SuperLink and `flwr run`, with fedgin's app signatures in the path.

`python -m fedgin.federation.guarded superlink --trusted-publishers FILE -- <flower-superlink args>`
    runs Flower's `flower-superlink` in this process after wrapping its Control API's `start_run`: a run
    is created only when its FAB carries a valid, recent signature of a trusted publisher
    (`fedgin.federation.app_signing`). Every path that creates a run (the Control API over HTTPS and gRPC,
    automations) goes through that function. The verifications are stored with the FAB, so the sites'
    SuperNodes (`--trusted-entities`) check the same signature themselves. With `--isolation process`
    (what `fedgin deploy superlink` uses) it also starts the ServerApp executor, `flower-superexec`, with
    the SuperExec auth secret, so that only that process can take the server's tasks from the Runtime API
    (which Flower 1.41 serves on the same host and port as the Fleet and Control APIs).

`python -m fedgin.federation.guarded run --publisher-key KEY -- <flwr run args>`
    runs Flower's `flwr run` with the FAB it builds signed by the operator's key.

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
    SignatureError,
    load_private_key,
    load_trusted,
    sign_fab,
    verify_fab,
)


def guard_start_run(trusted: dict[str, str], max_age_s: float = MAX_SIGNATURE_AGE_S) -> None:
    """Wrap Flower's Control API `start_run` so that only runs of signed apps are created."""
    from flwr.supercore import log
    from flwr.supercore.error import ApiErrorCode, FlowerError
    from flwr.supercore.fab import Fab
    from flwr.superlink.servicer.control import control_handlers

    original = control_handlers.start_run
    if getattr(original, "fedgin_guarded", False):
        return

    def start_run(request, account, state, fleet_api_type, **kwargs):  # Flower's signature
        content = bytes(request.fab.content)
        try:
            if request.app_spec or not content:
                raise SignatureError(
                    "only apps submitted with their content are accepted (no hub or stored apps)"
                )
            signer = verify_fab(content, dict(request.fab.verifications), trusted, max_age_s)
        except SignatureError as error:
            log(ERROR, "fedgin: run refused: %s", error)
            raise FlowerError(
                ApiErrorCode.NO_PERMISSIONS, f"run refused: {error}", f"run refused: {error}"
            ) from None
        response = original(request, account, state, fleet_api_type, **kwargs)
        # Flower keeps verifications only for hub apps: store ours with the FAB for the sites to check.
        state.store_fab(Fab(hashlib.sha256(content).hexdigest(), content, dict(request.fab.verifications)))
        log(INFO, "fedgin: run %s admitted, app signed by %s", response.run_id, signer)
        return response

    start_run.fedgin_guarded = True  # type: ignore[attr-defined]
    control_handlers.start_run = start_run


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
    guard_start_run(load_trusted(args.trusted_publishers), args.max_signature_age)
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

    flower_run.Fab = signed_fab  # `flwr run` builds its request with this name
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
