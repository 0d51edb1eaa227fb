"""MllpDestination and send_messages against a scripted peer (and against MllpSource)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from engine.connectors.mllp import MllpDestination, parse_ack, send_messages
from engine.core.component import Outbound, Outcome
from engine.core.errors import PermanentError, RetryableError
from engine.hl7v2 import AckError, Message, build_ack
from engine.hl7v2.mllp import MllpDecoder, encode
from tests.connectors.test_mllp_helpers import WAIT, Recorder, context, orm, running_source
from tests.phi import NAME_FAMILY

NOW = datetime(2026, 11, 21, 10, 15, tzinfo=UTC)
Answer = Callable[[bytes], bytes | None]  # frame -> ACK payload, or None for silence


def ack_for(code: str, *, err: int | None = None, control: str | None = None) -> Answer:
    def answer(frame: bytes) -> bytes:
        msg = Message.parse(frame)
        error = AckError(err, f"{NAME_FAMILY} is not known here") if err else None  # peer text may quote PHI
        if control is None:
            return build_ack(msg, code, control_id="PEERACK1", error=error, now=NOW)  # type: ignore[arg-type]
        return build_ack(None, code, control_id="PEERACK1", error=error, now=NOW, original_control_id=control)  # type: ignore[arg-type]

    return answer


class Peer:
    """A scripted MLLP receiver: counts connections, answers each frame with `answer`."""

    def __init__(self, answer: Answer, close_after_ack: bool = False) -> None:
        self.answer = answer
        self.close_after_ack = close_after_ack
        self.connections = 0
        self.frames: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        decoder = MllpDecoder()
        try:
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    self.frames.append(frame)
                    reply = self.answer(frame)
                    if reply is not None:
                        writer.write(encode(reply))
                        await writer.drain()
                        if self.close_after_ack:
                            return
        except ConnectionError:
            pass
        finally:
            writer.close()


@asynccontextmanager
async def peer(answer: Answer, **kw: bool) -> AsyncIterator[Peer]:
    p = Peer(answer, **kw)
    p.server = await asyncio.start_server(p.handle, "127.0.0.1", 0)
    p.port = p.server.sockets[0].getsockname()[1]
    try:
        yield p
    finally:
        p.server.close()
        await asyncio.wait_for(p.server.wait_closed(), WAIT)


def destination(port: int, **options: object) -> MllpDestination:
    config = MllpDestination.Config.model_validate({"host": "127.0.0.1", "port": port, **options})
    return MllpDestination(config, context(Recorder()))


def out(control_id: str, message_id: str = "msg-1") -> Outbound:
    return Outbound(message_id, "ris", orm(control_id), "hl7v2")


async def test_aa_is_delivered_with_the_ack_as_response() -> None:
    async with peer(ack_for("AA")) as p:
        dest = destination(p.port)
        delivered = await dest.send(out("D0000001"))
        await dest.close()
    assert delivered.detail == "AA"
    assert delivered.response is not None and parse_ack(delivered.response).acked_control_id == "D0000001"
    assert p.frames == [orm("D0000001")]


async def test_ca_is_delivered() -> None:
    async with peer(ack_for("CA")) as p:
        dest = destination(p.port)
        assert (await dest.send(out("D0000002"))).detail == "CA"
        await dest.close()


async def test_connection_is_reused_between_messages() -> None:
    async with peer(ack_for("AA")) as p:
        dest = destination(p.port)
        for i in range(5):
            await dest.send(out(f"REUSE{i:03d}"))
        await dest.close()
        assert p.connections == 1 and dest.connects == 1
    async with peer(ack_for("AA")) as p:
        dest = destination(p.port, keep_alive=False)
        for i in range(3):
            await dest.send(out(f"ONCE{i:03d}"))
        assert p.connections == 3


async def test_reconnects_when_the_peer_closed_an_idle_connection() -> None:
    async with peer(ack_for("AA"), close_after_ack=True) as p:
        dest = destination(p.port)
        await dest.send(out("R0000001"))
        async with asyncio.timeout(WAIT):  # until the peer's FIN has arrived
            while not (dest._frames and dest._frames.reader.at_eof()):
                await asyncio.sleep(0.01)
        await dest.send(out("R0000002"))
        await dest.close()
        assert p.connections == 2


async def test_msa2_mismatch_is_retryable_and_drops_the_connection() -> None:
    async with peer(ack_for("AA", control="SOMEONEELSE")) as p:
        dest = destination(p.port)
        with pytest.raises(RetryableError, match="MSA-2") as info:
            await dest.send(out("M0000001"))
        assert info.value.response is not None  # type: ignore[attr-defined]
        p.answer = ack_for("AA")
        await dest.send(out("M0000002"))
        await dest.close()
        assert dest.connects == 2 and p.connections == 2


async def test_ae_goes_dead_by_default_without_peer_text() -> None:
    async with peer(ack_for("AE", err=101)) as p:
        dest = destination(p.port)
        with pytest.raises(PermanentError) as info:
            await dest.send(out("AE000001", "msg-ae"))
        text = str(info.value)
        assert "AE" in text and "ERR 101" in text and "msg-ae" in text and NAME_FAMILY not in text
        assert not isinstance(info.value, RetryableError)
        assert info.value.ack_code == "AE" and b"MSA|AE|AE000001" in info.value.response  # type: ignore[attr-defined]
        await dest.close()
        assert p.connections == 1
    async with peer(ack_for("CE", err=207)) as p:
        dest = destination(p.port, on_ae="retry")
        with pytest.raises(RetryableError, match="CE"):
            await dest.send(out("AE000003"))
        await dest.close()


async def test_ar_retries_by_default_and_can_go_dead() -> None:
    async with peer(ack_for("AR", err=207)) as p:
        dest = destination(p.port)
        with pytest.raises(RetryableError, match=r"AR \(ERR 207\)"):
            await dest.send(out("AR000001"))
        dest2 = destination(p.port, on_ar="dead")
        with pytest.raises(PermanentError, match="AR") as info:
            await dest2.send(out("AR000002"))
        assert not isinstance(info.value, RetryableError)
        for d in (dest, dest2):
            await d.close()


async def test_ae_keeps_the_connection() -> None:
    answers = iter([ack_for("AE", err=101), ack_for("AA")])
    async with peer(lambda frame: next(answers)(frame)) as p:
        dest = destination(p.port)
        with pytest.raises(PermanentError):
            await dest.send(out("K0000001"))
        assert (await dest.send(out("K0000002"))).detail == "AA"
        await dest.close()
        assert p.connections == 1


async def test_no_ack_in_time_is_retryable_or_dead_per_config() -> None:
    async with peer(lambda frame: None) as p:
        dest = destination(p.port, ack_timeout_s=0.2)
        with pytest.raises(RetryableError, match="no ACK"):
            await asyncio.wait_for(dest.send(out("T0000001")), WAIT)
        dead = destination(p.port, ack_timeout_s=0.2, on_timeout="dead")
        with pytest.raises(PermanentError, match="no ACK") as info:
            await asyncio.wait_for(dead.send(out("T0000002")), WAIT)
        assert not isinstance(info.value, RetryableError)
        p.answer = ack_for("AA")
        assert (await dest.send(out("T0000003"))).detail == "AA"  # on a fresh connection
        assert dest.connects == 2
        for d in (dest, dead):
            await d.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_server_down_is_retryable() -> None:
    dest = destination(_free_port(), connect_timeout_s=1)
    with pytest.raises(RetryableError, match="cannot connect"):
        await dest.send(out("DOWN0001"))


async def test_peer_closing_without_an_ack_is_retryable() -> None:
    async def closer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)
        writer.close()

    server = await asyncio.start_server(closer, "127.0.0.1", 0)
    try:
        dest = destination(server.sockets[0].getsockname()[1])
        with pytest.raises(RetryableError, match="connection lost"):
            await asyncio.wait_for(dest.send(out("CL000001")), WAIT)
    finally:
        server.close()
        await server.wait_closed()


async def test_unreadable_ack_is_retryable() -> None:
    async with peer(lambda frame: b"this is not HL7") as p:
        dest = destination(p.port)
        with pytest.raises(RetryableError, match="unreadable ACK"):
            await dest.send(out("U0000001"))


async def test_message_without_control_id_is_permanent() -> None:
    dest = destination(_free_port())
    with pytest.raises(PermanentError, match="MSH-10"):
        await dest.send(Outbound("m1", "ris", b"PID|1||X\r", "hl7v2"))


async def test_destination_to_source_end_to_end() -> None:
    rec = Recorder(lambda inbound: Outcome("accepted", inbound.dedup))
    async with running_source(rec) as source:
        dest = destination(source.port)
        results = [await dest.send(out(f"E2E{i:05d}")) for i in range(20)]
        await dest.close()
    assert {r.detail for r in results} == {"AA"}
    assert dest.connects == 1 and len(rec.inbounds) == 20


async def test_send_messages_reports_each_ack() -> None:
    codes = {"S1": Outcome("accepted"), "S2": Outcome("invalid"), "S3": Outcome("refused")}
    rec = Recorder(lambda inbound: codes[inbound.decoded.control_id])
    async with running_source(rec) as source:
        results = await send_messages(
            [orm("S1"), orm("S2"), orm("S3")], "127.0.0.1", source.port, tls=None, timeout_s=WAIT
        )
    assert [(r.control_id, r.code, r.error_code, r.note) for r in results] == [
        ("S1", "AA", None, ""),
        ("S2", "AE", 207, ""),
        ("S3", "AR", 207, ""),
    ]
    assert all(r.elapsed_ms >= 0 for r in results)


async def test_send_messages_stops_at_a_timeout_or_mismatch() -> None:
    async with peer(lambda frame: None) as p:
        results = await send_messages([orm("X1"), orm("X2")], "127.0.0.1", p.port, tls=None, timeout_s=0.2)
    assert len(results) == 1 and results[0].code is None and "no ACK" in results[0].note
    async with peer(ack_for("AA", control="OTHER")) as p:
        results = await send_messages([orm("Y1"), orm("Y2")], "127.0.0.1", p.port, tls=None, timeout_s=WAIT)
    assert len(results) == 1 and results[0].code == "AA" and "MSA-2" in results[0].note
    with pytest.raises(RetryableError):
        await send_messages([orm("Z1")], "127.0.0.1", _free_port(), tls=None, timeout_s=1)


def test_parse_ack_reads_old_and_new_err_forms() -> None:
    for version in ("2.3.1", "2.5.1"):
        msg = Message.parse(orm("V1").replace(b"|2.3.1\r", f"|{version}\r".encode(), 1))
        info = parse_ack(build_ack(msg, "AE", control_id="A1", error=AckError(103, "table value"), now=NOW))
        assert (info.code, info.acked_control_id, info.error_code) == ("AE", "V1", 103)


def test_config_is_strict() -> None:
    Config = MllpDestination.Config
    assert Config.model_validate({"host": "ris", "port": 2575}).on_ae == "dead"
    with pytest.raises(ValidationError):
        Config.model_validate({"host": "ris", "port": 2575, "on_ae": "ignore"})
    with pytest.raises(ValidationError, match="go together"):
        Config.model_validate({"host": "ris", "port": 2575, "tls": {"cert": "c.pem"}})
    for name, field in Config.model_fields.items():
        assert field.description, name
