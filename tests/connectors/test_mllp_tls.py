"""MLLP over TLS: mutual TLS accepted, strangers / old protocol versions / plain TCP refused and audited."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from engine.connectors.mllp import MllpDestination, send_messages
from engine.core.component import Outbound
from engine.security.tls import client_context
from tests.connectors.test_mllp_helpers import WAIT, Client, Recorder, context, msa, orm, running_source
from tests.tlscerts import Certs, make_certs, tls_1_1_client


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("mllp-tls"))


def tls_options(certs: Certs, **extra: object) -> dict[str, object]:
    root = certs.ca.parent
    tls = {"cert": certs.server_cert.name, "key": certs.server_key.name, "ca": certs.ca.name, **extra}
    return {"tls": tls, "_root": root}


def client(certs: Certs, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    return client_context(str(certs.ca), str(cert) if cert else None, str(key) if key else None)


async def refused(port: int, tls: ssl.SSLContext | None) -> bool:
    """True when no ACK comes back: the handshake fails, or the server closes the connection."""
    try:
        c = await Client.connect(port, tls)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    try:
        await c.write(b"\x0b" + orm("TLS00000") + b"\x1c\r")
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    try:
        return await c.closed()
    finally:
        await c.close()


async def test_mutual_tls_accepted(certs: Certs) -> None:
    rec = Recorder()
    opts = tls_options(certs)
    async with running_source(rec, root=opts.pop("_root"), **opts) as source:  # type: ignore[arg-type]
        c = await Client.connect(source.port, client(certs, certs.client_cert, certs.client_key))
        assert msa(await c.send(orm("TLS00001"))) == ("AA", "TLS00001")
        assert c.writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        await c.close()
    assert rec.inbounds[0].peer.startswith("127.0.0.1:")
    assert rec.audits == []


async def test_description_names_tls(certs: Certs) -> None:
    rec = Recorder()
    from engine.connectors.mllp import MllpSource

    opts = tls_options(certs, min_version="1.3")
    root = opts.pop("_root")
    source = MllpSource(MllpSource.Config.model_validate({"host": "127.0.0.1", "port": 0, **opts}), context(rec, root))
    described = await source.start(rec.sink)
    await source.stop()
    assert described == [f"mllp://127.0.0.1:{source.port} (tls 1.3+, client certificates)"]


@pytest.mark.parametrize("who", ["no certificate", "stranger"])
async def test_clients_without_a_trusted_certificate_are_refused(certs: Certs, who: str) -> None:
    rec = Recorder()
    opts = tls_options(certs)
    tls = client(certs) if who == "no certificate" else client(certs, certs.stranger_cert, certs.stranger_key)
    async with running_source(rec, root=opts.pop("_root"), **opts) as source:  # type: ignore[arg-type]
        assert await refused(source.port, tls)
        fields = await rec.wait_audit("connection.refused")
    expected = "PEER_DID_NOT_RETURN_A_CERTIFICATE" if who == "no certificate" else "CERTIFICATE_VERIFY_FAILED"
    assert fields["outcome"] == "denied" and fields["detail"]["reason"] == f"TLS handshake failed ({expected})"
    assert rec.inbounds == []


async def test_tls_1_1_client_is_refused(certs: Certs) -> None:
    rec = Recorder()
    opts = tls_options(certs)
    old = tls_1_1_client(certs)
    async with running_source(rec, root=opts.pop("_root"), **opts) as source:  # type: ignore[arg-type]
        assert await refused(source.port, old)
        fields = await rec.wait_audit("connection.refused")
    assert "TLS handshake failed (UNSUPPORTED_PROTOCOL)" in fields["detail"]["reason"]
    assert rec.inbounds == []


async def test_tls_1_3_floor_refuses_a_1_2_client(certs: Certs) -> None:
    rec = Recorder()
    opts = tls_options(certs, min_version="1.3")
    tls = client(certs, certs.client_cert, certs.client_key)
    tls.maximum_version = ssl.TLSVersion.TLSv1_2
    async with running_source(rec, root=opts.pop("_root"), **opts) as source:  # type: ignore[arg-type]
        assert await refused(source.port, tls)
        await rec.wait_audit("connection.refused")


async def test_plain_tcp_to_a_tls_port_is_refused(certs: Certs) -> None:
    rec = Recorder()
    opts = tls_options(certs)
    async with running_source(rec, root=opts.pop("_root"), **opts) as source:  # type: ignore[arg-type]
        assert await refused(source.port, None)
        fields = await rec.wait_audit("connection.refused")
    assert "TLS handshake failed" in fields["detail"]["reason"]
    assert rec.inbounds == []


async def test_allow_list_by_certificate_name(certs: Certs) -> None:
    rec = Recorder()
    tls = client(certs, certs.client_cert, certs.client_key)
    opts = tls_options(certs)
    root = opts.pop("_root")
    async with running_source(rec, root=root, allow=["ris.example.test"], **opts) as source:  # type: ignore[arg-type]
        c = await Client.connect(source.port, tls)
        assert msa(await c.send(orm("CN000001"))) == ("AA", "CN000001")
        await c.close()
    async with running_source(rec, root=root, allow=["127.0.0.1", "pacs.example.test"], **opts) as source:  # type: ignore[arg-type]
        assert await refused(source.port, tls)
        fields = await rec.wait_audit("connection.refused")
    assert fields["actor"] == "peer:ris.example.test"
    assert fields["detail"]["reason"] == "certificate name not allowed"


async def test_handshake_timeout(certs: Certs) -> None:
    rec = Recorder()
    opts = tls_options(certs)
    async with running_source(rec, root=opts.pop("_root"), read_timeout_s=0.2, **opts) as source:  # type: ignore[arg-type]
        c = await Client.connect(source.port)  # plain TCP that never says hello
        assert await c.closed(timeout=3)
        await c.close()
        await rec.wait_audit("connection.refused")


async def test_destination_and_send_messages_over_tls(certs: Certs) -> None:
    rec = Recorder()
    opts = tls_options(certs)
    root = opts.pop("_root")
    async with running_source(rec, root=root, **opts) as source:  # type: ignore[arg-type]
        config = MllpDestination.Config.model_validate(
            {
                "host": "127.0.0.1",
                "port": source.port,
                "tls": {"ca": certs.ca.name, "cert": certs.client_cert.name, "key": certs.client_key.name},
            }
        )
        dest = MllpDestination(config, context(rec, root))
        delivered = await dest.send(Outbound("m1", "ris", orm("DST00001"), "hl7v2"))
        assert delivered.detail == "AA"
        await dest.close()
        results = await asyncio.wait_for(
            send_messages(
                [orm("CLI00001"), orm("CLI00002")], "127.0.0.1", source.port,
                tls=client(certs, certs.client_cert, certs.client_key), timeout_s=WAIT,
            ),
            WAIT,
        )  # fmt: skip
    assert [(r.control_id, r.code) for r in results] == [("CLI00001", "AA"), ("CLI00002", "AA")]


async def test_destination_refuses_an_untrusted_server(certs: Certs, tmp_path: Path) -> None:
    from engine.core.errors import RetryableError

    other = make_certs(tmp_path / "other")  # a different CA
    rec = Recorder()
    opts = tls_options(certs)
    async with running_source(rec, root=opts.pop("_root"), **opts) as source:  # type: ignore[arg-type]
        config = MllpDestination.Config.model_validate(
            {"host": "127.0.0.1", "port": source.port, "tls": {"ca": str(other.ca)}}
        )
        dest = MllpDestination(config, context(rec))
        with pytest.raises(RetryableError, match="TLS"):
            await dest.send(Outbound("m1", "ris", orm("DST00002"), "hl7v2"))
