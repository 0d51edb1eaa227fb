"""MLLP ingest through the whole engine: parse, duplicate check, map, encrypt, durable store, audit, ACK.

Starts `radbridge run` in its own process on a throwaway project (channel: MLLP source, the shipped
ORM^O01 mapping, no destinations) and drives it from this process with 1 and with 8 connections,
each sending a 1 KB ORM^O01 and waiting for its ACK before the next. Prints msgs/s and ACK
latency p50/p99.

    .venv/bin/python benchmarks/mllp_bench.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.hl7v2.mllp import MllpDecoder, encode  # noqa: E402
from engine.security import keyring  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orm(n: int, conn: int) -> bytes:
    text = (
        f"MSH|^~\\&|RIS|GENHOSP|RADBRIDGE|GENHOSP|20261121101500||ORM^O01|B{conn}-{n:08d}|P|2.3.1\r"
        f"PID|1||MRN-FAKE-{n:07d}^^^GENHOSP^MR||FAKEPATIENT^ZELDA^A||19470312|F|||1 FAKE ST^^SPRINGFIELD^ZZ^00000\r"
        "PV1|1|O|RAD^^^GENHOSP||||1234^FAKEDOC^ALAN\r"
        f"ORC|NW|PLC{n:07d}|ACC{conn}{n:07d}||SC||^^^20261121101500^^S\r"
        f"OBR|1|PLC{n:07d}|ACC{conn}{n:07d}|CTHEAD^CT HEAD WITHOUT CONTRAST^L|||20261121101500"
        f"|||||||||||ACC{conn}{n:07d}||||||CT\r"
    )
    return (text + "NTE|1||" + "x" * max(0, 1024 - len(text) - 8) + "\r").encode()


def make_project(root: Path, port: int) -> None:
    (root / "config").mkdir(parents=True)
    (root / "channels").mkdir()
    shutil.copytree(REPO / "mappings", root / "mappings")
    (root / "config" / "engine.yaml").write_text(
        f"node: {{id: bench}}\nkeys: {{source: file, file: keys/keyring.json}}\n"
        f"listeners: [{{name: api, host: 127.0.0.1, port: {free_port()}}}]\n"
    )
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    (root / "channels" / "orders.yaml").write_text(
        textwrap.dedent(f"""\
        name: orders
        source: {{kind: mllp, host: 127.0.0.1, port: {port}, accept_types: [ORM^O01]}}
        mapping: mappings/orm-to-order.yaml
        """)
    )


async def connection(port: int, conn: int, stop_at: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    decoder = MllpDecoder()
    n = 0
    while time.perf_counter() < stop_at:
        n += 1
        start = time.perf_counter()
        writer.write(encode(orm(n, conn)))
        frames: list[bytes] = []
        while not frames:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("engine closed the connection")
            frames = decoder.feed(data)
        if b"MSA|AA" not in frames[0]:
            raise RuntimeError("not acknowledged AA")
        latencies.append(time.perf_counter() - start)
    writer.close()


async def drive(port: int, connections: int, seconds: float) -> tuple[float, float, float]:
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(connection(port, c, start + seconds, latencies) for c in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return len(latencies) / elapsed, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    base = REPO / "data"
    base.mkdir(exist_ok=True)
    for connections in (1, 8):
        folder = Path(tempfile.mkdtemp(prefix="mllp-bench-", dir=base))  # the disk the engine uses
        port = free_port()
        make_project(folder, port)
        prefix = os.environ.get("BENCH_ENGINE_PREFIX", "").split()  # e.g. "py-spy record -o x --" to profile
        engine = subprocess.Popen(
            [*prefix, sys.executable, "-m", "engine.cli", "run", "--root", str(folder)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            while not (line := engine.stdout.readline()).startswith("ready"):  # type: ignore[union-attr]
                if not line:
                    raise SystemExit("engine did not start")
            rate, p50, p99 = asyncio.run(drive(port, connections, args.seconds))
            print(f"mllp ingest, {connections} connection(s): {rate:,.0f} msgs/s, "
                  f"ACK latency p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")  # fmt: skip
        finally:
            engine.send_signal(signal.SIGTERM)
            engine.wait(timeout=30)
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
