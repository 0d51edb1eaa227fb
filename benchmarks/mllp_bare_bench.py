"""The MLLP ceiling on this machine: a bare asyncio server that only ACKs, and MllpSource against it.

Run: .venv/bin/python benchmarks/mllp_bare_bench.py [seconds-per-run]

"bare": an asyncio Protocol that finds the end block and writes a canned ACK — no parsing, no
storage; what any MLLP listener in Python here can at most reach. "durable": the same, but what
arrived in one loop iteration (from every connection) is written to a preallocated file (RingLog)
and fdatasync'ed once before those ACKs go out (group commit): the floor for any listener that answers AA only once the
message is on disk, with nothing parsed, sealed or indexed. "MllpSource": the engine's
listener (parse, Inbound, ACK built per message) with a sink that returns "accepted" at once, so
the gap between the two rows is the connector's own cost. "MllpSource+durable": that listener with
a sink that writes the raw message to such a file, one fdatasync per loop iteration, before it
answers: the floor for the engine itself, which does this and also maps, seals, indexes, audits
and commits. The server runs in a child process with
its own event loop; N asyncio clients on 127.0.0.1 each send a 1 KB ORM^O01 and wait for its ACK
before the next (as MLLP senders do). Each run is bounded to a few seconds.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.hl7v2.mllp import MllpDecoder, encode

ORM = (
    b"MSH|^~\\&|RIS|GENHOSP|RADBRIDGE|GENHOSP|20261121101500||ORM^O01|CTRL000123456|P|2.3.1\r"
    b"PID|1||MRN-FAKE-4471902^^^GENHOSP^MR~SSN-FAKE-000^^^USSSA^SS||FAKEPATIENT^ZELDAQUINN^A^^^^L|"
    b"FAKEMOTHER^ANNA|19470228|F||2106-3^White^HL70005|1 FAKE ST^^SPRINGFIELD^ZZ^00000^USA^H||"
    b"^PRN^PH^^^555^0199773|^WPN^PH^^^555^0100000|EN^English^HL70296|S||ACCT-FAKE-771^^^GENHOSP^AN\r"
    b"PV1|1|O|RAD^XR1^01^GENHOSP^^^^^RADIOLOGY||||1234567^FAKEDOC^HAROLD^J^^^MD|||RAD||||1|||"
    b"1234567^FAKEDOC^HAROLD^J^^^MD|OP|VISIT-FAKE-5521|||||||||||||||||||||||||20261121100000\r"
    b"ORC|NW|PLC1001^RIS|ACCFAKE88213^PACS||SC||1^^^20261121101500^^R||20261121101500|TECH01^FAKETECH^TINA|"
    b"|1234567^FAKEDOC^HAROLD^J^^^MD|RAD^XR1|^WPN^PH^^^555^0100001|20261121101500||GENHOSP^General Hospital\r"
    b"OBR|1|PLC1001^RIS|ACCFAKE88213^PACS|CTHEAD^CT HEAD WITHOUT CONTRAST^L|||20261121101500|||||"
    b"|Headache, rule out bleed|||1234567^FAKEDOC^HAROLD^J^^^MD|^WPN^PH^^^555^0100001|ACCFAKE88213|"
    b"CT1|||||CT|||1^^^20261121101500^^R||||R51^Headache^I10|||||20261121103000\r"
    b"NTE|1|L|Patient reports sudden onset headache; no prior imaging on file.\r"
)
CANNED_ACK = encode(
    b"MSH|^~\\&|RADBRIDGE|GENHOSP|RIS|GENHOSP|20261121101500||ACK^O01|0000000000000ABCDEF0|P|2.3.1\r"
    b"MSA|AA|CTRL000123456\r"
)


class BareAck(asyncio.Protocol):
    """Counts end blocks and answers each with the canned ACK."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\x1c")
        if n:
            self.transport.write(CANNED_ACK * n)  # type: ignore[attr-defined]


class RingLog:
    """The cheapest durable write there is: a file written full of zeros and fsync'ed up front, then
    overwritten in a ring (so fdatasync flushes data only, no size or extent change), as a
    preallocated journal would be. Measured here: ~120 us an fdatasync against ~180 appending."""

    SIZE = 64 << 20

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0
        chunk = bytes(1 << 20)
        for _ in range(self.SIZE >> 20):
            os.write(fd, chunk)
        os.fsync(fd)

    def write_durably(self, data: bytes) -> None:
        if self.offset + len(data) > self.SIZE:
            self.offset = 0
        os.pwrite(self.fd, data, self.offset)
        self.offset += len(data)
        os.fdatasync(self.fd)


class DurableAck(asyncio.Protocol):
    """Appends each frame to a shared log; one fdatasync per loop iteration, then the ACKs."""

    log: RingLog
    waiting: list[tuple[asyncio.BaseTransport, int]] = []
    frames: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\x1c")
        if not n:
            return
        cls = DurableAck
        if not cls.waiting:
            asyncio.get_running_loop().call_soon(cls.flush)
        cls.frames.append(data)
        cls.waiting.append((self.transport, n))

    @classmethod
    def flush(cls) -> None:
        frames, waiting, cls.frames, cls.waiting = cls.frames, cls.waiting, [], []
        cls.log.write_durably(b"".join(frames))
        for transport, n in waiting:
            transport.write(CANNED_ACK * n)  # type: ignore[attr-defined]


class DurableSink:
    """MllpSource's sink for "MllpSource+durable": the raw message appended, one fdatasync per loop
    iteration for everything handed in during it, then "accepted"."""

    def __init__(self, log: RingLog) -> None:
        self.log = log
        self.pending: list[tuple[bytes, asyncio.Future[None]]] = []

    async def __call__(self, inbound: Any) -> Any:
        from engine.core.component import Outcome

        future = asyncio.get_running_loop().create_future()
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append((inbound.raw, future))
        await future
        return Outcome("accepted", "m")

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        self.log.write_durably(b"".join(raw for raw, _ in pending))
        for _, future in pending:
            future.set_result(None)


async def _serve(kind: str, port_out: mp.connection.Connection, stop: mp.synchronize.Event) -> None:
    loop = asyncio.get_running_loop()
    log = None
    if "durable" in kind:  # on the disk the engine uses (git-ignored data/), as mllp_bench does
        folder = Path(__file__).resolve().parents[1] / "data"
        folder.mkdir(exist_ok=True)
        file = tempfile.NamedTemporaryFile(dir=folder, prefix="mllp-durable-")  # removed when closed
        log = DurableAck.log = RingLog(file.fileno())
    if kind in ("bare", "durable"):
        server = await loop.create_server(BareAck if kind == "bare" else DurableAck, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        close = server.close
    else:
        from engine.connectors.mllp import MllpSource
        from engine.core.component import ComponentContext, Outcome

        accepted = Outcome("accepted", "m")

        async def at_once(_inbound: object) -> Outcome:
            return accepted

        sink = DurableSink(log) if log is not None else at_once

        async def audit(*_a: object, **_k: object) -> None:
            return None

        config = MllpSource.Config.model_validate({"host": "127.0.0.1", "port": 0})
        source = MllpSource(config, ComponentContext("bench", Path("."), audit, UTC))
        await source.start(sink)  # type: ignore[arg-type]
        port = source.port

        def close() -> None:
            loop.create_task(source.stop())

    port_out.send(port)
    while not stop.is_set():
        await asyncio.sleep(0.05)
    close()


def _server_process(kind: str, port_out: mp.connection.Connection, stop: mp.synchronize.Event) -> None:
    asyncio.run(_serve(kind, port_out, stop))


async def _client(port: int, deadline: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frame = encode(ORM)
    decoder = MllpDecoder()
    clock = time.perf_counter
    try:
        while clock() < deadline:
            t0 = clock()
            writer.write(frame)
            while not decoder.feed(await reader.read(65536)):
                pass
            latencies.append(clock() - t0)
    finally:
        writer.close()


async def _drive(port: int, connections: int, seconds: float) -> tuple[float, list[float]]:
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.wait_for(
        asyncio.gather(*(_client(port, deadline, latencies) for _ in range(connections))), seconds + 10
    )
    return time.perf_counter() - start, latencies


def run(kind: str, connections: int, seconds: float) -> str:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_server_process, args=(kind, child, stop), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("server did not start")
        port = parent.recv()
        asyncio.run(_drive(port, connections, 0.3))  # warm-up
        elapsed, lat = asyncio.run(_drive(port, connections, seconds))
    finally:
        stop.set()
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
    lat.sort()
    p50 = statistics.median(lat) * 1e3
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
    return (
        f"{kind:<18} {connections} conn: {len(lat) / elapsed:>8,.0f} msgs/s   "
        f"ACK latency p50 {p50:.3f} ms  p99 {p99:.3f} ms   ({len(lat):,} messages, {len(ORM)} B each)"
    )


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    for kind in ("bare", "durable", "MllpSource", "MllpSource+durable"):
        for connections in (1, 8):
            print(run(kind, connections, seconds), flush=True)


if __name__ == "__main__":
    main()
