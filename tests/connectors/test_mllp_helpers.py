"""Helpers shared by the MLLP connector tests (no tests here): a recording sink and audit hook, a
running source, and a minimal client on real sockets (127.0.0.1 only, every wait bounded)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from engine.connectors.mllp import MllpSource
from engine.core.component import ComponentContext
from engine.hl7v2 import Message
from engine.hl7v2.mllp import MllpDecoder, encode
from tests.connectors.fakes import Recorder
from tests.connectors.fakes import context as fake_context
from tests.hl7v2.samples import ADT_A08, OMI_O23, ORM_O01

WAIT = 5.0  # upper bound of any single wait in these tests


def orm(control_id: str = "CTRL0001", *, sample: str = ORM_O01) -> bytes:
    """A realistic message (fake PHI) with the given MSH-10."""
    original = Message.parse(sample).control_id
    assert original is not None
    return sample.replace(f"|{original}|", f"|{control_id}|", 1).encode()


def omi(control_id: str = "CTRL0002", accept: str = "AL") -> bytes:
    """OMI^O23 v2.5.1 with MSH-15 (accept acknowledgement type) set to `accept`."""
    return orm(control_id, sample=OMI_O23).replace(b"|||AL|NE||", f"|||{accept}|NE||".encode(), 1)


def adt(control_id: str = "CTRL0003") -> bytes:
    return orm(control_id, sample=ADT_A08)


def context(rec: Recorder, root: Path = Path("/")) -> ComponentContext:
    return fake_context(rec, root, channel="orders")


@asynccontextmanager
async def running_source(rec: Recorder, root: Path = Path("/"), **options: Any) -> AsyncIterator[MllpSource]:
    config = MllpSource.Config.model_validate({"host": "127.0.0.1", "port": 0, **options})
    source = MllpSource(config, context(rec, root))
    await source.start(rec.sink)
    try:
        yield source
    finally:
        await asyncio.wait_for(source.stop(), WAIT * 3)


class Client:
    """A raw MLLP client: write anything, read whole frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = MllpDecoder(1 << 20)
        self.pending: list[bytes] = []

    @classmethod
    async def connect(cls, port: int, tls: Any = None) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None), WAIT
        )
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self, timeout: float = WAIT) -> bytes | None:
        """The next frame, or None when the server closed the connection."""
        async with asyncio.timeout(timeout):
            while not self.pending:
                try:
                    data = await self.reader.read(65536)
                except (ConnectionError, OSError):
                    return None
                if not data:
                    return None
                self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    async def send(self, message: bytes, timeout: float = WAIT) -> Message:
        await self.write(encode(message))
        ack = await self.frame(timeout)
        assert ack is not None, "connection closed instead of an ACK"
        return Message.parse(ack)

    async def closed(self, timeout: float = WAIT) -> bool:
        """True when the server closes the connection (without sending a frame) within timeout."""
        return await self.frame(timeout) is None

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), WAIT)
        except (ConnectionError, OSError, TimeoutError):
            pass


def msa(ack: Message) -> tuple[str | None, str | None]:
    return ack.get("MSA-1"), ack.get("MSA-2")


def err(ack: Message) -> dict[str, str | None]:
    return {
        "code": ack.get("ERR-3.1"),
        "location": ack.get("ERR-2"),
        "segment": ack.get("ERR-2.1"),
        "field": ack.get("ERR-2.3"),
        "text": ack.get("ERR-8"),
        "severity": ack.get("ERR-4"),
    }
