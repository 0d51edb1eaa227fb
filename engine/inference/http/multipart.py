"""A multipart/related body of DICOM instances (RFC 2387; PS3.18 §8.6.1.2 for STOW-RS), streamed.

httpx builds multipart/form-data only, so the body is written here. It is streamed part by part
from the instance bytes the job already holds instead of being joined into one bytes object: a CT
study is hundreds of megabytes and joining would hold it twice. Its length is known in advance and
sent as Content-Length, so servers that refuse chunked uploads accept it.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator


class RelatedBody:
    """One part per instance, each `Content-Type: application/dicom`."""

    def __init__(self, instances: list[bytes]) -> None:
        self._instances = instances
        self.boundary = _boundary(instances)
        self.content_type = f'multipart/related; type="application/dicom"; boundary={self.boundary}'
        self._head = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self._tail = f"--{self.boundary}--\r\n".encode()
        self.length = sum(len(self._head) + len(i) + 2 for i in instances) + len(self._tail)

    async def stream(self) -> AsyncIterator[bytes]:
        for instance in self._instances:
            yield self._head
            yield instance
            yield b"\r\n"
        yield self._tail


def _boundary(instances: list[bytes]) -> str:
    """A random boundary that occurs in no instance (pixel data is arbitrary bytes)."""
    while True:
        boundary = "radbridge-" + secrets.token_hex(16)
        marker = boundary.encode()
        if not any(marker in instance for instance in instances):
            return boundary
