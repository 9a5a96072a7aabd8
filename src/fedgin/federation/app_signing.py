"""Signed Flower apps: the operator signs each app (FAB) it submits; the SuperLink and the sites check it.

Flower's SuperNode already verifies apps (`flower-supernode --trusted-entities FILE`): a FAB carries
`verifications`, a map from a publisher's key id to `{"signature", "signed_at"}`, where the signature is
Ed25519 over `signed_at` (8 bytes, big-endian) + SHA-256(FAB), and the node runs the app only when a key it
trusts verifies it. In the open-source SuperLink those verifications come only from Flower's app hub, so
a locally built app arrives unsigned; fedgin fills the same field itself:

- `fedgin deploy run` signs the FAB it builds with the operator's key (`sign_fab`);
- the SuperLink started by `fedgin deploy superlink` refuses a run whose FAB no trusted publisher signed
  (`fedgin.federation.locked_superlink`), and forwards the verifications to the sites;
- every SuperNode started by `fedgin deploy supernode` is given the operator's public key as Flower's
  `--trusted-entities`, so a site checks the signature itself and does not depend on the SuperLink.

Keys are OpenSSH Ed25519 (`publisher.key` private, `publisher.pub` public), as Flower's verifier reads them.
"""

from __future__ import annotations

import base64
import hashlib
import json
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
from fedgin.io_utils import atomic_write

#: Key of Flower's verification map that says the FAB went through a verifying SuperLink.
LICENSE_KEY = "valid_license"
#: Value fedgin puts there (Flower's hub writes its own; the SuperNode only checks that one is present).
LICENSE_VALUE = "fedgin-signed"
#: A signature older than this is refused by the SuperLink: a captured submission cannot be replayed later.
MAX_SIGNATURE_AGE_S = 15 * 60


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
    signers = {name: value for name, value in verifications.items() if name != LICENSE_KEY}
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
        if max_age_s is not None and not -60 <= now - signed_at <= max_age_s:
            raise SignatureError(
                f"the signature of {name} was made {now - signed_at:.0f} s ago "
                f"(accepted: up to {max_age_s:.0f} s)"
            )
        return name
    raise AssertionError("unreachable")


__all__ = [
    "MAX_SIGNATURE_AGE_S",
    "PublisherKey",
    "SignatureError",
    "key_id",
    "load_private_key",
    "load_trusted",
    "make_publisher_key",
    "publisher_key",
    "sign_fab",
    "verify_fab",
    "write_trusted",
]
