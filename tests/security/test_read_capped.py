"""read_capped: an HTTP answer larger than the limit is refused, declared (Content-Length) or streamed
(chunked, no length), over a real socket on loopback; one within the limit comes back whole."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from engine.core.errors import PermanentError
from engine.fhir.client import FhirRefused
from engine.security.oauth2 import read_capped


async def _answer(head: bytes, body: bytes) -> tuple[asyncio.Server, str]:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


def _chunked(body: bytes, size: int = 1000) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


CASES = {
    "declared": (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n", b"x" * 5000),
    "streamed": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", _chunked(b"x" * 5000)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("error", [PermanentError, FhirRefused])
async def test_an_answer_over_the_limit_is_refused_with_the_callers_error(case: str, error: type) -> None:
    server, url = await _answer(*CASES[case])
    async with server, httpx.AsyncClient() as client, client.stream("GET", url) as response:
        with pytest.raises(error, match=r"^model x: infer: answer larger than 4096 bytes$"):
            await read_capped(response, 4096, "model x: infer", error)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_an_answer_within_the_limit_comes_back_whole(case: str) -> None:
    server, url = await _answer(*CASES[case])
    async with server, httpx.AsyncClient() as client, client.stream("GET", url) as response:
        assert await read_capped(response, 5000, "model x: infer") == b"x" * 5000
