"""SIGHUP reloads only the channels whose files changed; a bad change is refused whole."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from engine.hl7v2.mllp import MllpDecoder, encode
from tests.e2e.harness import _wait_line, free_port, make_project, orm, start_engine, stop


def _orders(port: int, accept: str) -> str:
    return f"name: orders\nsource: {{kind: mllp, host: 127.0.0.1, port: {port}, accept_types: [{accept}]}}\n"


def test_reload_restarts_only_the_changed_channel(tmp_path: Path) -> None:
    orders_port, adt_port = free_port(), free_port()
    root = make_project(
        tmp_path / "p",
        {
            "orders.yaml": _orders(orders_port, "ORM^O01"),
            "adt.yaml": f"name: adt\nsource: {{kind: mllp, host: 127.0.0.1, port: {adt_port}}}\n",
        },
    )
    engine = start_engine(root)
    try:

        async def scenario() -> list[str]:
            # A connection to the adt channel stays open across the reload.
            reader, writer = await asyncio.open_connection("127.0.0.1", adt_port)
            decoder = MllpDecoder()

            async def exchange(message: bytes) -> bytes:
                writer.write(encode(message))
                frames: list[bytes] = []
                while not frames:
                    frames = decoder.feed(await reader.read(65536))
                return frames[0]

            assert b"MSA|AA" in await exchange(orm("R1", "ACCR1"))
            (root / "channels" / "orders.yaml").write_text(_orders(orders_port, "OMI^O23"))
            engine.send_signal(signal.SIGHUP)
            lines = await asyncio.to_thread(_wait_line, engine, "reload", 30)
            assert b"MSA|AA" in await exchange(orm("R2", "ACCR2"))  # same connection, still served
            (root / "channels" / "orders.yaml").write_text("name: orders\nsource: {kind: mllp, prot: 1}\n")
            engine.send_signal(signal.SIGHUP)
            lines += await asyncio.to_thread(_wait_line, engine, "reload", 30)
            assert b"MSA|AA" in await exchange(orm("R3", "ACCR3"))
            writer.close()
            return lines

        lines = asyncio.run(scenario())
        assert "reloaded: orders" in lines
        refused = [line for line in lines if line.startswith("reload refused")]
        assert refused and "channels/orders.yaml:2:22: unknown key 'prot' (did you mean 'port'?)" in refused[0]
    finally:
        stop(engine)
