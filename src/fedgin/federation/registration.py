"""`flwr supernode register` run as a subprocess whose JSON answer decides the exit status.

Flower 1.41's `flwr supernode register ... --format json` exits 0 even when the registration failed: it
prints `{"success": false, "error-message": "..."}` (a key already registered, an unreachable SuperLink,
a TLS problem). `register_supernode` reads that answer and raises a one-line ConfigError with Flower's
message instead.
"""

from __future__ import annotations

import json
import subprocess

from fedgin.errors import ConfigError
from fedgin.federation.supervisor import one_line


def _answer(stdout: str) -> dict | None:
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
    """Run a `flwr supernode register ... --format json` command; the new SuperNode's id, or ConfigError.

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


__all__ = ["register_supernode"]
