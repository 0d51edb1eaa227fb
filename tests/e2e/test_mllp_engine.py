"""The engine as a RIS sees it: real MLLP over loopback, real clients and a real downstream peer,
the engine in its own process (`radbridge run`)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.connectors.mllp import send_messages
from engine.core.errors import RetryableError
from engine.hl7v2 import Message
from engine.runtime.context import open_context
from tests import phi
from tests.e2e.harness import (
    REPO,
    free_port,
    make_project,
    orm,
    received,
    start_downstream,
    start_engine,
    stop,
    wait_for,
)  # fmt: skip

MLLP_SEND = Path(sys.executable).with_name("mllp_send")


def _channel(port: int, downstream: int) -> dict[str, str]:
    return {
        "orders.yaml": f"""\
            name: orders
            source: {{kind: mllp, host: 127.0.0.1, port: {port}, accept_types: [ORM^O01], max_message_bytes: 65536,
                      read_timeout_s: 2}}
            mapping: mappings/orm-to-order.yaml
            destinations:
              - name: downstream
                kind: mllp
                body: raw
                host: 127.0.0.1
                port: {downstream}
                connect_timeout_s: 2
                ack_timeout_s: 5
                retry: {{max_attempts: 1000, backoff_s: 0.2, max_backoff_s: 0.5}}
            """
    }


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    port, downstream_port = free_port(), free_port()
    root = make_project(tmp_path / "p", _channel(port, downstream_port))
    log = tmp_path / "downstream.log"
    peers: list[subprocess.Popen[str]] = []
    yield root, port, downstream_port, log, peers
    for proc in peers:
        stop(proc, signal.SIGKILL)


def _send(port: int, *messages: bytes) -> list:  # type: ignore[type-arg]
    return asyncio.run(send_messages(list(messages), "127.0.0.1", port, tls=None, timeout_s=10))


def test_python_hl7_client_gets_aa_and_two_orders_become_two_records(setup) -> None:  # type: ignore[no-untyped-def]
    root, port, downstream_port, log, peers = setup
    peers.append(start_downstream(downstream_port, log))
    engine = start_engine(root)
    peers.append(engine)
    sample = REPO / "samples" / "hl7" / "orm-o01-two-orders.hl7"
    lf_copy = root / "two-orders.txt"  # mllp_send --loose reads LF-separated segments
    lf_copy.write_bytes(sample.read_bytes().replace(b"\r", b"\n"))
    out = subprocess.run(
        [str(MLLP_SEND), "--loose", "--port", str(port), "--file", str(lf_copy), "127.0.0.1"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    [ack] = [Message.parse(chunk) for chunk in out.stdout.split(b"\x1c") if b"MSA" in chunk]
    assert ack.get("MSA-1") == "AA"
    control_id = Message.parse(sample.read_bytes()).control_id
    wait_for(lambda: control_id in received(log))
    logs = stop(engine)  # graceful: the attempt in flight records its result before the engine exits
    assert phi.leaks_in_bytes(logs.encode()) == [] and phi.leaks_in_bytes(out.stdout) == []
    ctx = open_context(root)
    try:
        [message] = ctx.messages.list()
        records = [json.loads(line) for line in ctx.messages.read(message.id, "transformed").splitlines()]
        assert len(records) == 2 and {r["topic"] for r in records} == {"order.accepted"}
        assert records[0]["fields"]["accession"] != records[1]["fields"]["accession"]
        assert message.status == "sent" and message.deliveries == (("downstream", "sent", 1),)
    finally:
        ctx.close()
    assert phi.leaks_in_tree(root / "data") == {}


def test_malformed_input_gets_nack_or_close_and_is_kept(setup) -> None:  # type: ignore[no-untyped-def]
    root, port, downstream_port, log, peers = setup
    peers.append(start_downstream(downstream_port, log))
    engine = start_engine(root)
    peers.append(engine)
    samples = REPO / "samples" / "hl7"
    results = _send(
        port,
        (samples / "malformed-no-msh.hl7").read_bytes(),
        (samples / "malformed-bad-encoding.hl7").read_bytes(),
        (samples / "malformed-missing-accession.hl7").read_bytes(),
        (samples / "unsupported-oru.hl7").read_bytes(),
    )
    assert [r.code for r in results] == ["AE", "AE", "AE", "AR"]
    assert [r.error_code for r in results] == [100, 102, 101, 200]

    def raw_exchange(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    assert raw_exchange(b"\x0bMSH|^~\\&|RIS|H|RB|H|2026||ORM^O01|TRUNC|P|2.3.1\rPID|1") == b""  # truncated
    assert raw_exchange(b"\x0b" + b"A" * 70000 + b"\x1c\r") == b""  # oversize: closed
    junk = bytes(b for b in range(256) if b not in (0x0B, 0x1C)) * 4
    assert raw_exchange(junk) == b""  # binary garbage outside any frame: nothing to answer
    [nack] = [Message.parse(f) for f in raw_exchange(b"\x0b" + junk + b"\x1c\r").split(b"\x1c") if b"MSA" in f]
    assert nack.get("MSA-1") == "AE"  # binary garbage inside a frame: rejected, and kept
    assert _send(port, orm("AFTER1", "ACCFAKE1"))[0].code == "AA"  # still serving
    logs = stop(engine)
    assert "oversize" in logs or "frame over" in logs  # the engine said what happened...
    assert phi.leaks_in_bytes(logs.encode()) == []  # ...without a word of patient data
    ctx = open_context(root)
    try:
        kept = ctx.messages.list(status="error")
        assert len(kept) == 5  # each malformed message that arrived whole is stored for review
        assert all(m.error for m in kept)
    finally:
        ctx.close()


def test_destination_down_then_back_delivers_each_message_once(setup) -> None:  # type: ignore[no-untyped-def]
    root, port, downstream_port, log, peers = setup
    engine = start_engine(root)  # downstream not started yet
    peers.append(engine)
    ids = [f"DOWN{n:03d}" for n in range(20)]
    assert {r.code for r in _send(port, *(orm(i, f"ACCFAKE{n}") for n, i in enumerate(ids)))} == {"AA"}
    peers.append(start_downstream(downstream_port, log))
    wait_for(lambda: len(received(log)) >= 20)
    stop(engine)
    assert received(log) == ids  # all, once each, in order


def test_engine_killed_mid_stream_loses_nothing_it_acknowledged(setup) -> None:  # type: ignore[no-untyped-def]
    root, port, downstream_port, log, peers = setup
    peers.append(start_downstream(downstream_port, log))
    engine = start_engine(root)
    acked: list[str] = []

    async def sender(n: int) -> None:
        ids = [f"K{n}-{i:05d}" for i in range(10_000)]  # far more than fit before the kill
        try:
            for result in await send_messages([orm(i, f"ACCK{n}{i}") for i in ids], "127.0.0.1", port,
                                              tls=None, timeout_s=5):  # fmt: skip
                if result.code == "AA":
                    acked.append(result.control_id)
        except (OSError, RetryableError):  # the engine dies under us; what was ACKed counts
            return

    async def run() -> None:
        tasks = [asyncio.create_task(sender(n)) for n in range(4)]
        await asyncio.sleep(0.7)
        engine.send_signal(signal.SIGKILL)
        await asyncio.gather(*tasks)

    asyncio.run(run())
    engine.wait(timeout=10)
    assert len(acked) > 100, f"only {len(acked)} acknowledged before the kill"
    assert len(acked) < 40_000, "the kill came after every message was sent"
    engine = start_engine(root)
    peers.append(engine)
    wait_for(lambda: set(acked) <= set(received(log)), timeout=60)
    stop(engine)
    ctx = open_context(root)
    try:
        stored = {m.id for m in ctx.messages.list(limit=10_000)}
        assert len(stored) >= len(acked)
    finally:
        ctx.close()
    arrived = received(log)
    assert set(acked) <= set(arrived)
    shutil.copy(log, root / "downstream.log")
