"""Durable encrypted writes of 1 KB messages, each with its audit entry, through the real store path.

Prints the disk's fsync latency, then msgs/s with 1 and with 8 concurrent producers (asyncio tasks,
as MLLP connections are). Each producer waits for its commit before writing the next message.

    .venv/bin/python benchmarks/store_bench.py [--messages 4000] [--dir PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.audit.log import AuditLog, ChainLinker
from engine.security import keyring
from engine.security.blind_index import BlindIndex
from engine.security.vault import AuditSealer, Vault
from engine.store import db
from engine.store.blobs import BlobFolder
from engine.store.messages import Messages
from engine.store.writer import GroupWriter

MESSAGE = (
    "MSH|^~\\&|RIS|GENHOSP|RADBRIDGE|GENHOSP|20261121101500||ORM^O01|CTRL{n:08d}|P|2.3.1\r"
    "PID|1||MRN-FAKE-{n:07d}^^^GENHOSP^MR||FAKEPATIENT^ZELDA^A||19470312|F|||1 FAKE ST^^SPRINGFIELD^ZZ^00000\r"
    "PV1|1|O|RAD^^^GENHOSP||||1234^FAKEDOC^ALAN\r"
    "ORC|NW|PLC{n:07d}|ACC{n:07d}||SC||^^^20261121101500^^S\r"
    "OBR|1|PLC{n:07d}|ACC{n:07d}|CTHEAD^CT HEAD WITHOUT CONTRAST^L|||20261121101500|||||||||||ACC{n:07d}||||||CT\r"
)


def fsync_latency(folder: Path, n: int = 300) -> float:
    path = folder / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        samples = []
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples)


def payload(n: int) -> bytes:
    text = MESSAGE.format(n=n)
    return (text + "NTE|1||" + "x" * (1024 - len(text) - 8) + "\r").encode()


async def run(folder: Path, producers: int, total: int) -> tuple[float, int, float]:
    ring = keyring.generate(dev=True)
    engine = db.create(f"sqlite:///{folder}/bench-{producers}.db")
    db.migrate(engine)
    writer = GroupWriter(engine, ChainLinker("bench"))
    vault, index = Vault(ring), BlindIndex(ring.index_key)
    messages = Messages(engine, vault, BlobFolder(folder / "blobs"), "bench-config", 65536)
    audit = AuditLog(writer, AuditSealer(ring), "bench")
    per = total // producers
    latencies: list[float] = []

    async def producer(p: int) -> None:
        for i in range(per):
            n = p * per + i
            t = time.perf_counter()
            message_id, item = messages.receive(
                "bench",
                "hl7v2 ORM^O01",
                payload(n),
                destinations=["out"],
                indexes={"accession": index("accession", f"ACC{n:07d}"), "mrn": index("mrn", f"MRN-FAKE-{n:07d}")},
            )
            item.audit.append(audit.event("message.received", actor="peer:127.0.0.1", record_ids=[message_id]))
            await writer.awrite(item)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(producer(p) for p in range(producers)))
    elapsed = time.perf_counter() - start
    batches = writer.batches
    writer.close()
    engine.dispose()
    latencies.sort()
    return per * producers / elapsed, batches, latencies[int(len(latencies) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=8000)
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure (default: ./data)")
    args = parser.parse_args()
    base = args.dir or Path("data")
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="store-bench-", dir=base))
    try:
        print(f"disk fsync latency (4 KB append, median): {fsync_latency(folder) * 1e3:.3f} ms")
        for producers in (1, 8):
            rate, batches, p99 = asyncio.run(run(folder, producers, args.messages))
            print(
                f"{producers} producer(s): {rate:,.0f} msgs/s durable, encrypted, audited "
                f"({args.messages / batches:.1f} msgs per commit, p99 {p99 * 1e3:.2f} ms)"
            )
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
