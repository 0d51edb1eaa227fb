"""Audit forwarding to an RFC 5424 collector over TLS (RFC 5425): framing, structured data, no gaps
across a collector outage, resume after a forwarder restart, checkpoints, TLS verification, no PHI."""

from __future__ import annotations

import asyncio
import json
import stat
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from engine.audit.chain import checkpoint_payload
from engine.audit.forward import (
    BOM,
    CHECKPOINT_SD_ID,
    SD_ID,
    AuditForwarder,
    escape_param,
    frame,
    sd_element,
    syslog_message,
)
from engine.runtime.context import Context
from engine.security.tls import client_context, server_context
from engine.store.tables import AuditRow
from tests import phi
from tests.audit.syslog_collector import Collector, parse
from tests.tlscerts import Certs, make_certs

audit = AuditRow.__table__
SECRET = {"raw": phi.ORM, "name": f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}", "phone": phi.PHONE, "dob": phi.DOB}
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def collector(certs: Certs) -> AsyncIterator[Collector]:
    # Mutual TLS: the collector only accepts the forwarder's client certificate.
    c = await Collector(server_context(str(certs.server_cert), str(certs.server_key), str(certs.ca))).start()
    yield c
    await c.stop()


def forwarder(ctx: Context, certs: Certs, port: int, state: Path, **options: Any) -> AuditForwarder:
    settings: dict[str, Any] = {
        "poll_interval": 0.05,
        "backoff_min": 0.05,
        "backoff_max": 0.2,
        "connect_timeout": 2.0,
        "batch": 4,
    }
    settings.update(options)
    return AuditForwarder(
        ctx.db,
        host="127.0.0.1",
        port=port,
        tls=client_context(str(certs.ca), str(certs.client_cert), str(certs.client_key)),
        state_path=state,
        node=ctx.node,
        app_name="radbridge-test",
        **settings,
    )


class Running:
    def __init__(self, fwd: AuditForwarder) -> None:
        self.fwd, self.stop = fwd, asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AuditForwarder:
        self.task = asyncio.create_task(self.fwd.run(self.stop))
        return self.fwd

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, TIMEOUT)


def rows(ctx: Context) -> list[dict[str, Any]]:
    columns = [c for c in audit.c if c.name != "detail"]
    with ctx.db.connect() as conn:
        return [dict(r) for r in conn.execute(select(*columns).order_by(audit.c.node, audit.c.seq)).mappings()]


async def write(ctx: Context, n: int, **fields: Any) -> None:
    for i in range(n):
        await ctx.audit.arecord(
            "message.viewed", actor="user:alice", record_ids=[f"m-{i}"], purpose="treatment", detail=SECRET, **fields
        )


def entry_seqs(c: Collector, frames: list[bytes] | None = None) -> list[int]:
    out = []
    for raw in c.frames if frames is None else frames:
        message = parse(raw)
        if SD_ID in message.sd:
            out.append(int(message.sd[SD_ID]["seq"]))
    return out


def assert_no_gaps(received: list[int], expected: list[int], batch: int) -> None:
    """Every seq, in order; a repeat only as a re-sent tail of at most one batch."""
    first_seen: list[int] = []
    for seq in received:
        if seq not in first_seen:
            assert not first_seen or seq == first_seen[-1] + 1, f"gap or reorder: {received}"
            first_seen.append(seq)
    assert first_seen == expected, received
    assert len(received) - len(expected) <= batch, f"more duplicates than one batch: {received}"


# -- pure formatting -----------------------------------------------------------------------------


def test_escaping_and_octet_counting() -> None:
    assert escape_param('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    message = syslog_message(
        facility=13,
        severity=4,
        timestamp="2026-11-21T10:15:00.000001+00:00",
        hostname="node a",  # SP is not allowed in a header field
        app_name="x" * 60,
        msgid="m" * 40,
        structured_data=sd_element(SD_ID, [("actor", 'user:\u00e9"]\\'), ("purpose", None)]),
        msg=BOM + "caf\u00e9".encode(),
    )
    parsed = parse(message)
    assert (parsed.facility, parsed.severity, parsed.hostname) == (13, 4, "node_a")
    assert len(parsed.app_name) == 48 and len(parsed.msgid) == 32 and parsed.procid == "-"
    assert parsed.sd[SD_ID] == {"actor": 'user:\u00e9"]\\'}
    framed = frame(message)
    length, _, body = framed.partition(b" ")
    assert int(length) == len(body) == len(message)  # octets, not characters
    with pytest.raises(TypeError):
        AuditForwarder(None, host="h", port=1, tls=None, state_path="s", node="n")  # type: ignore[arg-type]


# -- against a live collector --------------------------------------------------------------------


async def test_entries_arrive_in_order_with_framing_and_structured_data(
    ctx: Context, certs: Certs, collector: Collector, tmp_path: Path
) -> None:
    statements: list[str] = []
    event.listen(ctx.db, "before_cursor_execute", lambda *a: statements.append(a[2]))
    await ctx.audit.arecord(
        "message.received",
        actor='peer:ris "a]\\b',
        peer="127.0.0.1:5000",
        record_ids=["m-1", "m-2"],
        indexes={"mrn": ctx.index("mrn", phi.MRN)},
        detail=SECRET,
    )
    await ctx.audit.arecord("message.searched", actor="user:bob", outcome="denied", detail=SECRET)
    await ctx.audit.arecord("config.changed", actor="service:engine", outcome="failure", detail=SECRET)
    expected = rows(ctx)
    state = tmp_path / "state" / "forward.json"

    async with Running(forwarder(ctx, certs, collector.port, state, facility=13)) as fwd:
        await collector.wait_for(lambda c: len(c.frames) >= len(expected))
        await asyncio.sleep(0.2)  # nothing more may come

    assert collector.errors == []
    assert len(collector.frames) == len(expected)
    for raw, row in zip(collector.frames, expected, strict=True):
        message = parse(raw)
        assert message.facility == 13
        assert message.severity == (5 if row["outcome"] == "success" else 4)
        assert (message.timestamp, message.hostname) == (row["ts"], row["node"])
        assert (message.app_name, message.msgid) == ("radbridge-test", row["action"])
        sd = message.sd[SD_ID]
        assert sd["node"] == row["node"] and int(sd["seq"]) == row["seq"]
        assert (sd["hash"], sd["prev"], sd["actor"], sd["outcome"]) == (
            row["hash"],
            row["prev_hash"],
            row["actor"],
            row["outcome"],
        )
        assert json.loads(sd["recordIds"]) == json.loads(row["record_ids"])
        assert sd.get("purpose") == row["purpose"]
        assert message.msg.startswith(BOM)
        atna = ET.fromstring(message.msg[len(BOM) :].decode("utf-8"))
        assert atna.tag == "AuditMessage"
        assert atna.find("ActiveParticipant").get("UserID") == row["actor"]  # type: ignore[union-attr]
    assert [json.loads(parse(f).sd[SD_ID]["seq"]) for f in collector.frames] == [r["seq"] for r in expected]

    # The sealed detail held PHI; it was never read, let alone sent.
    assert phi.leaks_in_bytes(bytes(collector.raw)) == []
    audit_reads = [s for s in statements if "audit_log" in s and "SELECT" in s.upper()]
    assert audit_reads and not any("detail" in s for s in audit_reads)

    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    saved = json.loads(state.read_text())
    assert saved["entries"] == {ctx.node: expected[-1]["seq"]} == fwd.position


async def test_collector_outage_loses_nothing(ctx: Context, certs: Certs, collector: Collector, tmp_path: Path) -> None:
    await write(ctx, 2)
    async with Running(forwarder(ctx, certs, collector.port, tmp_path / "fwd.json")) as fwd:
        await collector.wait_for(lambda c: len(c.frames) >= len(rows(ctx)))
        port = collector.port
        await collector.stop()
        await write(ctx, 3)  # written while the collector is down
        fwd.wake()
        await asyncio.sleep(0.5)  # the forwarder fails to connect and backs off
        assert fwd.last_error is not None
        assert fwd.position[ctx.node] < rows(ctx)[-1]["seq"]

        restarted = await Collector(collector.tls, port=port).start()
        try:
            await write(ctx, 2)
            expected = [r["seq"] for r in rows(ctx)]
            await restarted.wait_for(lambda c: expected[-1] in entry_seqs(c))
            await asyncio.sleep(0.1)  # the position moves once the write has drained
        except BaseException:
            await restarted.stop()
            raise
    await restarted.stop()  # after the forwarder stopped: a close right after a write means a re-send
    received = entry_seqs(collector) + entry_seqs(restarted)
    assert_no_gaps(received, expected, batch=4)
    assert fwd.position == {ctx.node: expected[-1]}
    assert phi.leaks_in_bytes(bytes(collector.raw) + bytes(restarted.raw)) == []


async def test_forwarder_restart_resumes_from_persisted_position(
    ctx: Context, certs: Certs, collector: Collector, tmp_path: Path
) -> None:
    state = tmp_path / "fwd.json"
    await write(ctx, 3)
    first = [r["seq"] for r in rows(ctx)]
    async with Running(forwarder(ctx, certs, collector.port, state)):
        await collector.wait_for(lambda c: len(entry_seqs(c)) >= len(first))
    assert entry_seqs(collector) == first

    await write(ctx, 2)
    # A long poll: only wake() makes the new forwarder look before its first pass is done.
    async with Running(forwarder(ctx, certs, collector.port, state, poll_interval=30)) as fwd:
        await collector.wait_for(lambda c: len(entry_seqs(c)) >= len(first) + 2)
        await write(ctx, 1)
        fwd.wake()
        await collector.wait_for(lambda c: len(entry_seqs(c)) >= len(first) + 3, timeout=5)
    assert collector.connections == 2
    assert entry_seqs(collector, collector.frames_per_connection[-1]) == [first[-1] + 1, first[-1] + 2, first[-1] + 3]
    assert entry_seqs(collector) == list(range(first[0], first[-1] + 4))


async def test_signed_checkpoints_are_forwarded_once(
    ctx: Context, certs: Certs, collector: Collector, tmp_path: Path
) -> None:
    await write(ctx, 2)
    ctx.checkpoint()
    async with Running(forwarder(ctx, certs, collector.port, tmp_path / "fwd.json")):
        await collector.wait_for(lambda c: any(parse(f).msgid == "audit.checkpoint" for f in c.frames))
        await write(ctx, 1)
        ctx.checkpoint()
        await collector.wait_for(lambda c: sum(parse(f).msgid == "audit.checkpoint" for f in c.frames) >= 2)
        await asyncio.sleep(0.2)

    messages = [parse(f) for f in collector.frames]
    checkpoints = [m for m in messages if m.msgid == "audit.checkpoint"]
    assert len(checkpoints) == 2
    last_entry_seq = rows(ctx)[-1]["seq"]
    for m in checkpoints:
        sd = m.sd[CHECKPOINT_SD_ID]
        assert m.hostname == sd["node"] == ctx.node and m.timestamp == sd["ts"]
        assert sd["keyId"] == ctx.keyring.signing_key_id
        payload = checkpoint_payload(sd["node"], int(sd["seq"]), sd["hash"], sd["ts"])
        ctx.keyring.verify_key.verify(bytes.fromhex(sd["signature"]), payload)  # raises if forged
        # sent only after every entry it covers
        index = messages.index(m)
        assert int(sd["seq"]) in [int(x.sd[SD_ID]["seq"]) for x in messages[:index] if SD_ID in x.sd]
    assert int(checkpoints[-1].sd[CHECKPOINT_SD_ID]["seq"]) == last_entry_seq


@pytest.mark.parametrize("kind", ["wrong-ca", "plain-tcp"])
async def test_unverified_collector_is_refused(ctx: Context, certs: Certs, tmp_path: Path, kind: str) -> None:
    await write(ctx, 2)
    if kind == "wrong-ca":
        other = make_certs(tmp_path / "other")  # a server cert for 127.0.0.1 from a CA we do not trust
        impostor = await Collector(server_context(str(other.server_cert), str(other.server_key))).start()
    else:
        impostor = await Collector(None).start()
    state = tmp_path / "fwd.json"
    try:
        async with Running(forwarder(ctx, certs, impostor.port, state)) as fwd:
            # a TLS listener only hands over connections whose handshake succeeded: none here
            await impostor.wait_for(lambda c: fwd.last_error is not None and (kind == "wrong-ca" or c.connections >= 2))
            await asyncio.sleep(0.3)  # refused, then retried with backoff: still nothing sent
    finally:
        await impostor.stop()
    assert impostor.frames == []
    assert fwd.position == {} and not state.exists()
    assert fwd.last_error is not None
    if kind == "wrong-ca":
        assert "CERTIFICATE_VERIFY_FAILED" in fwd.last_error
    else:
        assert set(bytes(impostor.raw)) == {0x16}  # a TLS handshake record, then refused: nothing in clear
    assert phi.leaks_in_bytes(bytes(impostor.raw)) == []
    for row in rows(ctx):
        assert row["hash"].encode() not in bytes(impostor.raw)
