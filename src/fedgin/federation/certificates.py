"""DEVELOPMENT-ONLY certificates and keys for a Flower deployment on loopback or a test network.

`make_dev_certificates` writes a self-signed certificate authority, a SuperLink (server) certificate for
127.0.0.1/localhost (plus any extra host names given) signed by it, and one ECDSA P-384 key pair per
SuperNode in the OpenSSH format that Flower's SuperNode authentication expects
(`flower-supernode --auth-supernode-private-key`, `flwr supernode register <public key>`).

The CA's private key is written next to the certificates so that more server certificates can be
issued; in a real deployment the CA lives with your institution's PKI, never next to the SuperLink,
and each site generates its own SuperNode key pair and only sends the public key to the operator.
Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgin.errors import DataError

#: Written at the top of the output folder so nobody mistakes these files for production material.
WARNING = (
    "DEVELOPMENT ONLY: these certificates and keys were made by `fedgin` for testing on loopback.\n"
    "Do not use them in production: the CA private key lies next to the certificates it signs and\n"
    "the SuperNode private keys were not generated on the sites that own them.\n"
)

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class SupernodeKeys:
    """One SuperNode's key pair: OpenSSH private key (0600) and OpenSSH public key."""

    name: str
    private_key: Path
    public_key: Path


@dataclass
class DevCertificates:
    """The files `make_dev_certificates` wrote."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    supernodes: list[SupernodeKeys] = field(default_factory=list)

    def supernode(self, name: str) -> SupernodeKeys:
        for keys in self.supernodes:
            if keys.name == name:
                return keys
        raise KeyError(f"no SuperNode key pair named {name!r} in {self.directory}")


def _write(path: Path, data: bytes, private: bool) -> Path:
    """Write `data`; private files are created with mode 0600 (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600 if private else 0o644)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_supernode_keys(out_dir: str | Path, name: str) -> SupernodeKeys:
    """One ECDSA P-384 key pair in OpenSSH format: `<name>.key` (0600) and `<name>.pub`."""
    if not _NAME.match(name):
        raise ValueError(f"SuperNode name {name!r}: use letters, digits, '.', '_' or '-'")
    out_dir = Path(out_dir)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return SupernodeKeys(
        name=name,
        private_key=_write(out_dir / f"{name}.key", private, private=True),
        public_key=_write(out_dir / f"{name}.pub", public + f" fedgin-dev-{name}\n".encode(), private=False),
    )


def make_dev_certificates(
    out_dir: str | Path,
    n_supernodes: int,
    names: list[str] | None = None,
    *,
    hosts: list[str] | None = None,
    days: int = 30,
) -> DevCertificates:
    """Write a development CA, a SuperLink certificate and `n_supernodes` SuperNode key pairs.

    `names` (default `supernode-1` ... `supernode-N`) names the key pairs, e.g. after the sites of
    `federation.clients`. `hosts` adds DNS names or IP addresses to the server certificate besides
    127.0.0.1, ::1 and localhost. Files: ca.crt, ca.key, server.crt, server.key, supernodes/<name>.key
    and supernodes/<name>.pub, and README-DEVELOPMENT-ONLY.txt.
    """
    if names is None:
        names = [f"supernode-{index}" for index in range(1, n_supernodes + 1)]
    if len(names) != n_supernodes:
        raise ValueError(f"{n_supernodes} SuperNodes but {len(names)} names: {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"SuperNode names must be unique, got {names}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedgin development CA (DO NOT TRUST)")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for host in hosts or []:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )

    result = DevCertificates(
        directory=out_dir,
        ca_cert=_write(out_dir / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM), private=False),
        ca_key=_write(out_dir / "ca.key", _pem_key(ca_key), private=True),
        server_cert=_write(
            out_dir / "server.crt", server_cert.public_bytes(serialization.Encoding.PEM), private=False
        ),
        server_key=_write(out_dir / "server.key", _pem_key(server_key), private=True),
    )
    for name in names:
        result.supernodes.append(make_supernode_keys(out_dir / "supernodes", name))
    _write(out_dir / "README-DEVELOPMENT-ONLY.txt", WARNING.encode(), private=False)
    return result


__all__ = ["WARNING", "DevCertificates", "SupernodeKeys", "make_dev_certificates", "make_supernode_keys"]


def load_certificates(directory: str | Path) -> DevCertificates:
    """The files of a certificate folder (as `make_dev_certificates` lays it out), checked to exist."""
    directory = Path(directory)
    for name in ("ca.crt", "server.crt", "server.key"):
        if not (directory / name).is_file():
            raise DataError(directory / name, "missing (make development certificates with `fedgin certs`)")
    supernodes = [
        SupernodeKeys(key.stem, key, key.with_suffix(".pub"))
        for key in sorted((directory / "supernodes").glob("*.key"))
    ]
    return DevCertificates(
        directory,
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        supernodes=supernodes,
    )
