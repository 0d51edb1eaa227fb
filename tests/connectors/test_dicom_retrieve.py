"""The dicom-retrieve destination against a real Orthanc on 127.0.0.1: C-MOVE to a storage SCP of
ours, C-GET and WADO-RS published on a topic byte for byte, skip_if_held, unknown studies, PACS
down, refused, silent or over TLS, and every bad message or config."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from engine.connectors.dicom import retrieve
from engine.connectors.dicom.retrieve import RetrieveDestination, split_multipart
from engine.core.component import ComponentContext, Delivered, Inbound, Outbound, Outcome
from engine.core.errors import ConfigError, PermanentError, RetryableError
from engine.dicom import InstanceHeader, read_header
from tests import phi
from tests.orthanc import PASSWORD, USER, Orthanc, free_port, have_dicomweb, make_study, running_orthanc, tls_proxy
from tests.tlscerts import Certs, make_certs

WAIT = 10.0
CT = str(CTImageStorage)
SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


def dataset_bytes(raw: bytes) -> bytes:
    """A Part 10 file without its preamble and file meta (which DIMSE never carries)."""
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"
    (group_length,) = struct.unpack_from("<I", raw, 140)
    return raw[144 + group_length :]


def _nodelay(event: evt.Event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class StoreScp:
    """A pynetdicom storage SCP (AE RBSTORE): what Orthanc C-MOVEs to; keeps what it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: dict[str, tuple[str, bytes]] = {}  # SOP instance UID -> (transfer syntax, dataset bytes)
        ae = AE(ae_title="RBSTORE")
        ae.require_called_aet = True  # a wrong called AE title is rejected (A-ASSOCIATE-RJ)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_CONN_OPEN, _nodelay)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _store(self, event: evt.Event) -> int:
        syntax = str(event.context.transfer_syntax)
        self.received[str(event.request.AffectedSOPInstanceUID)] = (syntax, event.request.DataSet.getvalue())
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


class Topics:
    """A stand-in for the engine's topics: records each publish, answers with chosen outcomes."""

    def __init__(self, answer: Callable[[Inbound], list[Outcome]] | None = None) -> None:
        self.published: list[tuple[str, Inbound]] = []
        self.answer = answer or (lambda _i: [Outcome("accepted", "m1")])

    def subscribe(self, pattern: str, sink: Any) -> None:
        raise AssertionError("not used")

    async def publish(self, topic: str, inbound: Inbound) -> list[Outcome]:
        self.published.append((topic, inbound))
        return self.answer(inbound)

    def inbounds(self) -> list[Inbound]:
        return [i for _, i in self.published]


class Audits:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, action: str, **fields: Any) -> None:
        self.entries.append((action, fields))


class Study:
    def __init__(self, uid: str, files: dict[str, bytes]) -> None:
        self.uid, self.files = uid, files  # SOP instance UID -> Orthanc's /instances/{id}/file


@pytest.fixture(scope="module")
def scp() -> Iterator[StoreScp]:
    server = StoreScp()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, scp: StoreScp) -> Iterator[Orthanc]:
    # Orthanc serves C-GET/C-MOVE only to AEs it knows: RADBRIDGE is us, RBSTORE our storage SCP
    modalities = {"radbridge": ["RADBRIDGE", "127.0.0.1", scp.port], "rbstore": ["RBSTORE", "127.0.0.1", scp.port]}
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), modalities=modalities) as server:
        yield server


@pytest.fixture(scope="module")
def study(orthanc: Orthanc) -> Study:
    uid, instances = make_study(3, transfer_syntaxes=SYNTAXES)
    study_id = orthanc.upload_study(instances)
    raws = map(orthanc.instance_file, orthanc.study_instances(study_id))
    files = {read_header(raw).sop_instance_uid: raw for raw in raws}
    return Study(uid, files)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("dicom-tls"))


def destination(
    options: dict[str, Any], *, topics: Topics | None = None, held: Callable[[str], int] | None = None,
    audit: Audits | None = None, root: Path = Path("/"),
) -> RetrieveDestination:  # fmt: skip
    base = {"connect_timeout_s": 3, "dimse_timeout_s": 5, "timeout_s": WAIT}
    cfg = RetrieveDestination.Config.model_validate(base | options)
    ctx = ComponentContext(channel="imaging", root=root, audit=audit or Audits(), site_tz=UTC, topics=topics,
                           held_instances=held)  # fmt: skip
    return RetrieveDestination(cfg, ctx)


def dimse(orthanc: Orthanc, method: str, **extra: Any) -> dict[str, Any]:
    base = {"method": method, "host": "127.0.0.1", "port": orthanc.dicom_port, "called_ae": orthanc.aet}
    if method == "c-move":
        return base | {"move_destination": "RBSTORE"} | extra
    return base | {"into": "dicom.retrieved"} | extra


def wado(orthanc: Orthanc, **extra: Any) -> dict[str, Any]:
    if not have_dicomweb():
        pytest.skip("Orthanc's DICOMweb plugin (orthanc-dicomweb) is not installed: make peers")
    auth = {"username": USER, "password": PASSWORD}
    base = f"{orthanc.base_url}/dicom-web"
    return {"method": "wado-rs", "base_url": base, "auth": auth, "into": "dicom.retrieved"} | extra


def message(body: dict[str, Any] | bytes, message_id: str = "m-0001") -> Outbound:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Outbound(message_id=message_id, destination="retrieve", body=raw, kind="json")


async def send(dest: RetrieveDestination, msg: Outbound) -> Delivered:
    try:
        return await asyncio.wait_for(dest.send(msg), WAIT * 2)
    finally:
        await dest.close()


def assert_published_as_stored(topics: Topics, study: Study, orthanc: Orthanc, *, whole_file: bool) -> None:
    inbounds = topics.inbounds()
    assert {t for t, _ in topics.published} == {"dicom.retrieved"}
    assert sorted(i.dedup for i in inbounds) == sorted(study.files)  # type: ignore[type-var]
    for inbound in inbounds:
        header = inbound.decoded
        assert isinstance(header, InstanceHeader) and header.study_uid == study.uid
        assert inbound.kind == "dicom" and inbound.type == "CTImageStorage" and inbound.dedup == header.sop_instance_uid
        assert inbound.peer.startswith("127.0.0.1:")
        original = study.files[header.sop_instance_uid]
        assert header.transfer_syntax == read_header(original).transfer_syntax  # not transcoded
        if whole_file:
            assert inbound.raw == original
        else:  # DIMSE carries no file meta: ours names pynetdicom; the dataset is byte-identical
            assert dataset_bytes(inbound.raw) == dataset_bytes(original)


# --- retrieving --------------------------------------------------------------------------------


async def test_c_move_sends_every_instance_to_our_storage_scp(orthanc: Orthanc, study: Study, scp: StoreScp) -> None:
    scp.received.clear()
    result = await send(destination(dimse(orthanc, "c-move")), message({"study_uid": study.uid}))
    assert result.detail == "3 instances"
    assert sorted(scp.received) == sorted(study.files)
    for sop_uid, (syntax, data) in scp.received.items():
        original = study.files[sop_uid]
        assert syntax == read_header(original).transfer_syntax and data == dataset_bytes(original)


async def test_c_get_publishes_every_instance_as_stored(
    orthanc: Orthanc, study: Study, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO)
    nodelay: list[int] = []
    original = retrieve._on_open

    def spy(event: evt.Event, job: Any) -> None:
        original(event, job)
        nodelay.append(event.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(retrieve, "_on_open", spy)
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where pynetdicom would spool received datasets
    spooled: list[int] = []  # files in the spool while each instance is handed over (pynetdicom deletes them later)
    topics = Topics(lambda _i: spooled.append(len(list(spool.iterdir()))) or [Outcome("accepted", "m1")])
    notification = {"event": "study.stable", "study_uid": study.uid, "source": "orthanc-changes", "accessions": []}
    result = await send(destination(dimse(orthanc, "c-get", sop_classes=[CT]), topics=topics), message(notification))
    assert result.detail == "3 instances"
    assert_published_as_stored(topics, study, orthanc, whole_file=False)
    assert nodelay == [1] and spooled == [0, 0, 0]  # Nagle off; nothing written to disk
    assert study.uid not in caplog.text and not phi.leaks_in_bytes(caplog.text.encode())
    assert not any(uid in caplog.text for uid in study.files)


async def test_c_get_offering_every_storage_class(orthanc: Orthanc, study: Study) -> None:
    # 120 storage classes leave one presentation context each: the PACS picks one syntax per class
    # and transcodes the rest, so only identity and content are checked here
    topics = Topics()
    result = await send(destination(dimse(orthanc, "c-get"), topics=topics), message({"study_uid": study.uid}))
    assert result.detail == "3 instances"
    assert sorted(i.dedup for i in topics.inbounds()) == sorted(study.files)  # type: ignore[type-var]
    assert all(isinstance(i.decoded, InstanceHeader) for i in topics.inbounds())


async def test_wado_rs_publishes_every_instance_byte_identical(
    orthanc: Orthanc, study: Study, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    topics = Topics()
    result = await send(destination(wado(orthanc), topics=topics), message({"study_uid": study.uid}))
    assert result.detail == "3 instances"
    assert_published_as_stored(topics, study, orthanc, whole_file=True)
    assert study.uid not in caplog.text and PASSWORD not in caplog.text  # httpx would log the URL at INFO


async def test_wado_rs_bearer_token(tmp_path: Path, study: Study) -> None:
    token = "wado-token-0123456789"
    lua = f"function IncomingHttpRequestFilter(m, u, ip, user, h) return h['authorization'] == 'Bearer {token}' end"
    with running_orthanc(tmp_path / "bearer", authentication=False, lua=[lua]) as server:
        raw = next(iter(study.files.values()))
        import httpx

        headers = {"Authorization": f"Bearer {token}"}
        httpx.post(f"{server.base_url}/instances", content=raw, headers=headers).raise_for_status()
        topics = Topics()
        dest = destination(wado(server, auth={"bearer": token}), topics=topics)
        assert (await send(dest, message({"study_uid": study.uid}))).detail == "1 instances"
        audits = Audits()
        with pytest.raises(RetryableError, match="HTTP 403"):
            await send(destination(wado(server, auth={"bearer": "wrong-token-000"}), topics=topics, audit=audits),
                       message({"study_uid": study.uid}))  # fmt: skip
        assert [a for a, _ in audits.entries] == ["pacs.unauthorized"]


@pytest.mark.parametrize("method", ["c-move", "c-get", "wado-rs"])
async def test_skip_if_held(orthanc: Orthanc, study: Study, scp: StoreScp, method: str) -> None:
    asked: list[str] = []

    def held(uid: str) -> int:
        asked.append(uid)
        return 3

    options = wado(orthanc) if method == "wado-rs" else dimse(orthanc, method)
    topics = Topics()
    scp.received.clear()
    result = await send(destination(options, topics=topics, held=held), message({"study_uid": study.uid}))
    assert result == Delivered(detail="already held") and asked == [study.uid]
    assert topics.published == [] and scp.received == {}
    # skip_if_held: false retrieves all the same
    dest = destination(options | {"skip_if_held": False}, topics=topics, held=held)
    result = await send(dest, message({"study_uid": study.uid}))
    assert result.detail == "3 instances" and asked == [study.uid]


async def test_held_none_retrieves(orthanc: Orthanc, study: Study) -> None:
    topics = Topics()
    dest = destination(dimse(orthanc, "c-get", sop_classes=[CT]), topics=topics, held=lambda _uid: 0)
    assert (await send(dest, message({"study_uid": study.uid}))).detail == "3 instances"


async def test_held_count_failing_is_retried(orthanc: Orthanc, study: Study) -> None:
    def broken(_uid: str) -> int:
        raise OSError("database is locked")

    dest = destination(dimse(orthanc, "c-get", sop_classes=[CT]), topics=Topics(), held=broken)
    with pytest.raises(RetryableError, match="cannot count held instances"):
        await send(dest, message({"study_uid": study.uid}))


async def test_wado_rs_over_https(orthanc: Orthanc, study: Study, certs: Certs) -> None:
    wado(orthanc)  # skips without the plugin
    async with tls_proxy(orthanc.http_port, certs.server_cert, certs.server_key) as port:
        base = f"https://127.0.0.1:{port}/dicom-web"
        topics = Topics()
        dest = destination(wado(orthanc, base_url=base, tls={"ca": certs.ca.name}), topics=topics, root=certs.ca.parent)
        assert (await send(dest, message({"study_uid": study.uid}))).detail == "3 instances"
        assert_published_as_stored(topics, study, orthanc, whole_file=True)
        with pytest.raises(RetryableError, match="ConnectError"):  # the system store does not trust our test CA
            await send(destination(wado(orthanc, base_url=base), topics=Topics()), message({"study_uid": study.uid}))


@pytest.mark.parametrize("method", ["c-move", "c-get", "wado-rs"])
async def test_unknown_study_is_retried(orthanc: Orthanc, method: str) -> None:
    options = wado(orthanc) if method == "wado-rs" else dimse(orthanc, method)
    topics = Topics()
    with pytest.raises(RetryableError, match="may not hold") as info:
        await send(destination(options, topics=topics), message({"study_uid": "1.2.826.0.1.3680043.2.1143.999"}))
    assert "1.2.826.0.1.3680043.2.1143.999" not in str(info.value) and topics.published == []


@pytest.mark.parametrize("method", ["c-move", "c-get", "wado-rs"])
async def test_pacs_down_is_retried(method: str) -> None:
    port = free_port()  # nothing listens there
    if method == "wado-rs":
        options = {"method": method, "base_url": f"http://127.0.0.1:{port}/dicom-web", "into": "x"}
    else:
        options = {"method": method, "host": "127.0.0.1", "port": port, "called_ae": "PACS", "move_destination": "RB",
                   "into": "x"}  # fmt: skip
        if method == "c-get":
            options.pop("move_destination")
    started = time.monotonic()
    with pytest.raises(RetryableError, match="cannot connect|ConnectError"):
        await send(destination(options, topics=Topics()), message({"study_uid": "1.2.3"}))
    assert time.monotonic() - started < 3


async def test_unknown_move_destination(orthanc: Orthanc, study: Study) -> None:
    # Orthanc answers 0xC000 (retried, with a hint); a PACS answering 0xA801 gets the message dead-lettered
    with pytest.raises(RetryableError, match="0xC000.*move_destination"):
        await send(destination(dimse(orthanc, "c-move", move_destination="NOBODY")), message({"study_uid": study.uid}))

    def unknown(event: evt.Event) -> Iterator[Any]:
        yield None, None  # pynetdicom answers 0xA801 (move destination unknown)

    ae = AE(ae_title="MOVESCP")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_MOVE, unknown)])
    try:
        options = {"method": "c-move", "host": "127.0.0.1", "port": port, "called_ae": "MOVESCP",
                   "move_destination": "NOBODY"}  # fmt: skip
        with pytest.raises(PermanentError, match="0xA801"):
            await send(destination(options), message({"study_uid": study.uid}))
    finally:
        server.shutdown()


async def test_association_rejected_is_retried_and_audited(scp: StoreScp) -> None:
    audits = Audits()
    options = {"method": "c-get", "host": "127.0.0.1", "port": scp.port, "called_ae": "WRONGAE", "into": "x"}
    with pytest.raises(RetryableError, match="association rejected"):
        await send(destination(options, topics=Topics(), audit=audits), message({"study_uid": "1.2.3"}))
    [(action, fields)] = audits.entries
    assert action == "pacs.rejected" and fields["outcome"] == "denied" and fields["peer"] == f"127.0.0.1:{scp.port}"


@pytest.mark.parametrize(
    "method, words", [("c-get", "did not accept Study Root"), ("c-move", "aborted while negotiating")]
)  # c-move proposes only its model: pynetdicom aborts an association with no context it accepts
async def test_a_peer_without_query_retrieve_is_retried(scp: StoreScp, method: str, words: str) -> None:
    options = {"method": method, "host": "127.0.0.1", "port": scp.port, "called_ae": "RBSTORE", "into": "x",
               "move_destination": "RB"}  # fmt: skip
    with pytest.raises(RetryableError, match=words):
        await send(destination(options, topics=Topics()), message({"study_uid": "1.2.3"}))


async def test_a_pacs_that_never_answers_is_bounded() -> None:
    release = threading.Event()

    def never(event: evt.Event) -> Iterator[Any]:
        release.wait(WAIT)
        yield 0xC000, None

    ae = AE(ae_title="SILENT")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, never)])
    try:
        options = {"method": "c-get", "host": "127.0.0.1", "port": port, "called_ae": "SILENT", "into": "x",
                   "dimse_timeout_s": 0.5}  # fmt: skip
        started = time.monotonic()
        with pytest.raises(RetryableError, match="no valid response"):
            await send(destination(options, topics=Topics()), message({"study_uid": "1.2.3"}))
        assert time.monotonic() - started < 3
        options |= {"dimse_timeout_s": 5, "timeout_s": 0.5}  # the whole retrieval's own bound
        started = time.monotonic()
        with pytest.raises(RetryableError, match="not done within 0.5 s"):
            await send(destination(options, topics=Topics()), message({"study_uid": "1.2.3"}))
        assert time.monotonic() - started < 3
    finally:
        release.set()
        server.shutdown()


@pytest.mark.parametrize("method", ["c-get", "wado-rs"])
@pytest.mark.parametrize("answer", [[Outcome("unavailable")], [], [Outcome("accepted"), Outcome("unavailable")]])
async def test_instances_the_engine_cannot_store_are_retried(
    orthanc: Orthanc, study: Study, method: str, answer: list[Outcome]
) -> None:
    options = wado(orthanc) if method == "wado-rs" else dimse(orthanc, method, sop_classes=[CT])
    with pytest.raises(RetryableError, match="could not store"):
        await send(destination(options, topics=Topics(lambda _i: answer)), message({"study_uid": study.uid}))


async def test_c_get_needs_the_engine_topics(orthanc: Orthanc, study: Study) -> None:
    with pytest.raises(PermanentError, match="needs the engine's topics"):
        await send(destination(dimse(orthanc, "c-get")), message({"study_uid": study.uid}))


async def test_c_get_over_tls(tmp_path: Path, certs: Certs, study: Study) -> None:
    tls = {"DicomTlsEnabled": True, "DicomTlsCertificate": str(certs.server_cert),
           "DicomTlsPrivateKey": str(certs.server_key), "DicomTlsTrustedCertificates": str(certs.ca),
           "DicomTlsRemoteCertificateRequired": True}  # fmt: skip
    modalities = {"radbridge": ["RADBRIDGE", "127.0.0.1", 104]}
    with running_orthanc(tmp_path / "tls", modalities=modalities, extra=tls) as server:
        await asyncio.to_thread(server.upload_study, list(study.files.values()))
        ours = {"ca": certs.ca.name, "cert": certs.client_cert.name, "key": certs.client_key.name}
        topics = Topics()
        options = dimse(server, "c-get", sop_classes=[CT], tls=ours)
        dest = destination(options, topics=topics, root=certs.ca.parent)
        assert (await send(dest, message({"study_uid": study.uid}))).detail == "3 instances"
        assert sorted(i.dedup for i in topics.inbounds()) == sorted(study.files)  # type: ignore[type-var]
        for refused in ({"ca": certs.ca.name}, {}, None):  # no client certificate / server not trusted / plain DICOM
            with pytest.raises(RetryableError, match="aborted|cannot connect"):
                await send(destination(dimse(server, "c-get", tls=refused), topics=Topics(), root=certs.ca.parent),
                           message({"study_uid": study.uid}))  # fmt: skip


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"not json", b"\xff\xfe", b"[1, 2]", b'{"uid": "1.2.3"}', b'{"study_uid": 123}', b'{"study_uid": "1.2.abc"}',
     b'{"study_uid": "../../system"}', b'{"study_uid": ""}', json.dumps({"study_uid": "1." * 40 + "1"}).encode()],
)  # fmt: skip
async def test_messages_without_a_valid_study_uid_are_permanent(body: bytes) -> None:
    options = {"method": "c-get", "host": "127.0.0.1", "port": 1, "called_ae": "PACS", "into": "x"}
    dest = destination(options, topics=Topics())
    with pytest.raises(PermanentError, match="m-0001") as info:
        await send(dest, message(body))
    assert "abc" not in str(info.value) and "system" not in str(info.value)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"method": "c-move", "host": "h", "port": 104, "called_ae": "PACS"}, "move_destination"),
        ({"method": "c-get", "host": "h", "port": 104, "called_ae": "PACS"}, "into"),
        ({"method": "c-get", "port": 104, "called_ae": "PACS", "into": "x"}, "host"),
        ({"method": "wado-rs", "into": "x"}, "base_url"),
        ({"method": "wado-rs", "base_url": "ftp://pacs/dicom-web", "into": "x"}, "http:// or https://"),
        ({"method": "wado-rs", "base_url": "http://u:p@pacs/dicom-web", "into": "x"}, "no credentials"),
        ({"method": "c-get", "host": "h", "port": 104, "called_ae": "A" * 17, "into": "x"}, "called_ae"),
        ({"method": "c-get", "host": "h", "port": 104, "called_ae": "A\\B", "into": "x"}, "called_ae"),
        ({"method": "c-get", "host": "h", "port": 104, "called_ae": "P", "into": "x", "sop_classes": ["CT"]}, "UIDs"),
        ({"method": "c-get", "host": "h", "port": 104, "called_ae": "P", "into": "Bad Topic"}, "into"),
        ({"method": "c-get", "host": "h", "port": 1, "called_ae": "P", "into": "x", "tls": {"cert": "c"}}, "together"),
        ({"method": "wado-rs", "base_url": "http://p", "into": "x", "auth": {"username": "u"}}, "together"),
        ({"method": "wado-rs", "base_url": "http://p", "into": "x", "auth": {}}, "either"),
        ({"method": "wado-rs", "base_url": "http://p", "into": "x", "transfer_syntax": "jpeg"}, "transfer_syntax"),
        ({"method": "wado-rs", "base_url": "http://p", "into": "x", "tls": {"ca": "ca.pem"}}, "not https"),
        ({"method": "c-find", "host": "h", "port": 104, "called_ae": "P"}, "method"),
        ({"method": "c-move", "host": "h", "port": 1, "called_ae": "P", "move_destination": "R", "prot": 1}, "Extra"),
    ],
)
def test_bad_configs_are_refused(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as info:
        RetrieveDestination.Config.model_validate(options)
    assert words in str(info.value)


def test_unusable_tls_files_fail_the_build(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="unusable TLS files"):
        options = {"method": "c-get", "host": "h", "port": 104, "called_ae": "P", "into": "x", "tls": {"ca": "ca.pem"}}
        destination(options, root=tmp_path)


def test_split_multipart_keeps_bytes_and_skips_other_parts() -> None:
    binary = bytes(range(256)) + b"\r\n--not-the-boundary\r\n\n\r" + bytes(range(255, -1, -1))
    body = (
        b"--XYZ\r\nContent-Type: application/dicom\r\n\r\n" + binary + b"\r\n"
        b"--XYZ\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--XYZ\r\nContent-Type: application/dicom\r\n\r\n\r\n\r\n"
        b"--XYZ--\r\n"
    )
    parts = split_multipart('multipart/related; type="application/dicom"; boundary=XYZ', body)
    assert parts == [binary, b"\r\n"]
    with pytest.raises(ValueError):
        split_multipart("application/dicom", body)
    with pytest.raises(ValueError):
        split_multipart("multipart/related; boundary=XYZ", b"no boundary anywhere")


async def test_wado_rs_answer_over_max_bytes_is_permanent(orthanc: Orthanc, study: Study) -> None:
    with pytest.raises(PermanentError, match="max_bytes"):
        await send(destination(wado(orthanc, max_bytes=2048), topics=Topics()), message({"study_uid": study.uid}))


def test_registered() -> None:
    from engine.core import registry

    assert registry.get("destination", "dicom-retrieve").cls is RetrieveDestination  # type: ignore[union-attr]
