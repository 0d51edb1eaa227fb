"""The `fhir` destination over mutual TLS: a server that requires a client certificate its CA signed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core.errors import PermanentError, RetryableError
from engine.security.tls import server_context
from tests.fhir.records import result_fields
from tests.fhir.server import FhirServer, TokenEndpoint
from tests.fhir.site import CLIENT_ID, Site, message
from tests.inference.http.servers import serve
from tests.tlscerts import make_certs


@pytest.fixture
def tls_site(tmp_path: Path) -> Iterator[Site]:
    certs = make_certs(tmp_path / "certs")
    server = FhirServer()
    context = server_context(str(certs.server_cert), str(certs.server_key), str(certs.ca))  # client cert required
    with serve(server.app(), tls=context) as url:
        yield Site(server, TokenEndpoint(CLIENT_ID), url, tmp_path)


def tls(cert: str | None = "client") -> dict[str, str]:
    settings = {"ca": "certs/ca.crt"}
    if cert:
        settings |= {"cert": f"certs/{cert}.crt", "key": f"certs/{cert}.key"}
    return settings


async def test_mutual_tls(tls_site: Site) -> None:
    dest = tls_site.destination(auth=None, tls=tls())
    delivered = await dest.send(message(result_fields()))
    await dest.close()
    assert delivered.detail.startswith("DiagnosticReport/1 201")
    assert len(tls_site.server.all("DiagnosticReport")) == 1


@pytest.mark.parametrize("cert", [None, "stranger"])
async def test_without_a_trusted_client_certificate_nothing_arrives(tls_site: Site, cert: str | None) -> None:
    dest = tls_site.destination(auth=None, tls=tls(cert))
    with pytest.raises(RetryableError, match="message M1: transaction: connection failed"):
        await dest.send(message(result_fields()))
    await dest.close()
    assert tls_site.server.requests == []


async def test_server_certificate_from_another_ca_is_permanent(tls_site: Site, tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other")
    dest = tls_site.destination(auth=None, tls={"ca": str(other.ca.relative_to(tmp_path)), "cert": "certs/client.crt",
                                                "key": "certs/client.key"})  # fmt: skip
    with pytest.raises(PermanentError, match="TLS certificate of the server not trusted"):
        await dest.send(message(result_fields()))
    await dest.close()
    assert tls_site.server.requests == []
