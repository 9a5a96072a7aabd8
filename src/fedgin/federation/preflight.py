"""Checks made before a Flower process or a federation starts: a deployment's certificates and keys, and
the sites' held-out cases of a cross-site evaluation.

Flower reads these files late and fails far from the cause: a SuperLink given a garbage `ca.crt` keeps
serving while its SuperExec crashes, a SuperNode given a junk key exits with a multi-line report, and
`flwr supernode register` with a junk `.pub` prints Flower's exit page. Each function here parses a file
with `cryptography` and raises `DataError(path, problem)` (one line, naming the file) when it cannot be
used; it returns what it parsed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedgin.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fedgin.config import RunConfig

#: The elliptic curves Flower accepts for SuperNode authentication keys (flwr's `uses_nist_ec_curve`).
NIST_CURVES = (ec.SECP192R1, ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_KEYGEN = 'make one with `fedgin certs` or `ssh-keygen -t ecdsa -b 384 -N "" -f <site>.key`'


def _read(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.exists():
        raise DataError(path, f"{what} not found")
    if not path.is_file():
        raise DataError(path, f"{what} expected, found a folder or special file")
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(path, f"cannot read the {what} ({error.strerror})") from None


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise DataError(path, f"not a PEM {what} (no readable -----BEGIN CERTIFICATE----- block)") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_dates(path: Path, cert: x509.Certificate, now: dt.datetime) -> None:
    if cert.not_valid_after_utc <= now:
        raise DataError(path, f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_before_utc > now:
        raise DataError(path, f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_ca_certificate(path: str | Path, *, now: dt.datetime | None = None) -> list[x509.Certificate]:
    """The CA certificate(s) of `path` (PEM, one or a bundle): at least one CA, none expired."""
    path, now = Path(path), now or dt.datetime.now(dt.UTC)
    certs = _certificates(path, "CA certificate")
    cas = [cert for cert in certs if _is_ca(cert)]
    if not cas:
        raise DataError(
            path, "not a CA certificate (no basicConstraints CA:TRUE): give the CA that signed the server "
            "certificate (ca.crt), not the server certificate itself",
        )  # fmt: skip
    for cert in cas:
        _check_dates(path, cert, now)
    return cas


def check_server_credentials(
    ca_cert: str | Path, server_cert: str | Path, server_key: str | Path, *, now: dt.datetime | None = None
) -> None:
    """The SuperLink's TLS files: a CA, a server certificate signed by it and valid now, its private key."""
    ca_cert, server_cert, server_key = Path(ca_cert), Path(server_cert), Path(server_key)
    now = now or dt.datetime.now(dt.UTC)
    cas = check_ca_certificate(ca_cert, now=now)
    chain = _certificates(server_cert, "server certificate")
    leaf = chain[0]
    _check_dates(server_cert, leaf, now)
    # walk leaf -> (intermediates in server.crt) -> a CA of ca.crt
    current, seen = leaf, 0
    while not any(_issued_by(current, ca) for ca in cas):
        parents = [cert for cert in chain[1:] if cert is not current and _issued_by(current, cert)]
        seen += 1
        if not parents or seen > len(chain):
            raise DataError(server_cert, f"not signed by the CA in {ca_cert} (made with a different CA?)")
        current = parents[0]
        _check_dates(server_cert, current, now)
    data = _read(server_key, "server private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DataError(
            server_key, "the private key is passphrase-protected; Flower needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DataError(server_key, "not a PEM private key") from None
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise DataError(server_key, f"does not match {server_cert} (a different key pair)")


def check_supernode_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """A SuperNode's authentication key: an unencrypted OpenSSH ECDSA private key on a NIST curve."""
    path = Path(path)
    data = _read(path, "SuperNode private key")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except TypeError:
        raise DataError(
            path, "the private key is passphrase-protected; Flower needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DataError(path, f"not an OpenSSH private key ({_KEYGEN})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, NIST_CURVES):
        raise DataError(path, f"SuperNode authentication needs an ECDSA (NIST curve) key ({_KEYGEN})")
    return key


def check_supernode_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    """A SuperNode's public key for `fedgin deploy register`: OpenSSH ECDSA on a NIST curve."""
    path = Path(path)
    data = _read(path, "public key")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise DataError(
            path, f"not an OpenSSH public key (one line 'ecdsa-sha2-nistp384 AAAA...'; {_KEYGEN})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, NIST_CURVES):
        raise DataError(path, f"SuperNode authentication needs an ECDSA (NIST curve) public key ({_KEYGEN})")
    return key


def check_held_out_cases(config: RunConfig, split: str) -> None:
    """Every site of `config.federation.clients` has cached cases of `split` to score: one line naming the
    site otherwise. Checked before Ray starts, and before a federation whose best model is scored by a
    cross-site evaluation (`federate --cross-site`) trains."""
    from fedgin.federation.cross_site import held_out_cases

    for spec in config.federation.clients:
        try:
            if not held_out_cases(spec, split):
                caches = ", ".join(str(data.cache) for data in spec.data)
                raise ConfigError(f"site {spec.name!r}: no cached cases of split {split!r} in {caches}")
        except DataError as error:
            raise DataError(error.path, f"{error.problem} (site {spec.name!r})") from None


__all__ = [
    "check_ca_certificate",
    "check_held_out_cases",
    "check_server_credentials",
    "check_supernode_private_key",
    "check_supernode_public_key",
]
