"""A small RFC 5425 collector for tests: TLS (or plain TCP) on 127.0.0.1, octet-counted frames recorded,
plus a strict-enough RFC 5424 parser for what the forwarder sends."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass, field
from typing import Any


class FramingError(Exception):
    pass


async def read_frames(reader: Any, on_frame: Any) -> None:
    """Octet counting: MSG-LEN (no leading zero) SP SYSLOG-MSG, repeated until EOF."""
    while True:
        digits = b""
        while True:
            ch = await reader.read(1)
            if not ch:
                if digits:
                    raise FramingError("EOF inside MSG-LEN")
                return
            if ch == b" ":
                break
            if not ch.isdigit() or len(digits) > 9 or (not digits and ch == b"0"):
                raise FramingError(f"bad MSG-LEN byte {ch!r}")
            digits += ch
        if not digits:
            raise FramingError("empty MSG-LEN")
        on_frame(await reader.readexactly(int(digits)))


@dataclass
class Collector:
    """Records every frame; `raw` keeps every byte received (for leak scans), `connections` counts them."""

    tls: ssl.SSLContext | None
    port: int = 0
    frames: list[bytes] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    frames_per_connection: list[list[bytes]] = field(default_factory=list)
    _server: asyncio.base_events.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self) -> Collector:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        mine: list[bytes] = []
        self.frames_per_connection.append(mine)
        self.connections += 1
        recording = _Recording(reader, self.raw)

        def on_frame(data: bytes) -> None:
            self.frames.append(data)
            mine.append(data)

        try:
            await read_frames(recording, on_frame)
        except (FramingError, asyncio.IncompleteReadError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def stop(self) -> None:
        """Close the listener and every connection, as a collector going down does."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.close()
        if self._tasks:  # closing the transport ends each reader with EOF
            _, pending = await asyncio.wait(list(self._tasks), timeout=2)
            for task in pending:
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async def poll() -> None:
            while not predicate(self):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), timeout)


class _Recording:
    """A reader that also appends every byte to `raw` (frames are parsed from the same bytes)."""

    def __init__(self, reader: asyncio.StreamReader, raw: bytearray) -> None:
        self.reader, self.raw = reader, raw

    async def read(self, n: int) -> bytes:
        data = await self.reader.read(n)
        self.raw += data
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self.reader.readexactly(n)
        self.raw += data
        return data


# -- RFC 5424 parsing --------------------------------------------------------------------------------

_HEADER = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")
_SD_NAME = r"[!#-<>-\\^-~]{1,32}"  # PRINTUSASCII except '=', SP, ']', '"'


@dataclass
class SyslogMessage:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: bytes

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8


def parse(message: bytes) -> SyslogMessage:
    match = _HEADER.match(message)
    if not match:
        raise ValueError(f"not an RFC 5424 header: {message[:80]!r}")
    rest = message[match.end() :].decode("utf-8")
    sd: dict[str, dict[str, str]] = {}
    if rest.startswith("-"):
        rest = rest[1:]
    else:
        while rest.startswith("["):
            element = re.match(rf"\[({_SD_NAME})", rest)
            assert element, rest[:60]
            sd_id, pos, params = element.group(1), element.end(), {}
            while rest[pos] == " ":
                name = re.match(rf" ({_SD_NAME})=\"", rest[pos:])
                assert name, rest[pos : pos + 60]
                pos += name.end()
                value = []
                while rest[pos] != '"':
                    if rest[pos] == "\\" and rest[pos + 1] in '"\\]':
                        pos += 1
                    else:
                        assert rest[pos] != "]", "unescaped ] in PARAM-VALUE"
                    value.append(rest[pos])
                    pos += 1
                params[name.group(1)] = "".join(value)
                pos += 1
            assert rest[pos] == "]"
            sd[sd_id] = params
            rest = rest[pos + 1 :]
    msg = b""
    if rest:
        assert rest.startswith(" "), "SP required before MSG"
        msg = rest[1:].encode("utf-8")
    return SyslogMessage(int(match.group(1)), *(g.decode() for g in match.groups()[1:]), sd=sd, msg=msg)  # type: ignore[misc]
