"""Throwaway certificates for TLS tests: a CA, a server cert for 127.0.0.1, a trusted and an untrusted client."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by a CA the server does not trust
    stranger_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, issuer_name: x509.Name, issuer_key, *, ca: bool = False, server: bool = False):  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name if issuer_key else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _write(folder: Path, name: str, key, cert) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def make_certs(folder: Path) -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _issue("radbridge test CA", _name("radbridge test CA"), None, ca=True)
    ca_path, _ = _write(folder, "ca", ca_key, ca_cert)
    server = _write(folder, "server", *_issue("localhost", ca_cert.subject, ca_key, server=True))
    client = _write(folder, "client", *_issue("ris.example.test", ca_cert.subject, ca_key))
    other_key, other_ca = _issue("other CA", _name("other CA"), None, ca=True)
    stranger = _write(folder, "stranger", *_issue("ris.example.test", other_ca.subject, other_key))
    return Certs(ca_path, *server, *client, *stranger)


def tls_1_1_client(certs: Certs, *, with_cert: bool = True) -> ssl.SSLContext:
    """A client offering only TLS 1.0/1.1. Debian's OpenSSL refuses those on the client side by
    itself, so the client lowers its own floor (@SECLEVEL=0): a refusal is then the server's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(certs.ca))
        if with_cert:
            old.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    return old
