"""DEVELOPMENT-ONLY certificates and keys for a Flower deployment on loopback or a test network.

`make_dev_certificates` writes a self-signed certificate authority, a SuperLink (server) certificate for
127.0.0.1/localhost (plus any extra host names given) signed by it, and one ECDSA P-384 key pair per
SuperNode in the OpenSSH format that Flower's SuperNode authentication expects
(`flower-supernode --auth-supernode-private-key`, `fedgin deploy register <public key>`).

The CA's private key is written next to the certificates so that more server certificates can be
issued; in a real deployment the CA lives with your institution's PKI, never next to the SuperLink,
and each site generates its own SuperNode key pair and only sends the public key to the operator.
Private keys are written with mode 0600. Nothing is silently replaced: over an existing folder only the
missing sites' key pairs are added (the CA, the server certificate and every existing key pair are kept),
and `overwrite=True` is needed to make everything new.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgin.errors import ConfigError, DataError
from fedgin.federation.preflight import (
    check_server_credentials,
    check_supernode_private_key,
    check_supernode_public_key,
)

#: Written at the top of the output folder so nobody mistakes these files for production material.
WARNING = (
    "DEVELOPMENT ONLY: these certificates and keys were made by `fedgin` for testing on loopback.\n"
    "Do not use them in production: the CA private key lies next to the certificates it signs and\n"
    "the SuperNode private keys were not generated on the sites that own them.\n"
)

_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_HOST = re.compile(r"^[A-Za-z0-9*_.:-]+$")
#: The CA and SuperLink files of a certificate folder (besides supernodes/<site>.key|.pub).
CORE_FILES = ("ca.crt", "ca.key", "server.crt", "server.key")
README = "README-DEVELOPMENT-ONLY.txt"


def check_site_name(name: str) -> str:
    """A site (SuperNode) name is a plain file name: letters, digits, '-', '_', '.', not starting with '.'."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"site name {name!r}: use letters, digits, '-', '_' and '.' only (no path separators, "
            "not starting with '.')"
        )
    return name


@dataclass
class SupernodeKeys:
    """One SuperNode's key pair: OpenSSH private key (0600) and OpenSSH public key."""

    name: str
    private_key: Path
    public_key: Path


@dataclass
class DevCertificates:
    """The files of a certificate folder; `kept_ca` / `kept_sites` say what an earlier run had made."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    supernodes: list[SupernodeKeys] = field(default_factory=list)
    kept_ca: bool = False
    kept_sites: list[str] = field(default_factory=list)

    def supernode(self, name: str) -> SupernodeKeys:
        for keys in self.supernodes:
            if keys.name == name:
                return keys
        raise KeyError(f"no SuperNode key pair named {name!r} in {self.directory}")


# -- key material (bytes) ---------------------------------------------------------------------------------
def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _supernode_files(name: str) -> dict[str, tuple[bytes, bool]]:
    """`<name>.key` (OpenSSH, private) and `<name>.pub` of a fresh ECDSA P-384 key pair."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return {
        f"{name}.key": (private, True),
        f"{name}.pub": (public + f" fedgin-dev-{name}\n".encode(), False),
    }


#: The last moment an X.509 certificate's validity can name (RFC 5280, 4.1.2.5.2).
LAST_X509_DATE = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _ca_and_server_files(hosts: list[str], days: int) -> dict[str, tuple[bytes, bool]]:
    """ca.crt, ca.key, server.crt and server.key (for 127.0.0.1, ::1, localhost and `hosts`)."""
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
    alt_names += [name for name in map(_host_name, hosts) if name not in alt_names]
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
    return {
        "ca.crt": (ca_cert.public_bytes(serialization.Encoding.PEM), False),
        "ca.key": (_pem_key(ca_key), True),
        "server.crt": (server_cert.public_bytes(serialization.Encoding.PEM), False),
        "server.key": (_pem_key(server_key), True),
    }


# -- writing: into a staging folder, then moved into place ------------------------------------------------
def _write(path: Path, data: bytes, private: bool) -> None:
    """Create `path` (it must not exist); private files get mode 0600 from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o600 if private else 0o644)


def _install(out_dir: Path, files: dict[str, tuple[bytes, bool]]) -> None:
    """Write `files` (relative path -> (bytes, private)) under `out_dir`, all or nothing.

    Everything is written into a staging folder first. A new `out_dir` is that folder renamed into place
    in one step. Into an existing folder each file is moved with os.replace, the file it replaces kept in
    the staging folder until all are in place; on an error the moved files are taken out again and the
    replaced ones put back. The staging folder is always removed; an error is one DataError line.
    """
    staging: Path | None = None
    placed: list[Path] = []
    replaced: list[tuple[Path, Path]] = []
    made: list[Path] = []
    try:
        fresh = not out_dir.exists()
        parent = out_dir.parent if fresh else out_dir
        parent.mkdir(parents=True, exist_ok=True)
        staging = parent / f".{out_dir.name}.staging-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()
        for relative, (data, private) in files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            _write(staging / relative, data, private)
        if fresh:
            os.rename(staging, out_dir)
            staging = None
            return
        for relative in sorted(files, key=lambda name: name == README):  # the README last
            target = out_dir / relative
            if not target.parent.is_dir():
                target.parent.mkdir(parents=True)
                made.append(target.parent)
            if target.is_dir() and not target.is_symlink():
                raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(target))
            if target.exists() or target.is_symlink():
                old = staging / ".replaced" / relative
                old.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, old)
                replaced.append((target, old))
            os.replace(staging / relative, target)
            placed.append(target)
    except OSError as error:
        undone = _roll_back(placed, replaced, made)
        where = Path(error.filename) if error.filename else out_dir
        outcome = "nothing was changed" if undone else "and could not restore the folder: check it"
        raise DataError(
            where, f"cannot write the certificates ({error.strerror or error}); {outcome}"
        ) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _roll_back(placed: list[Path], replaced: list[tuple[Path, Path]], made: list[Path]) -> bool:
    """Undo `_install`'s moves: new files removed, replaced files put back, new folders removed."""
    try:
        for target in placed:
            if target not in {target for target, _ in replaced}:
                target.unlink()
        for target, old in replaced:
            os.replace(old, target)
        for folder in reversed(made):
            folder.rmdir()
    except OSError:
        return False
    return True


def make_supernode_keys(out_dir: str | Path, name: str, *, overwrite: bool = False) -> SupernodeKeys:
    """One ECDSA P-384 key pair in OpenSSH format: `<name>.key` (0600) and `<name>.pub`.

    An existing pair is replaced only with `overwrite=True` (its registration on the SuperLink would no
    longer match).
    """
    check_site_name(name)
    out_dir = Path(out_dir)
    keys = SupernodeKeys(name, out_dir / f"{name}.key", out_dir / f"{name}.pub")
    for path in (keys.private_key, keys.public_key):
        if path.exists() and not overwrite:
            raise DataError(path, "already exists (pass overwrite=True to replace the key pair)")
    _install(out_dir, _supernode_files(name))
    return keys


# -- a certificate folder ---------------------------------------------------------------------------------
def _check_existing_pair(keys: SupernodeKeys) -> bool:
    """True when the site's key pair exists and is usable, False when neither file exists."""
    present = [path for path in (keys.private_key, keys.public_key) if path.exists()]
    if not present:
        return False
    if len(present) == 1:
        (there,) = present
        missing = keys.public_key if there == keys.private_key else keys.private_key
        raise DataError(
            missing, f"missing while {there.name} exists: restore it, or pass --overwrite to make a new key "
            f"pair for {keys.name!r} (then register its new .pub again)",
        )  # fmt: skip
    private = check_supernode_private_key(keys.private_key)
    public = check_supernode_public_key(keys.public_key)
    if private.public_key().public_numbers() != public.public_numbers():
        raise DataError(keys.public_key, f"does not match {keys.private_key} (not the same key pair)")
    return True


def _server_names(path: Path) -> list[x509.GeneralName]:
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def make_dev_certificates(
    out_dir: str | Path,
    n_supernodes: int,
    names: list[str] | None = None,
    *,
    hosts: list[str] | None = None,
    days: int = 30,
    overwrite: bool = False,
) -> DevCertificates:
    """Write a development CA, a SuperLink certificate and `n_supernodes` SuperNode key pairs.

    `names` (default `supernode-1` ... `supernode-N`) names the key pairs, e.g. after the sites of
    `federation.clients`. `hosts` adds DNS names or IP addresses to the server certificate besides
    127.0.0.1, ::1 and localhost. Files: ca.crt, ca.key, server.crt, server.key, supernodes/<name>.key
    and supernodes/<name>.pub, and README-DEVELOPMENT-ONLY.txt.

    Nothing is ever silently replaced. When `out_dir` already holds a CA and server certificate (checked:
    parsable, signed, not expired), they and every existing site key pair are kept and only the missing
    sites' key pairs are added, so that every site's `ca.crt` and every registration stays valid. A folder
    with only some of those files, a server certificate that does not cover `hosts`, or a broken file is
    refused; `overwrite=True` makes everything new (every site then needs the new `ca.crt` and its new
    key registered). Files are written into a staging folder and moved into place, so a failure leaves
    the folder as it was.
    """
    if names is None:
        names = [f"supernode-{index}" for index in range(1, n_supernodes + 1)]
    if len(names) != n_supernodes:
        raise ConfigError(f"{n_supernodes} SuperNodes but {len(names)} names: {names}")
    for name in names:
        check_site_name(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"site names must be unique, got {', '.join(names)}")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"--days must be at least 1 (got {days!r}): the certificates would be expired")
    # X.509 dates end at 9999-12-31 (RFC 5280's GeneralizedTime has four year digits).
    most_days = (LAST_X509_DATE - dt.datetime.now(dt.UTC)).days
    if days > most_days:
        raise ConfigError(
            f"--days {days} would end after 9999-12-31, the last date a certificate can hold "
            f"(at most {most_days} days from today)"
        )
    hosts = [str(host).strip() for host in hosts or []]
    for host in hosts:
        if not _HOST.match(host):
            raise ConfigError(f"--host {host!r}: give a DNS name or an IP address")
    out_dir = Path(out_dir)
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise DataError(folder, "is a file, not a folder: give --out a folder")
            break

    result = DevCertificates(
        directory=out_dir,
        ca_cert=out_dir / "ca.crt",
        ca_key=out_dir / "ca.key",
        server_cert=out_dir / "server.crt",
        server_key=out_dir / "server.key",
        supernodes=[
            SupernodeKeys(
                name, out_dir / "supernodes" / f"{name}.key", out_dir / "supernodes" / f"{name}.pub"
            )
            for name in names
        ],
    )
    present = [name for name in CORE_FILES if (out_dir / name).exists()]
    sites_present = any(
        path.exists() for keys in result.supernodes for path in (keys.private_key, keys.public_key)
    )
    files: dict[str, tuple[bytes, bool]] = {}
    if overwrite or not (present or sites_present):
        files.update(_ca_and_server_files(hosts, days))
        new_sites = names
    elif {"ca.crt", "server.crt", "server.key"} <= set(present):
        check_server_credentials(result.ca_cert, result.server_cert, result.server_key)
        covered = _server_names(result.server_cert)
        for host in hosts:
            if _host_name(host) not in covered:
                raise ConfigError(
                    f"{result.server_cert} does not cover --host {host}: it was made without it; pass "
                    "--overwrite to make a new CA and server certificate (every site then needs the new "
                    "ca.crt and its key registered again)"
                )
        result.kept_ca = True
        result.kept_sites = [keys.name for keys in result.supernodes if _check_existing_pair(keys)]
        new_sites = [name for name in names if name not in result.kept_sites]
    else:
        missing = [name for name in CORE_FILES if name not in present and name != "ca.key"]
        found = present + (["supernodes/ key pairs"] if sites_present else [])
        raise DataError(
            out_dir, f"already holds {', '.join(found)} but not {', '.join(missing)}: pass --overwrite to "
            "replace them with a new CA, server certificate and keys (every site then needs the new "
            "ca.crt and its key registered again)",
        )  # fmt: skip
    for name in new_sites:
        files.update({f"supernodes/{file}": data for file, data in _supernode_files(name).items()})
    if files or not (out_dir / README).exists():
        files[README] = (WARNING.encode(), False)
    _install(out_dir, files)
    return result


__all__ = [
    "CORE_FILES",
    "WARNING",
    "DevCertificates",
    "SupernodeKeys",
    "check_site_name",
    "load_certificates",
    "make_dev_certificates",
    "make_supernode_keys",
]


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
