"""Signed Flower apps: the operator signs each app (FAB) it submits; the SuperLink and the sites check it.

Flower's SuperNode already verifies apps (`flower-supernode --trusted-entities FILE`): a FAB carries
`verifications`, a map from a publisher's key id to `{"signature", "signed_at"}`, where the signature is
Ed25519 over `signed_at` (8 bytes, big-endian) + SHA-256(FAB), and the node runs the app only when a key it
trusts verifies it. In the open-source SuperLink those verifications come only from Flower's app hub, so
a locally built app arrives unsigned; fedgin fills the same field itself:

- `fedgin deploy run` signs the FAB it builds with the operator's key (`sign_fab`);
- the SuperLink started by `fedgin deploy superlink` refuses a run whose FAB no trusted publisher signed
  (`fedgin.federation.guarded`), and forwards the verifications to the sites;
- every SuperNode started by `fedgin deploy supernode` is given the operator's public key as Flower's
  `--trusted-entities`, so a site checks the signature itself and does not depend on the SuperLink.

A FAB signature says which app may run, not how: the same signed FAB with another run configuration could
delete a finished run. So `fedgin deploy run` also signs the submission itself (`sign_run`): the FAB's hash,
the run configuration it overrides, the federation, a random nonce and the time, under `RUN_SIGNATURE_KEY` in
the same verification map (Flower's SuperNode ignores key ids it does not trust). The guarded SuperLink
checks it (`verify_run`), admits each nonce once (`NonceStore`, kept in its state folder for the validity
window) and takes the run signature out before the FAB is stored for the sites.

Keys are OpenSSH Ed25519 (`publisher.key` private, `publisher.pub` public), as Flower's verifier reads them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.supercore.primitives.asymmetric_ed25519 import (
    create_message_to_sign,
    decode_base64url,
    verify_signature,
)

from fedgin.errors import DataError
from fedgin.io_utils import atomic_write, atomic_write_json

#: Key of Flower's verification map that says the FAB went through a verifying SuperLink.
LICENSE_KEY = "valid_license"
#: Value fedgin puts there (Flower's hub writes its own; the SuperNode only checks that one is present).
LICENSE_VALUE = "fedgin-signed"
#: A signature older than this is refused by the SuperLink: a captured submission cannot be replayed later.
MAX_SIGNATURE_AGE_S = 15 * 60
#: Key of the run signature in the verification map (never a key id: those start with `fedgin-` + hex).
RUN_SIGNATURE_KEY = "fedgin-run-signature"
#: How far a signature's time may lie ahead of the SuperLink's clock (clock skew between machines).
CLOCK_SKEW_S = 60


class SignatureError(Exception):
    """An app whose signature is missing, malformed, unknown or wrong."""


@dataclass(frozen=True)
class PublisherKey:
    """The operator's app-signing key pair and the trusted-publishers file for the SuperLink and sites."""

    private_key: Path
    public_key: Path
    trusted: Path


def key_id(public_openssh: str) -> str:
    """A stable short name for a public key: `fedgin-` + the first 16 hex digits of its SHA-256."""
    return "fedgin-" + hashlib.sha256(public_openssh.strip().encode()).hexdigest()[:16]


def publisher_key(directory: str | Path) -> PublisherKey:
    """The operator's key pair in `directory`, made there on the first call and kept afterwards (sites
    trust its public half, so replacing it would lock every site out of the next run)."""
    directory = Path(directory)
    existing = PublisherKey(
        directory / "publisher.key", directory / "publisher.pub", directory / "trusted-publishers.yaml"
    )
    if all(path.is_file() for path in (existing.private_key, existing.public_key, existing.trusted)):
        return existing
    return make_publisher_key(directory)


def make_publisher_key(directory: str | Path, name: str = "publisher") -> PublisherKey:
    """Write `<name>.key` (private, 0600), `<name>.pub` and `trusted-publishers.yaml` into `directory`."""
    directory = Path(directory)
    private = ed25519.Ed25519PrivateKey.generate()
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    keys = PublisherKey(
        directory / f"{name}.key", directory / f"{name}.pub", directory / "trusted-publishers.yaml"
    )
    atomic_write(keys.private_key, lambda handle: handle.write(pem), mode=0o600)
    atomic_write(keys.public_key, lambda handle: handle.write(f"{public} fedgin-publisher\n".encode()))
    write_trusted(keys.trusted, [keys.public_key])
    return keys


def _public_openssh(path: Path) -> str:
    """The `ssh-ed25519 AAAA...` part of a public key file, checked to be an Ed25519 key."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        parts = text.split()
        openssh = " ".join(parts[:2])
        key = serialization.load_ssh_public_key(openssh.encode())
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as error:
        raise DataError(path, f"not an OpenSSH public key ({type(error).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise DataError(
            path, "not an Ed25519 key (app signing uses ssh-ed25519 keys: fedgin certs makes one)"
        )
    return openssh


def write_trusted(path: str | Path, public_keys: list[Path]) -> Path:
    """Flower's trusted-entities YAML (`key id: ssh-ed25519 ...`) for the given public key files."""
    entries = {}
    for public_key in public_keys:
        openssh = _public_openssh(public_key)
        entries[key_id(openssh)] = openssh
    text = yaml.safe_dump(entries, sort_keys=True)
    atomic_write(path, lambda handle: handle.write(text.encode()))
    return Path(path)


def load_trusted(path: str | Path) -> dict[str, str]:
    """Trusted publishers from a trusted-entities YAML or a single `.pub` file, every key checked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            path, "trusted publishers file not found (fedgin certs writes trusted-publishers.yaml)"
        )
    if path.suffix == ".pub":
        openssh = _public_openssh(path)
        return {key_id(openssh): openssh}
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DataError(path, f"not a readable YAML file ({type(error).__name__})") from None
    if not isinstance(entries, dict) or not entries:
        raise DataError(path, "expected a map of key id -> 'ssh-ed25519 ...' public key")
    for name, value in entries.items():
        try:
            key = serialization.load_ssh_public_key(str(value).encode())
        except ValueError:
            raise DataError(path, f"entry {name!r} is not an OpenSSH public key") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise DataError(path, f"entry {name!r} is not an Ed25519 key")
    return {str(name): str(value) for name, value in entries.items()}


def load_private_key(path: str | Path) -> tuple[ed25519.Ed25519PrivateKey, str]:
    """The operator's signing key and its key id, with a one-line error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "publisher key not found (fedgin certs writes publisher.key)")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise DataError(path, f"not an unencrypted OpenSSH private key ({type(error).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DataError(path, "not an Ed25519 key (app signing uses ssh-ed25519 keys)")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return key, key_id(public.decode())


def sign_fab(content: bytes, private_key: str | Path, signed_at: int | None = None) -> dict[str, str]:
    """Flower's FAB verification map for `content`, signed with the operator's key."""
    key, name = load_private_key(private_key)
    signed_at = int(time.time()) if signed_at is None else signed_at
    signature = key.sign(create_message_to_sign(hashlib.sha256(content).digest(), signed_at))
    record = {"signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode(), "signed_at": signed_at}
    return {LICENSE_KEY: LICENSE_VALUE, name: json.dumps(record)}


def verify_fab(
    content: bytes,
    verifications: dict[str, str],
    trusted: dict[str, str],
    max_age_s: float | None = MAX_SIGNATURE_AGE_S,
    now: float | None = None,
) -> str:
    """The id of the trusted key that signed `content`; SignatureError says why there is none.

    The same check as Flower's SuperNode (signature over signed_at + SHA-256 of the FAB), plus an age limit.
    """
    signers = {
        name: value for name, value in verifications.items() if name not in (LICENSE_KEY, RUN_SIGNATURE_KEY)
    }
    if not signers:
        raise SignatureError("the app is not signed (submit it with `fedgin deploy run --publisher-key`)")
    known = [name for name in signers if name in trusted]
    if not known:
        raise SignatureError(f"the app is signed by {', '.join(sorted(signers))}, not by a trusted publisher")
    digest = hashlib.sha256(content).digest()
    now = time.time() if now is None else now
    for name in known:
        try:
            record = json.loads(signers[name])
            signed_at = int(record["signed_at"])
            signature = decode_base64url(str(record["signature"]))
        except (ValueError, TypeError, KeyError) as error:
            raise SignatureError(f"malformed signature of {name} ({type(error).__name__})") from None
        public = serialization.load_ssh_public_key(trusted[name].encode())
        assert isinstance(public, ed25519.Ed25519PublicKey)  # load_trusted checked it
        if not verify_signature(public, create_message_to_sign(digest, signed_at), signature):
            raise SignatureError(f"the signature of {name} does not match the app's content")
        _check_age(f"the signature of {name}", signed_at, max_age_s, now)
        return name
    raise AssertionError("unreachable")


def _check_age(what: str, signed_at: int, max_age_s: float | None, now: float) -> None:
    if max_age_s is not None and not -CLOCK_SKEW_S <= now - signed_at <= max_age_s:
        raise SignatureError(
            f"{what} was made {now - signed_at:.0f} s ago (accepted: up to {max_age_s:.0f} s)"
        )


@dataclass(frozen=True)
class Submission:
    """What decides what a run does, as the SuperLink receives it (Flower's StartRunRequest)."""

    fab_sha256: str
    #: `flwr run --run-config` values (the app's own config is inside the FAB, covered by its hash).
    override_config: dict[str, bool | int | float | str]
    federation: str
    #: The serialized federation config override (empty for a deployment federation).
    federation_config: bytes

    def message(self, nonce: str, signed_at: int) -> bytes:
        """The signed bytes: one canonical JSON document (sorted keys, no spaces)."""
        document = {
            "fab_sha256": self.fab_sha256,
            "override_config": self.override_config,
            "federation": self.federation,
            "federation_config": self.federation_config.hex(),
            "nonce": nonce,
            "signed_at": signed_at,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sign_run(submission: Submission, private_key: str | Path, signed_at: int | None = None) -> str:
    """The run signature (a JSON record for `RUN_SIGNATURE_KEY`) of one submission, with a fresh nonce."""
    key, name = load_private_key(private_key)
    signed_at = int(time.time()) if signed_at is None else signed_at
    nonce = secrets.token_hex(16)
    signature = key.sign(submission.message(nonce, signed_at))
    record = {
        "key": name,
        "nonce": nonce,
        "signed_at": signed_at,
        "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode(),
    }
    return json.dumps(record, sort_keys=True)


@dataclass(frozen=True)
class RunSignature:
    key: str
    nonce: str
    signed_at: int


def verify_run(
    submission: Submission,
    record: str | None,
    trusted: dict[str, str],
    max_age_s: float | None = MAX_SIGNATURE_AGE_S,
    now: float | None = None,
) -> RunSignature:
    """The checked run signature of `submission`; SignatureError says what is wrong with it."""
    if not record:
        raise SignatureError(
            "the submission carries no run signature (submit it with `fedgin deploy run --publisher-key`)"
        )
    try:
        fields = json.loads(record)
        name, nonce = str(fields["key"]), str(fields["nonce"])
        signed_at = int(fields["signed_at"])
        signature = decode_base64url(str(fields["signature"]))
    except (ValueError, TypeError, KeyError) as error:
        raise SignatureError(f"malformed run signature ({type(error).__name__})") from None
    if name not in trusted:
        raise SignatureError(f"the run is signed by {name}, not by a trusted publisher")
    if not 16 <= len(nonce) <= 128:
        raise SignatureError("malformed run signature (nonce)")
    public = serialization.load_ssh_public_key(trusted[name].encode())
    assert isinstance(public, ed25519.Ed25519PublicKey)  # load_trusted checked it
    if not verify_signature(public, submission.message(nonce, signed_at), signature):
        raise SignatureError(
            "the run signature does not match this submission (its app, run configuration or federation "
            "differ from what the operator signed)"
        )
    _check_age("the run signature", signed_at, max_age_s, time.time() if now is None else now)
    return RunSignature(name, nonce, signed_at)


class NonceStore:
    """Nonces of admitted runs, kept in a JSON file for as long as their signature could be accepted, so
    that a captured submission is admitted once, across restarts of the SuperLink too."""

    def __init__(self, path: str | Path, max_age_s: float = MAX_SIGNATURE_AGE_S) -> None:
        self.path = Path(path)
        self.max_age_s = max_age_s
        self._lock = threading.Lock()  # the SuperLink serves its APIs from several threads
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise DataError(self.path, f"unreadable run nonces ({type(error).__name__})") from None
        if not isinstance(stored, dict) or not all(isinstance(v, int) for v in stored.values()):
            raise DataError(self.path, "unreadable run nonces (expected a map of nonce -> signed_at)")
        self._used: dict[str, int] = stored

    def claim(self, signature: RunSignature, now: float | None = None) -> None:
        """Record the signature's nonce, or SignatureError if a run was admitted with it already."""
        now = time.time() if now is None else now
        with self._lock:
            if signature.nonce in self._used:
                raise SignatureError("this signed submission was used already (a replay: its nonce is spent)")
            horizon = now - self.max_age_s - CLOCK_SKEW_S  # older ones are refused for their age anyway
            used = {nonce: at for nonce, at in self._used.items() if at >= horizon}
            used[signature.nonce] = signature.signed_at
            # Written before the run is created: a failure to remember refuses the run.
            atomic_write_json(self.path, used)
            self._used = used


__all__ = [
    "MAX_SIGNATURE_AGE_S",
    "RUN_SIGNATURE_KEY",
    "NonceStore",
    "PublisherKey",
    "RunSignature",
    "SignatureError",
    "Submission",
    "key_id",
    "load_private_key",
    "load_trusted",
    "make_publisher_key",
    "publisher_key",
    "sign_fab",
    "sign_run",
    "verify_fab",
    "verify_run",
    "write_trusted",
]
