"""The DICOM listener through real associations on 127.0.0.1 (dcmtk storescu/echoscu, pynetdicom).

Also holds the helpers the other DICOM connector tests share (no test here is imported by them).
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE

from engine.connectors.dicom import DicomDestination, DicomSource
from engine.connectors.dicom.wire import dataset_problem
from engine.core.component import ComponentContext, Inbound, Outbound, Outcome
from engine.core.errors import ConfigError, PermanentError, RetryableError
from engine.dicom import DicomHeaderError
from engine.runtime.topics import TopicBus
from tests import phi
from tests.connectors.fakes import Recorder
from tests.connectors.fakes import context as fake_context
from tests.dicomdata import (
    COMPRESSED,
    KB,
    LATIN1_NAME,
    PATIENT_NAME,
    UTF8_NAME,
    dataset_part,
    make_instance,
    part10_bytes,
    write_instance,
    write_study,
    write_truncated,
)

WAIT = 10.0  # upper bound of any single wait in these tests
TOOLS_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise


# --- helpers shared by the DICOM connector tests ------------------------------------------------



def context(rec: Recorder, root: Path = Path("/"), **extra: Any) -> ComponentContext:
    return fake_context(rec, root, channel="pacs", **extra)


@asynccontextmanager
async def running(rec: Recorder, root: Path = Path("/"), ctx: ComponentContext | None = None,
                  **options: Any) -> AsyncIterator[DicomSource]:  # fmt: skip
    config = DicomSource.Config.model_validate({"host": "127.0.0.1", "port": 0, **options})
    source = DicomSource(config, ctx or context(rec, root))
    await source.start(rec.sink)
    try:
        yield source
    finally:
        await asyncio.wait_for(source.stop(), WAIT * 2)


async def tool(*args: str | Path, timeout: float = WAIT) -> tuple[int, str]:
    """Run a dcmtk tool (TCP_NODELAY=1); its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=TOOLS_ENV
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def destination(port: int, root: Path = Path("/"), rec: Recorder | None = None, **options: Any) -> DicomDestination:
    config = DicomDestination.Config.model_validate(
        {"host": "127.0.0.1", "port": port, "called_ae": "RADBRIDGE", "calling_ae": "MODALITY", **options}
    )
    return DicomDestination(config, context(rec or Recorder(), root))


def outbound(body: bytes, message_id: str = "m1") -> Outbound:
    return Outbound(message_id, "pacs", body, "dicom")


@pytest.fixture(autouse=True)
def no_phi_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every log line of every test here (pynetdicom's included, at DEBUG) is free of the fake PHI."""
    caplog.set_level("DEBUG")
    yield
    assert phi.leaks_in_bytes(caplog.text.encode()) == []


# --- storage ------------------------------------------------------------------------------------


async def test_storescu_study_arrives_byte_identical(tmp_path: Path) -> None:
    rec = Recorder()
    study = write_study(tmp_path, 4, pixel_bytes=512 * KB)
    async with running(rec) as source:
        code, out = await tool("storescu", "-aet", "CT01", "-aec", "RADBRIDGE", "127.0.0.1", source.port, *study.paths)
    assert code == 0, out
    assert len(rec.inbounds) == 4
    for inbound, path, uid in zip(rec.inbounds, study.paths, study.sop_instance_uids, strict=True):
        assert dataset_part(inbound.raw) == dataset_part(path.read_bytes())
        header = inbound.decoded
        assert (header.study_uid, header.series_uid) == (study.study_uid, study.series_uid)
        assert header.sop_instance_uid == uid
        assert (header.patient_name, header.patient_id, header.birth_date) == (PATIENT_NAME, phi.MRN, phi.DOB)
        assert (header.accession, header.sex, header.modality) == (phi.ACCESSION, "F", "CT")
        assert (inbound.kind, inbound.dedup, inbound.type) == ("dicom", uid, "CTImageStorage")
        assert inbound.peer.startswith("127.0.0.1:")
        meta = dcmread(io.BytesIO(inbound.raw), stop_before_pixels=True).file_meta
        assert meta.SourceApplicationEntityTitle == "CT01"
    assert rec.audits == []


@pytest.mark.parametrize("charset, name", [("ISO_IR 100", LATIN1_NAME), ("ISO_IR 192", UTF8_NAME)])
async def test_non_ascii_names_decoded_per_specific_character_set(tmp_path: Path, charset: str, name: str) -> None:
    rec = Recorder()
    path = write_instance(tmp_path, make_instance(charset=charset, pixel_bytes=4 * KB))
    async with running(rec) as source:
        code, out = await tool("storescu", "-aec", "RADBRIDGE", "127.0.0.1", source.port, path)
    assert code == 0, out
    (inbound,) = rec.inbounds
    assert inbound.decoded.patient_name == name
    assert inbound.decoded.charset == (charset,)
    encoded = name.encode("latin-1" if charset == "ISO_IR 100" else "utf-8")
    assert encoded in inbound.raw  # kept in its own character set, never re-encoded


async def test_echoscu() -> None:
    rec = Recorder()
    async with running(rec) as source:
        code, out = await tool("echoscu", "-aec", "RADBRIDGE", "127.0.0.1", source.port)
    assert code == 0, out


async def test_echo_not_served_when_not_configured() -> None:
    rec = Recorder()
    async with running(rec, services=["storage"]) as source:
        code, _ = await tool("echoscu", "-aec", "RADBRIDGE", "127.0.0.1", source.port)
    assert code != 0


@pytest.mark.parametrize("codec, option", [("jpeg", "-xy"), ("j2k", "-xv"), ("rle", "-xr")])
async def test_compressed_instances_accepted_as_is(tmp_path: Path, codec: str, option: str) -> None:
    rec = Recorder()
    ds = make_instance(transfer_syntax=COMPRESSED[codec], pixel_bytes=64 * KB)
    path = write_instance(tmp_path, ds)
    async with running(rec) as source:
        code, out = await tool("storescu", "-R", option, "-aec", "RADBRIDGE", "127.0.0.1", source.port, path)
    assert code == 0, out
    (inbound,) = rec.inbounds
    assert inbound.decoded.transfer_syntax == COMPRESSED[codec]
    assert dataset_part(inbound.raw) == dataset_part(path.read_bytes())


async def test_truncated_dataset_fails_audited_and_never_reaches_the_sink(tmp_path: Path) -> None:
    rec = Recorder()
    truncated = write_truncated(tmp_path, pixel_bytes=64 * KB).read_bytes()
    async with running(rec) as source:
        dest = destination(source.port)
        with pytest.raises(PermanentError, match="C-STORE 0xC210"):
            await dest.send(outbound(truncated))
        fields = await rec.wait_audit("message.truncated")
        good = part10_bytes(make_instance(pixel_bytes=4 * KB))
        assert (await dest.send(outbound(good, "m2"))).detail == "C-STORE 0x0000"
        await dest.close()
    assert fields["detail"]["reason"] == "truncated dataset" and fields["actor"] == "ae:MODALITY"
    assert len(rec.inbounds) == 1  # only the good one


async def test_deflated_instance_accepted_as_is_and_truncated_one_refused() -> None:
    rec = Recorder()
    ds = make_instance(pixel_bytes=16 * KB, transfer_syntax=DeflatedExplicitVRLittleEndian, undefined_lengths=True)
    body = part10_bytes(ds)
    async with running(rec) as source:
        dest = destination(source.port)
        assert (await dest.send(outbound(body))).detail == "C-STORE 0x0000"
        with pytest.raises(PermanentError, match="C-STORE 0xC210"):
            await dest.send(outbound(body[:-40], "m2"))
        await dest.close()
    (inbound,) = rec.inbounds
    assert dataset_part(inbound.raw) == dataset_part(body)
    assert inbound.decoded.patient_name == PATIENT_NAME


_WHOLE = {
    "explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian, "big endian": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian, "jpeg": COMPRESSED["jpeg"],
}  # fmt: skip


@pytest.mark.parametrize("name", list(_WHOLE))
def test_dataset_structure_check(name: str) -> None:
    """Whole datasets pass; every cut (element header, value, sequence, item, fragment) is caught."""
    syntax = UID(_WHOLE[name])
    ds = make_instance(pixel_bytes=2 * KB, transfer_syntax=syntax, undefined_lengths=True)
    data = dataset_part(part10_bytes(ds))
    assert dataset_problem(data, syntax, 1 << 20) is None
    cuts = [4, 9, 100, len(data) // 2, len(data) - 300, len(data) - 10]
    if name != "deflated":  # a deflated dataset may end in a padding byte outside the deflate stream
        cuts.append(1)
    for cut in cuts:
        assert dataset_problem(data[:-cut], syntax, 1 << 20) == "truncated", cut


def test_dataset_structure_check_bad_inputs() -> None:
    explicit, deflated = UID(ExplicitVRLittleEndian), UID(DeflatedExplicitVRLittleEndian)
    stray_delimiter = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"  # an item delimiter outside any item
    assert dataset_problem(b"\x08\x00\x20\x00DA\x00\x00" + stray_delimiter, explicit, 1 << 20) == "malformed"
    undefined_sq = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"
    assert dataset_problem(undefined_sq + b"\x08\x00\x20\x00DA\x00\x00", explicit, 1 << 20) == "malformed"
    assert dataset_problem(undefined_sq, explicit, 1 << 20) == "truncated"
    assert dataset_problem(b"not deflate at all", deflated, 1 << 20) == "malformed"
    whole = dataset_part(part10_bytes(make_instance(pixel_bytes=64 * KB, transfer_syntax=deflated)))
    assert dataset_problem(whole, deflated, 1 << 20) is None
    assert dataset_problem(whole, deflated, 8 * KB) == "oversize"  # a deflate bomb stops at the cap


async def test_unreadable_header_goes_to_the_sink_as_an_error(tmp_path: Path) -> None:
    rec = Recorder(lambda i: Outcome("invalid", "m9") if isinstance(i.decoded, Exception) else Outcome("accepted"))
    body = part10_bytes(make_instance(pixel_bytes=4 * KB, omit=("StudyInstanceUID",)))
    async with running(rec) as source:
        dest = destination(source.port, on_failure="dead")
        with pytest.raises(PermanentError, match="C-STORE 0xC210"):
            await dest.send(outbound(body))
        await dest.close()
    (inbound,) = rec.inbounds
    assert isinstance(inbound.decoded, DicomHeaderError) and inbound.dedup is None
    assert dataset_part(inbound.raw) == dataset_part(body)


@pytest.mark.parametrize(
    "status, expected, error",
    [
        ("duplicate", "0x0000", None),
        ("filtered", "0x0000", None),
        ("refused", "0x0124", PermanentError),
        ("invalid", "0xC210", PermanentError),
        ("unavailable", "0xA700", RetryableError),
    ],
)
async def test_outcomes_map_to_c_store_statuses(status: str, expected: str, error: type[Exception] | None) -> None:
    rec = Recorder(Outcome(status, "m1"))  # type: ignore[arg-type]
    body = part10_bytes(make_instance(pixel_bytes=4 * KB))
    async with running(rec) as source:
        dest = destination(source.port)
        if error is None:
            assert (await dest.send(outbound(body))).detail == f"C-STORE {expected}"
        else:
            with pytest.raises(error, match=f"C-STORE {expected}"):
                await dest.send(outbound(body))
        await dest.close()


async def test_unavailable_makes_storescu_fail(tmp_path: Path) -> None:
    rec = Recorder(Outcome("unavailable"))
    path = write_instance(tmp_path, make_instance(pixel_bytes=4 * KB))
    async with running(rec) as source:
        code, out = await tool("storescu", "-v", "-aec", "RADBRIDGE", "127.0.0.1", source.port, path)
    assert code != 0 and "Received Store Response (Refused: OutOfResources)" in out, out


@pytest.mark.parametrize("failure", ["raises", "slow"])
async def test_sink_failure_or_timeout_is_out_of_resources(failure: str) -> None:
    def broken(inbound: Inbound) -> Outcome:
        raise RuntimeError("store down")

    rec = Recorder(broken if failure == "raises" else Outcome("accepted"))
    rec.delay = 2.0 if failure == "slow" else 0.0
    async with running(rec, sink_timeout_s=0.3) as source:
        dest = destination(source.port)
        with pytest.raises(RetryableError, match="C-STORE 0xA700"):
            await dest.send(outbound(part10_bytes(make_instance(pixel_bytes=4 * KB))))
        await dest.close()


async def test_instance_over_max_instance_bytes_aborts_and_is_audited(tmp_path: Path) -> None:
    rec = Recorder()
    big = write_instance(tmp_path, make_instance(pixel_bytes=512 * KB), "big.dcm")
    small = write_instance(tmp_path, make_instance(pixel_bytes=8 * KB), "small.dcm")
    async with running(rec, max_instance_bytes=64 * KB, max_pdu=16384) as source:
        code, out = await tool("storescu", "-aec", "RADBRIDGE", "127.0.0.1", source.port, big)
        fields = await rec.wait_audit("message.oversize")
        assert rec.inbounds == []
        code2, out2 = await tool("storescu", "-aec", "RADBRIDGE", "127.0.0.1", source.port, small)
    assert "Abort" in out or code != 0, out
    assert code2 == 0, out2
    assert len(rec.inbounds) == 1
    assert fields["detail"]["limit"] == 64 * KB and fields["actor"] == "ae:STORESCU"
    assert fields["detail"]["reason"] == f"instance over {64 * KB} bytes"


async def test_pdu_over_the_limit_is_refused_before_it_is_read() -> None:
    rec = Recorder()
    async with running(rec, max_pdu=16384, acse_timeout_s=1) as source:
        with socket.create_connection(("127.0.0.1", source.port), timeout=WAIT) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 64 << 20) + b"\x00" * 1024)  # says 64 MiB are coming
            reply = await asyncio.to_thread(sock.recv, 64)
            assert reply[:1] == b"\x07"  # A-ABORT
        fields = await rec.wait_audit("message.oversize")
    assert "over the limit" in fields["detail"]["reason"]


async def test_association_ending_mid_instance_is_audited() -> None:
    rec = Recorder()
    async with running(rec) as source:

        def half_an_instance() -> None:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
            assoc = ae.associate("127.0.0.1", source.port, ae_title="RADBRIDGE")
            assert assoc.is_established
            cx = assoc.accepted_contexts[0].context_id
            fragment = b"\x08\x00\x20\x00" + b"\x00" * 996  # a dataset fragment, not the last
            pdv = struct.pack(">LBB", len(fragment) + 2, cx, 0x00) + fragment
            assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv)
            assoc.abort()

        await asyncio.to_thread(half_an_instance)
        fields = await rec.wait_audit("message.truncated")
    assert fields["detail"]["reason"] == "association ended mid-instance" and fields["detail"]["bytes"] == 1000
    assert rec.inbounds == []


async def test_tcp_nodelay_on_accepted_sockets() -> None:
    rec = Recorder()
    async with running(rec) as source:

        def check() -> int:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context("1.2.840.10008.1.1")
            assoc = ae.associate("127.0.0.1", source.port, ae_title="RADBRIDGE")
            try:
                server = source._server
                assert server is not None
                (accepted,) = [a for a in server.active_associations if a.is_acceptor]
                return accepted.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            finally:
                assoc.release()

        assert await asyncio.to_thread(check) != 0


# --- who may associate --------------------------------------------------------------------------


async def test_unknown_calling_ae_is_rejected_and_audited() -> None:
    rec = Recorder()
    async with running(rec, allow=[{"ae_title": "CT01"}, {"ae_title": "MR01", "address": "10.0.0.0/8"}]) as source:
        ok, out = await tool("echoscu", "-aet", "CT01", "-aec", "RADBRIDGE", "127.0.0.1", source.port)
        assert ok == 0, out
        code, out = await tool("echoscu", "-aet", "MR01", "-aec", "RADBRIDGE", "127.0.0.1", source.port)
        fields = await rec.wait_audit("association.refused")
    assert code != 0 and "Calling AE Title Not Recognized" in out, out
    assert fields["actor"] == "ae:MR01" and fields["outcome"] == "denied"
    assert fields["detail"]["reason"] == "calling AE title not allowed"
    assert fields["peer"].startswith("127.0.0.1:")


async def test_wrong_called_ae_is_rejected_and_audited() -> None:
    rec = Recorder()
    async with running(rec) as source:
        code, out = await tool("echoscu", "-aet", "CT01", "-aec", "PACS", "127.0.0.1", source.port)
        fields = await rec.wait_audit("association.refused")
    assert code != 0 and "Called AE Title Not Recognized" in out, out
    assert fields["detail"] == {"channel": "pacs", "association": 1, "reason": "called AE title not recognised",
                                "called_ae": "PACS"}  # fmt: skip
    async with running(rec, check_called_ae=False) as source:
        code, out = await tool("echoscu", "-aec", "PACS", "127.0.0.1", source.port)
    assert code == 0, out


async def test_address_not_allowed_is_closed_at_once_and_audited() -> None:
    rec = Recorder()
    async with running(rec, allow=[{"address": "10.0.0.0/8"}]) as source:
        code, out = await tool("echoscu", "-aec", "RADBRIDGE", "127.0.0.1", source.port)
        fields = await rec.wait_audit("association.refused")
    assert code != 0, out
    assert fields["actor"] == "peer:127.0.0.1" and fields["detail"]["reason"] == "address not allowed"


async def test_too_many_associations_are_rejected_transiently() -> None:
    rec = Recorder()
    async with running(rec, max_associations=1) as source:

        def hold() -> Any:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context("1.2.840.10008.1.1")
            return ae.associate("127.0.0.1", source.port, ae_title="RADBRIDGE")

        first = await asyncio.to_thread(hold)
        try:
            assert first.is_established
            code, out = await tool("echoscu", "-aec", "RADBRIDGE", "127.0.0.1", source.port)
            fields = await rec.wait_audit("association.refused")
        finally:
            await asyncio.to_thread(first.release)
    assert code != 0 and "Local Limit Exceeded" in out, out
    assert fields["detail"]["reason"] == "too many associations"


async def test_stop_aborts_idle_associations_quickly() -> None:
    rec = Recorder()
    config = DicomSource.Config.model_validate({"host": "127.0.0.1", "port": 0})
    source = DicomSource(config, context(rec))
    await source.start(rec.sink)

    def hold() -> Any:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.1.1")
        return ae.associate("127.0.0.1", source.port, ae_title="RADBRIDGE")

    assoc = await asyncio.to_thread(hold)
    assert assoc.is_established and source.associations == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(source.stop(), WAIT)
    assert loop.time() - started < 3
    await asyncio.to_thread(assoc.join, WAIT)
    assert assoc.is_aborted


# --- the topic a retrieval publishes to, and configuration --------------------------------------


async def test_topic_instances_reach_the_sink_until_stop() -> None:
    rec = Recorder()
    bus = TopicBus()
    inbound = Inbound(raw=b"...", kind="dicom", peer="channel:retrieve")
    async with running(rec, ctx=context(rec, topics=bus), topic="study.retrieved"):
        assert await bus.publish("study.retrieved", inbound) == [Outcome("accepted", "m1")]
    assert rec.inbounds == [inbound]
    assert await bus.publish("study.retrieved", inbound) == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"allow": [{"cn": "ris"}]}, "tls.ca is not set"),
        ({"allow": [{}]}, "at least one of"),
        ({"allow": []}, "at least one entry"),
        ({"allow": [{"address": "not-an-ip"}]}, "not an IP address"),
        ({"ae_title": "A" * 17}, "not an AE title"),
        ({"ae_title": "BAD\\AE"}, "not an AE title"),
        ({"services": ["store"]}, "services"),
        ({"max_pdu": 100}, "max_pdu"),
        ({"prot": 104}, "prot"),
    ],
)
def test_config_is_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DicomSource.Config.model_validate({"port": 0, **options})


async def test_start_needs_topics_and_state_when_configured() -> None:
    rec = Recorder()
    for options, message in (({"topic": "study.retrieved"}, "topics"), ({"services": ["mpps"]}, "state store")):
        source = DicomSource(DicomSource.Config.model_validate({"port": 0, **options}), context(rec))
        with pytest.raises(ConfigError, match=message):
            await source.start(rec.sink)


def test_unusable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    config = DicomSource.Config.model_validate({"port": 0, "tls": {"cert": "missing.crt", "key": "missing.key"}})
    with pytest.raises(ConfigError, match="unusable TLS files"):
        DicomSource(config, context(Recorder(), tmp_path))
