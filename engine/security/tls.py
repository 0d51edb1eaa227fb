"""TLS contexts for every listener and client: TLS 1.2 at the least, optional mutual TLS.

One place builds them, so MLLP, DICOM and HTTP cannot drift apart in what they accept.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from engine.config.tls import ClientTls, ServerTls
from engine.core.errors import ConfigError

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(cert: str, key: str, ca: str | None = None, min_version: str = "1.2") -> ssl.SSLContext:
    """A server context; with `ca`, clients must present a certificate that CA signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[min_version]
    context.load_cert_chain(cert, key)
    if ca:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: str | None = None, cert: str | None = None, key: str | None = None, min_version: str = "1.2"
) -> ssl.SSLContext:
    """A client context verifying the server against `ca` (or the system store), optionally presenting a cert."""
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = _VERSIONS[min_version]
    if cert:
        context.load_cert_chain(cert, key)
    return context


def peer_common_name(peercert: dict | None) -> str | None:
    """The subject CN of a verified peer certificate (for allow-lists and audit), if any."""
    for rdn in (peercert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def _under(root: Path, value: str | None) -> str | None:
    return None if value is None else str(root / value)


def server_context_for(tls: ServerTls, root: Path, what: str) -> ssl.SSLContext:
    """The server context a listener's settings describe; files relative to the project root.
    ConfigError naming `what` (e.g. "mllp source of ris-orders") when the files are unusable."""
    try:
        return server_context(str(root / tls.cert), str(root / tls.key), _under(root, tls.ca), tls.min_version)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: unusable TLS files ({type(exc).__name__})") from exc


def client_context_for(tls: ClientTls | None, root: Path, what: str) -> ssl.SSLContext:
    """The client context a connector's settings describe (the system CA store without settings)."""
    tls = tls or ClientTls()
    try:
        return client_context(_under(root, tls.ca), _under(root, tls.cert), _under(root, tls.key), tls.min_version)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: unusable TLS files ({type(exc).__name__})") from exc
