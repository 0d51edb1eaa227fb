"""MllpSource on real sockets: ACK codes per Outcome, framing faults, timeouts, limits, concurrency."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.connectors.mllp import MllpSource, new_ack_control_id
from engine.core.component import Inbound, Outcome, Problem
from engine.hl7v2 import Hl7ParseError, Message
from engine.hl7v2.mllp import encode
from tests.connectors.test_mllp_helpers import (
    WAIT,
    Client,
    Recorder,
    adt,
    context,
    err,
    msa,
    omi,
    orm,
    running_source,
)
from tests.hl7v2.samples import OMI_O23
from tests.phi import STRINGS


async def test_start_describes_listener_and_python_hl7_client_gets_aa() -> None:
    from hl7.client import MLLPClient

    rec = Recorder()
    config = MllpSource.Config.model_validate({"host": "127.0.0.1", "port": 0})
    source = MllpSource(config, context(rec))
    described = await source.start(rec.sink)
    try:
        assert described == [f"mllp://127.0.0.1:{source.port}"]

        def send() -> bytes:
            with MLLPClient("127.0.0.1", source.port) as client:
                return client.send_message(orm("PY000001"))

        raw = await asyncio.wait_for(asyncio.to_thread(send), WAIT)
        assert raw.startswith(b"\x0b") and raw.endswith(b"\x1c\r")
        ack = Message.parse(raw)
        assert msa(ack) == ("AA", "PY000001")
        assert ack.get("MSH-9.1") == "ACK"
        inbound = rec.inbounds[0]
        assert inbound.raw == orm("PY000001") and inbound.kind == "hl7v2"
        assert inbound.type == "ORM^O01" and inbound.dedup == "RIS|GENHOSP|PY000001"
        assert isinstance(inbound.decoded, Message)
        assert inbound.peer.startswith("127.0.0.1:") and inbound.peer != f"127.0.0.1:{source.port}"
    finally:
        await source.stop()


async def test_python_hl7_mllp_send_cli(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "mllp_send"
    if not exe.exists():
        pytest.skip("python-hl7's mllp_send is not installed")
    file = tmp_path / "two.hl7"
    file.write_bytes((orm("CLI00001") + orm("CLI00002")).replace(b"\r", b"\n"))
    rec = Recorder()
    async with running_source(rec) as source:
        proc = await asyncio.create_subprocess_exec(
            str(exe), "--loose", "-f", str(file), "-p", str(source.port), "127.0.0.1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, errout = await asyncio.wait_for(proc.communicate(), WAIT * 2)
    assert proc.returncode == 0, errout
    acks = [Message.parse(chunk) for chunk in out.split(b"\x1c") if b"MSA" in chunk]
    assert [msa(a) for a in acks] == [("AA", "CLI00001"), ("AA", "CLI00002")]
    assert [i.dedup for i in rec.inbounds] == ["RIS|GENHOSP|CLI00001", "RIS|GENHOSP|CLI00002"]


@pytest.mark.parametrize("status", ["accepted", "duplicate", "filtered"])
async def test_stored_outcomes_get_aa(status: str) -> None:
    rec = Recorder(Outcome(status, "m1"))  # type: ignore[arg-type]
    async with running_source(rec) as source:
        client = await Client.connect(source.port)
        ack = await client.send(orm("AA000001"))
        await client.close()
    assert msa(ack) == ("AA", "AA000001")
    assert ack.segment("ERR") is None
    assert ack.get("MSH-3") == "RADBRIDGE" and ack.get("MSH-5") == "RIS" and ack.get("MSH-6") == "GENHOSP"
    control = ack.get("MSH-10")
    assert control is not None and len(control) == 20 and control != "AA000001"


async def test_invalid_gets_ae_with_err_from_the_problem() -> None:
    problem = Problem("PID-3 (patient identifier) is required", code=101, segment="PID", sequence=1, field=3)
    rec = Recorder(Outcome("invalid", "m1", problem))
    async with running_source(rec) as source:
        client = await Client.connect(source.port)
        ack = await client.send(orm("AE000001", sample=OMI_O23))
        await client.close()
    assert msa(ack) == ("AE", "AE000001")
    e = err(ack)
    assert e["code"] == "101" and e["segment"] == "PID" and e["field"] == "3" and e["severity"] == "E"
    assert e["text"] == "PID-3 (patient identifier) is required"


async def test_refused_gets_ar_with_the_problem_code() -> None:
    rec = Recorder(Outcome("refused", "m1", Problem("ADT is not taken here", code=200)))
    async with running_source(rec) as source:
        client = await Client.connect(source.port)
        ack = await client.send(adt("AR000001"))
        await client.close()
    assert msa(ack) == ("AR", "AR000001")
    assert err(ack)["code"] == "200"


async def test_unavailable_and_sink_failure_get_ar_never_aa() -> None:
    rec = Recorder(Outcome("unavailable"))
    async with running_source(rec) as source:
        client = await Client.connect(source.port)
        ack = await client.send(orm("UN000001"))
        assert msa(ack) == ("AR", "UN000001") and err(ack)["code"] == "207"

        def boom(_inbound: Inbound) -> Outcome:
            raise RuntimeError("store is down")

        rec.outcome = boom
        ack = await client.send(orm("UN000002"))
        assert msa(ack) == ("AR", "UN000002")
        rec.outcome = Outcome("accepted", "m3")  # the connection survived the failure
        assert msa(await client.send(orm("UN000003"))) == ("AA", "UN000003")
        await client.close()


@pytest.mark.parametrize(("status", "code"), [("invalid", "AE"), ("accepted", "AE"), ("refused", "AR")])
async def test_unparseable_msh_reaches_the_sink_and_gets_ae_or_ar(status: str, code: str) -> None:
    rec = Recorder(Outcome(status, "m1"))  # type: ignore[arg-type]
    broken = orm("BAD00001").replace(b"MSH|^~\\&|", b"MSH|^~|", 1)  # MSH-2 too short
    async with running_source(rec) as source:
        client = await Client.connect(source.port)
        ack = await client.send(broken)
        await client.close()
    assert msa(ack) == (code, "BAD00001")
    assert err(ack)["code"] == "102"  # data type error, from the parse error
    inbound = rec.inbounds[0]
    assert inbound.raw == broken and isinstance(inbound.decoded, Hl7ParseError)
    assert inbound.dedup is None and inbound.type is None


async def test_accept_types_refuses_others_after_storing_them() -> None:
    rec = Recorder(Outcome("accepted", "m1"))  # a runtime that forgot to refuse
    async with running_source(rec, accept_types=["ORM^O01", "OMI"]) as source:
        assert source.accepts("ORM^O01") and source.accepts("OMI^O23") and not source.accepts("ADT^A08")
        client = await Client.connect(source.port)
        ack = await client.send(adt("TYPE0001"))
        assert msa(ack) == ("AR", "TYPE0001") and err(ack)["code"] == "200"
        assert msa(await client.send(orm("TYPE0002"))) == ("AA", "TYPE0002")
        await client.close()
    assert [i.type for i in rec.inbounds] == ["ADT^A08", "ORM^O01"]  # both reached the sink


async def test_enhanced_mode_commit_acks() -> None:
    outcomes = {
        "E1": Outcome("accepted"),
        "E2": Outcome("accepted"),
        "E3": Outcome("accepted"),
        "E4": Outcome("invalid", problem=Problem("OBR-4 is required", 101, "OBR", 1, 4)),
        "E5": Outcome("unavailable"),
        "E6": Outcome("refused", problem=Problem("not here", 200)),
        "E7": Outcome("accepted"),
    }
    rec = Recorder(lambda inbound: outcomes[inbound.decoded.control_id])
    async with running_source(rec, ack_mode="enhanced") as source:
        client = await Client.connect(source.port)
        assert msa(await client.send(omi("E1", "AL"))) == ("CA", "E1")
        await client.write(encode(omi("E2", "NE")))  # no commit ACK wanted...
        await client.write(encode(omi("E3", "ER")))  # ...nor on success under ER
        ack = await client.send(omi("E4", "ER"))  # so the next frame read is E4's
        assert msa(ack) == ("CE", "E4") and err(ack)["code"] == "101"
        assert msa(await client.send(omi("E5", "AL"))) == ("CE", "E5")
        await client.write(encode(omi("E6", "SU")))  # CR is not wanted under SU
        assert msa(await client.send(orm("E7"))) == ("AA", "E7")  # no MSH-15: original mode
        await client.close()
    assert len(rec.inbounds) == 7


async def test_original_mode_ignores_msh15() -> None:
    rec = Recorder()
    async with running_source(rec) as source:
        client = await Client.connect(source.port)
        assert msa(await client.send(omi("O1", "NE"))) == ("AA", "O1")
        await client.close()


async def test_framing_tolerance_whitespace_bom_lf_and_pipelining() -> None:
    rec = Recorder()
    async with running_source(rec) as source:
        client = await Client.connect(source.port)
        lf = orm("LF000001").replace(b"\r", b"\n")
        bom = b"\xef\xbb\xbf" + orm("BOM00001").replace(b"\r", b"\r\n")
        burst = b"\n" + encode(lf) + b"\r\n" + encode(bom) + b"\n\n" + b"".join(encode(orm(f"P{i}")) for i in range(5))
        await client.write(burst)
        acks = [Message.parse(await client.frame() or b"") for _ in range(7)]
        await client.close()
    assert [msa(a) for a in acks] == [("AA", "LF000001"), ("AA", "BOM00001")] + [("AA", f"P{i}") for i in range(5)]
    assert rec.audits == []  # whitespace between frames is not garbage


async def test_garbage_before_start_block_is_skipped_and_audited_once() -> None:
    rec = Recorder()
    async with running_source(rec) as source:
        client = await Client.connect(source.port)
        await client.write(b"GET / HTTP/1.0\r\n\r\n")
        assert msa(await client.send(orm("G1"))) == ("AA", "G1")
        await client.write(b"more junk")
        assert msa(await client.send(orm("G2"))) == ("AA", "G2")
        await client.close()
    assert rec.actions() == ["connection.garbage"]
    fields = rec.audits[0][1]
    assert fields["outcome"] == "failure" and fields["peer"].startswith("127.0.0.1:")
    assert fields["detail"]["bytes"] == len(b"GET / HTTP/1.0")
    assert len(rec.inbounds) == 2


async def test_empty_frames_are_ignored() -> None:
    rec = Recorder()
    async with running_source(rec) as source:
        client = await Client.connect(source.port)
        await client.write(b"\x0b\x1c\r\x0b\r\n\x1c\r")
        assert msa(await client.send(orm("AFTER001"))) == ("AA", "AFTER001")
        await client.close()
    assert len(rec.inbounds) == 1


async def test_oversize_frame_closes_the_connection_and_is_audited() -> None:
    rec = Recorder()
    async with running_source(rec, max_message_bytes=1024) as source:
        client = await Client.connect(source.port)
        await client.write(b"\x0b" + b"OBX|1|TX|||" + b"x" * 4000)
        assert await client.closed()
        await client.close()
        fields = await rec.wait_audit("message.oversize")
        assert fields["detail"]["limit"] == 1024 and "x" * 20 not in repr(fields)
        assert rec.inbounds == []
        other = await Client.connect(source.port)  # the listener still serves
        assert msa(await other.send(orm("NEXT0001"))) == ("AA", "NEXT0001")
        await other.close()


async def test_frame_exactly_at_the_limit_is_accepted() -> None:
    rec = Recorder()
    message = orm("LIMIT001")
    async with running_source(rec, max_message_bytes=len(message)) as source:
        client = await Client.connect(source.port)
        assert msa(await client.send(message)) == ("AA", "LIMIT001")
        await client.close()


async def test_truncated_frame_is_not_acked_and_is_audited() -> None:
    rec = Recorder()
    async with running_source(rec) as source:
        client = await Client.connect(source.port)
        await client.write(b"\x0b" + orm("TRUNC001")[:100])
        await client.close()
        fields = await rec.wait_audit("message.truncated")
    assert fields["detail"]["reason"] == "connection closed" and fields["detail"]["bytes"] == 100
    assert rec.inbounds == []


async def test_read_timeout_drops_an_unfinished_frame() -> None:
    rec = Recorder()
    async with running_source(rec, read_timeout_s=0.2) as source:
        client = await Client.connect(source.port)
        await client.write(b"\x0b" + orm("SLOW0001")[:50])
        await asyncio.sleep(0.1)
        await client.write(orm("SLOW0001")[50:80])  # trickling does not extend the frame's deadline
        assert await client.closed(timeout=2)
        await client.close()
        fields = await rec.wait_audit("message.truncated")
    assert fields["detail"]["reason"] == "read timeout"
    assert rec.inbounds == []


async def test_idle_timeout_closes_quietly() -> None:
    rec = Recorder()
    async with running_source(rec, idle_timeout_s=0.2) as source:
        client = await Client.connect(source.port)
        assert msa(await client.send(orm("IDLE0001"))) == ("AA", "IDLE0001")
        assert await client.closed(timeout=2)
        await client.close()
        assert source.connections == 0 or await _eventually(lambda: source.connections == 0)
    assert rec.audits == []


async def _eventually(check, timeout: float = WAIT) -> bool:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)
    return True


async def test_many_concurrent_connections_each_in_order() -> None:
    rec = Recorder()
    clients_n, per_client = 20, 10
    async with running_source(rec) as source:

        async def one(c: int) -> list[tuple[str | None, str | None]]:
            client = await Client.connect(source.port)
            got = [msa(await client.send(orm(f"C{c:02d}M{m:02d}"))) for m in range(per_client)]
            await client.close()
            return got

        results = await asyncio.wait_for(asyncio.gather(*(one(c) for c in range(clients_n))), WAIT * 2)
    for c, got in enumerate(results):
        assert got == [("AA", f"C{c:02d}M{m:02d}") for m in range(per_client)]
    assert len(rec.inbounds) == clients_n * per_client
    by_peer: dict[str, list[str]] = {}
    for inbound in rec.inbounds:
        by_peer.setdefault(inbound.peer, []).append(inbound.dedup or "")
    assert len(by_peer) == clients_n
    for dedups in by_peer.values():
        assert dedups == sorted(dedups)  # each connection's messages reached the sink in order


async def test_max_connections_refuses_extra_connections() -> None:
    rec = Recorder()
    async with running_source(rec, max_connections=2) as source:
        a, b = await Client.connect(source.port), await Client.connect(source.port)
        assert msa(await a.send(orm("MAX00001")))[0] == "AA"
        assert msa(await b.send(orm("MAX00002")))[0] == "AA"
        c = await Client.connect(source.port)
        assert await c.closed()
        fields = await rec.wait_audit("connection.refused")
        assert fields["outcome"] == "denied" and fields["detail"]["reason"] == "too many connections"
        await a.close()
        await _eventually(lambda: source.connections < 2)
        d = await Client.connect(source.port)
        assert msa(await d.send(orm("MAX00003")))[0] == "AA"
        for x in (b, c, d):
            await x.close()


async def test_allow_list_by_address() -> None:
    rec = Recorder()
    async with running_source(rec, allow=["10.0.0.0/8", "192.168.1.7"]) as source:
        client = await Client.connect(source.port)
        await client.write(encode(orm("DENY0001")))
        assert await client.closed()
        await client.close()
        fields = await rec.wait_audit("connection.refused")
    assert fields["outcome"] == "denied" and fields["actor"] == "peer:127.0.0.1"
    assert fields["detail"]["reason"] == "address not allowed" and fields["peer"].startswith("127.0.0.1:")
    assert rec.inbounds == []
    async with running_source(rec, allow=["127.0.0.0/8"]) as source:
        client = await Client.connect(source.port)
        assert msa(await client.send(orm("ALLOW001"))) == ("AA", "ALLOW001")
        await client.close()


async def test_stop_lets_the_message_in_flight_finish_and_closes_idle_connections() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    config = MllpSource.Config.model_validate({"host": "127.0.0.1", "port": 0})
    source = MllpSource(config, context(rec))
    await source.start(rec.sink)
    busy, idle = await Client.connect(source.port), await Client.connect(source.port)
    await busy.write(encode(orm("STOP0001")))
    await asyncio.wait_for(rec.entered.wait(), WAIT)
    stopping = asyncio.create_task(source.stop())
    assert await idle.closed()
    await asyncio.sleep(0.05)
    assert not stopping.done()
    rec.gate.set()
    ack = await busy.frame()
    assert ack is not None and msa(Message.parse(ack)) == ("AA", "STOP0001")
    assert await busy.closed()
    await asyncio.wait_for(stopping, WAIT)
    with pytest.raises(OSError):
        await Client.connect(source.port)
    for c in (busy, idle):
        await c.close()


async def test_logs_carry_no_content_or_control_ids(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="radbridge")
    rec = Recorder(Outcome("invalid", "m1", Problem("PID-3 is required", 101, "PID", 1, 3)))
    async with running_source(rec, max_message_bytes=4096) as source:
        client = await Client.connect(source.port)
        await client.write(b"junk")
        await client.send(orm("SECRETCTRL1"))
        await client.write(b"\x0b" + orm("SECRETCTRL2") * 10)
        assert await client.closed()
        await client.close()
    text = caplog.text
    assert "conn 1" in text
    for needle in (*STRINGS, "SECRETCTRL", "GENHOSP", "junk"):
        assert needle not in text


def test_ack_control_ids_are_unique_20_characters() -> None:
    ids = [new_ack_control_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 20 and i.isalnum() for i in ids)
    assert ids == sorted(ids)


def test_config_is_strict() -> None:
    Config = MllpSource.Config
    assert Config.model_validate({"port": 2575}).host == "0.0.0.0"
    with pytest.raises(ValidationError, match="prot"):
        Config.model_validate({"port": 2575, "prot": 1})
    with pytest.raises(ValidationError, match="tls.ca"):
        Config.model_validate({"port": 2575, "allow": ["ris.example.test"]})
    with pytest.raises(ValidationError, match="accept_types"):
        Config.model_validate({"port": 2575, "accept_types": ["ORDER"]})
    for name, field in Config.model_fields.items():
        assert field.description, name
