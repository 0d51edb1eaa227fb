"""DICOM over TLS: mutual TLS accepted; plain TCP, strangers, old protocol versions, unknown AE titles
and certificate names refused and audited; a silent client cannot stall the listener."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE

from engine.connectors.dicom import DicomSource
from engine.core.errors import RetryableError
from engine.security.tls import client_context
from tests.connectors.test_dicom_source import (
    WAIT,
    Recorder,
    context,
    destination,
    no_phi_in_logs,
    outbound,
    running,
    tool,
)
from tests.dicomdata import KB, make_instance, part10_bytes
from tests.tlscerts import Certs, make_certs, tls_1_1_client

__all__ = ["no_phi_in_logs"]  # the autouse fixture: every log line of these tests is free of fake PHI


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("dicom-tls"))


def tls(certs: Certs, **extra: Any) -> dict[str, Any]:
    return {"tls": {"cert": certs.server_cert.name, "key": certs.server_key.name, "ca": certs.ca.name, **extra}}


def echoscu_tls(certs: Certs, port: int, *, aet: str = "CT01", stranger: bool = False) -> tuple[str, ...]:
    cert, key = (certs.stranger_cert, certs.stranger_key) if stranger else (certs.client_cert, certs.client_key)
    return ("echoscu", "-aet", aet, "-aec", "RADBRIDGE", "+tls", str(key), str(cert), "+cf", str(certs.ca),
            "127.0.0.1", str(port))  # fmt: skip


def handshake(port: int, context: ssl.SSLContext) -> str:
    """A TLS handshake from a raw socket: the version agreed when the server then waits for an
    A-ASSOCIATE-RQ, else why it failed (with TLS 1.3 a refused client certificate shows as an alert
    after the client's side of the handshake is done)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        try:
            with context.wrap_socket(sock, server_hostname="localhost") as tls_sock:
                tls_sock.settimeout(0.5)
                try:
                    return "closed" if tls_sock.recv(1) == b"" else "data"
                except TimeoutError:
                    return str(tls_sock.version())
        except (ssl.SSLError, ConnectionError) as exc:
            return getattr(exc, "reason", None) or type(exc).__name__


async def test_mutual_tls_echo_and_store(certs: Certs) -> None:
    rec = Recorder()
    root = certs.ca.parent
    async with running(rec, root=root, **tls(certs)) as source:
        code, out = await tool(*echoscu_tls(certs, source.port))
        assert code == 0, out
        client = {"ca": certs.ca.name, "cert": certs.client_cert.name, "key": certs.client_key.name}
        dest = destination(source.port, root, tls={**client, "server_name": "localhost"})
        body = part10_bytes(make_instance(pixel_bytes=64 * KB))
        assert (await dest.send(outbound(body))).detail == "C-STORE 0x0000"
        await dest.close()
    assert rec.inbounds[0].raw.endswith(body[-1000:])
    assert rec.audits == []


async def test_description_names_tls(certs: Certs) -> None:
    rec = Recorder()
    config = DicomSource.Config.model_validate({"host": "127.0.0.1", "port": 0, **tls(certs, min_version="1.3")})
    source = DicomSource(config, context(rec, certs.ca.parent))
    described = await source.start(rec.sink)
    await source.stop()
    assert described == [f"dicom://RADBRIDGE@127.0.0.1:{source.port} (tls 1.3+, client certificates)"]


async def test_plain_tcp_to_a_tls_port_is_refused_and_audited(certs: Certs) -> None:
    rec = Recorder()
    async with running(rec, root=certs.ca.parent, **tls(certs)) as source:
        code, out = await tool("echoscu", "-aec", "RADBRIDGE", "127.0.0.1", source.port)
        fields = await rec.wait_audit("association.refused")
    assert code != 0, out
    assert fields["outcome"] == "denied" and fields["detail"]["reason"].startswith("TLS handshake failed")
    assert fields["actor"] == "peer:127.0.0.1"


async def test_unknown_calling_ae_over_tls_is_rejected_and_audited(certs: Certs) -> None:
    rec = Recorder()
    async with running(rec, root=certs.ca.parent, allow=[{"ae_title": "CT01"}], **tls(certs)) as source:
        code, out = await tool(*echoscu_tls(certs, source.port, aet="INTRUDER"))
        fields = await rec.wait_audit("association.refused")
    assert code != 0 and "Calling AE Title Not Recognized" in out, out
    assert fields["actor"] == "ae:INTRUDER" and fields["detail"]["reason"] == "calling AE title not allowed"


@pytest.mark.parametrize("who", ["no certificate", "stranger"])
async def test_clients_without_a_trusted_certificate_are_refused(certs: Certs, who: str) -> None:
    rec = Recorder()
    if who == "no certificate":
        context = client_context(str(certs.ca))
    else:
        context = client_context(str(certs.ca), str(certs.stranger_cert), str(certs.stranger_key))
    async with running(rec, root=certs.ca.parent, **tls(certs)) as source:
        result = await asyncio.to_thread(handshake, source.port, context)
        fields = await rec.wait_audit("association.refused")
    assert result not in ("TLSv1.2", "TLSv1.3")
    expected = "PEER_DID_NOT_RETURN_A_CERTIFICATE" if who == "no certificate" else "CERTIFICATE_VERIFY_FAILED"
    assert fields["detail"]["reason"] == f"TLS handshake failed ({expected})"
    assert rec.inbounds == []


async def test_stranger_via_echoscu_is_refused(certs: Certs) -> None:
    rec = Recorder()
    async with running(rec, root=certs.ca.parent, **tls(certs)) as source:
        code, out = await tool(*echoscu_tls(certs, source.port, stranger=True))
        await rec.wait_audit("association.refused")
    assert code != 0, out


async def test_tls_1_1_client_is_refused(certs: Certs) -> None:
    rec = Recorder()
    old = tls_1_1_client(certs)
    async with running(rec, root=certs.ca.parent, **tls(certs)) as source:
        result = await asyncio.to_thread(handshake, source.port, old)
        fields = await rec.wait_audit("association.refused")
    assert result not in ("TLSv1.1", "TLSv1", "TLSv1.2", "TLSv1.3")
    assert fields["detail"]["reason"] == "TLS handshake failed (UNSUPPORTED_PROTOCOL)"


async def test_tls_1_3_floor_refuses_a_1_2_client(certs: Certs) -> None:
    rec = Recorder()
    context = client_context(str(certs.ca), str(certs.client_cert), str(certs.client_key))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with running(rec, root=certs.ca.parent, **tls(certs, min_version="1.3")) as source:
        result = await asyncio.to_thread(handshake, source.port, context)
        await rec.wait_audit("association.refused")
        trusted = client_context(str(certs.ca), str(certs.client_cert), str(certs.client_key))
        ok = await asyncio.to_thread(handshake, source.port, trusted)
    assert result != "TLSv1.2" and ok == "TLSv1.3"


async def test_allow_list_by_certificate_name_and_ae_title(certs: Certs) -> None:
    rec = Recorder()
    root = certs.ca.parent
    allow = [{"cn": "ris.example.test", "ae_title": "CT01"}]
    async with running(rec, root=root, allow=allow, **tls(certs)) as source:
        code, out = await tool(*echoscu_tls(certs, source.port))
        assert code == 0, out
    async with running(rec, root=root, allow=[{"cn": "pacs.example.test"}], **tls(certs)) as source:
        code, out = await tool(*echoscu_tls(certs, source.port))
        fields = await rec.wait_audit("association.refused")
    assert code != 0, out
    assert fields["actor"] == "peer:ris.example.test"
    assert fields["detail"]["reason"] == "certificate name not allowed"


async def test_silent_client_cannot_stall_the_listener(certs: Certs) -> None:
    rec = Recorder()
    async with running(rec, root=certs.ca.parent, acse_timeout_s=0.5, **tls(certs)) as source:
        with socket.create_connection(("127.0.0.1", source.port), timeout=WAIT):  # never says hello
            code, out = await tool(*echoscu_tls(certs, source.port))  # served meanwhile
            assert code == 0, out
            fields = await rec.wait_audit("association.refused")
    assert fields["detail"]["reason"].startswith("TLS handshake failed")


async def test_destination_refuses_an_untrusted_server(certs: Certs, tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other")  # a different CA
    rec = Recorder()
    async with running(rec, root=certs.ca.parent, **tls(certs)) as source:
        dest = destination(source.port, tls={"ca": str(other.ca), "cert": str(other.client_cert),
                                             "key": str(other.client_key)})  # fmt: skip
        with pytest.raises(RetryableError, match="no connection"):
            await dest.send(outbound(part10_bytes(make_instance(pixel_bytes=4 * KB))))
        await dest.close()
    assert rec.inbounds == []


async def test_tls_association_from_pynetdicom_with_trusted_certificate(certs: Certs) -> None:
    rec = Recorder()
    async with running(rec, root=certs.ca.parent, **tls(certs)) as source:

        def echo() -> int:
            ae = AE(ae_title="CT01")
            ae.add_requested_context("1.2.840.10008.1.1")
            context = client_context(str(certs.ca), str(certs.client_cert), str(certs.client_key))
            assoc = ae.associate("127.0.0.1", source.port, ae_title="RADBRIDGE", tls_args=(context, "localhost"))
            try:
                return int(assoc.send_c_echo().Status)
            finally:
                assoc.release()

        assert await asyncio.to_thread(echo) == 0
