"""Serving an ASGI app inside the engine's event loop (the webhook source, the engine's own API)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn


class Config(uvicorn.Config):
    """uvicorn's own TLS options have no version floor: serve with the engine's context instead
    (set after load(); `ssl_context_factory` would do the same but needs uvicorn 0.47)."""

    def __init__(self, app: Any, tls: ssl.SSLContext | None, **kwargs: Any) -> None:
        kwargs.setdefault("server_header", False)  # no product/version banner for scanners
        super().__init__(app, **kwargs)
        self._tls = tls

    def load(self) -> None:
        super().load()
        self.ssl = self._tls
        if self._tls is not None:
            self.loaded_app = _Https(self.loaded_app)


class _Https:
    """uvicorn reads the scheme from the transport's `sslcontext`, which uvloop's TLS transport does not
    report: a TLS listener would tell the app "http" (wrong cookie names, Origin checks, no HSTS)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "scheme": "https" if scope["type"] == "http" else "wss"}
        await self.app(scope, receive, send)


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the engine owns SIGINT/SIGTERM, not uvicorn
        yield
