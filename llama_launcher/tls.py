"""TLS for the public port: the user's pair, or a self-signed one made once and kept in the data dir."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from llama_direct.redaction import register_secret
from llama_launcher.errors import LauncherError

SELF_SIGNED_DAYS = 825


def resolve_tls(
    cert: Path | None, key: Path | None, self_signed: bool, data_dir: Path, host: str
) -> tuple[Path, Path] | None:
    if self_signed and (cert or key):
        raise LauncherError("use either --tls-self-signed or --tls-cert with --tls-key, not both")
    if bool(cert) != bool(key):
        raise LauncherError("--tls-cert and --tls-key go together")
    if cert and key:
        for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
            if not path.is_file():
                raise LauncherError(f"{flag} {path}: not a readable file")
        return cert.resolve(), key.resolve()
    if self_signed:
        return self_signed_pair(data_dir / "keys", host)
    return None


def self_signed_pair(keys_dir: Path, host: str) -> tuple[Path, Path]:
    """Reuse the pair if it exists, so a browser's one-time exception keeps working."""
    cert_path, key_path = keys_dir / "tls-cert.pem", keys_dir / "tls-key.pem"
    if cert_path.is_file() and key_path.is_file() and _is_leaf(cert_path):
        register_secret(_read_private(key_path))
        return cert_path, key_path
    # Half a pair (a start cut off between the two writes) is useless, and so is a pair made by an
    # older version as a CA (a stolen key could then sign for any name): make both anew.
    for leftover in (cert_path, key_path):
        leftover.unlink(missing_ok=True)
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    register_secret(key_pem)
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    hostname = socket.gethostname()
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    try:
        address = ipaddress.ip_address(host)
        if not address.is_unspecified and not address.is_loopback:
            names.append(x509.IPAddress(address))
    except ValueError:
        if host not in ("localhost", hostname):
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llama-direct self-signed")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private_key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key_pem)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _is_leaf(cert_path: Path) -> bool:
    """True when the certificate cannot sign others (`CA:FALSE`); a CA certificate is made anew."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return not constraints.ca


def _read_private(key_path: Path) -> str:
    """The key's text; a key that others may read is refused, like ssh does, not silently narrowed."""
    fd = os.open(key_path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as handle:
        if os.fstat(fd).st_mode & 0o077:
            raise LauncherError(f"{key_path} must be readable by its owner only (chmod 600 it, or delete it)")
        return handle.read()
