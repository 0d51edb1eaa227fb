"""The webhook listener: uvicorn + a Starlette router inside the engine's loop, auth, limits, responses."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import ssl
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from engine.connectors.http.asgi import Config, Server
from engine.connectors.http.config import WebhookSourceConfig, allow_network
from engine.connectors.http.payload import PayloadError, parse
from engine.core.component import ComponentContext, Inbound, Outcome, Sink
from engine.core.registry import register
from engine.security.tls import server_context_for

log = logging.getLogger("radbridge.webhook")
_START_TIMEOUT_S = 10.0
_STOP_GRACE_S = 10  # in-flight requests get this long to be answered on stop()
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 408: "Request Timeout",
           413: "Content Too Large", 422: "Unprocessable Content", 500: "Internal Server Error",
           503: "Service Unavailable"}  # fmt: skip
_STATUS = {"accepted": 202, "duplicate": 202, "filtered": 202, "invalid": 400, "refused": 422, "unavailable": 503}


def problem(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem document: names and counts only, never a value the sender sent."""
    body = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status, headers=headers, media_type="application/problem+json")


def _bind(host: str, port: int) -> socket.socket:
    """Bind here rather than in uvicorn: errors surface in start() (uvicorn would sys.exit), and
    port 0 yields its real port before serving begins."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name: take what it resolves to first
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.create_server((host, port), family=family, reuse_port=False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@register("source", "webhook")
class WebhookSource:
    """An HTTP(S) endpoint PACS notifications are POSTed to (see engine.connectors.http for formats).

    Checks, in order: sender address (403), credentials (401), body size (413) and, for HMAC,
    the signature over the raw body (401); each refusal is audited and nothing reaches the sink.
    Then the body is parsed into a Notification and handed to the sink; a body that does not
    parse is handed over too (decoded = the PayloadError) so the engine keeps it for review.

    ==========================  ===========================================
    outcome                     response
    ==========================  ===========================================
    accepted/duplicate/filtered 202 {"status": ..., "id": message id}
    invalid, unparseable body   400 problem naming the field at fault
    refused                     422 problem
    unavailable, sink error     503 problem + Retry-After (not stored: resend)
    ==========================  ===========================================
    """

    Config = WebhookSourceConfig

    def __init__(self, config: WebhookSourceConfig, ctx: ComponentContext) -> None:
        self.config = config
        self.ctx = ctx
        self._tls: ssl.SSLContext | None = None
        if config.tls is not None:
            self._tls = server_context_for(config.tls, ctx.root, f"webhook source of {ctx.channel}")
        auth = config.auth
        # Only a digest of the token is kept and compared: equal lengths, constant time.
        self._token = hashlib.sha256(auth.bearer.get_secret_value().encode()).digest() if auth.bearer else None
        self._hmac = auth.hmac
        self._networks = [n for n in map(allow_network, config.allow or []) if n is not None]
        self._router = Router([Route(config.path, self._notify, methods=["POST"])], redirect_slashes=False)
        self._sink: Sink | None = None
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None  # the bound port, once started

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The router, with `Connection: close` on every response. Notifications are rare, and a
        sender's idle keep-alive connection (Orthanc's libcurl keeps one) would hold stop() until
        the graceful timeout: over TLS the close waits for the peer's close_notify."""

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self._router(scope, receive, closing)

    # -- lifecycle

    async def start(self, sink: Sink) -> list[str]:
        self._sink = sink
        cfg = self.config
        sock = _bind(cfg.host, cfg.port)
        self.port = sock.getsockname()[1]
        config = Config(
            self._app, self._tls, host=cfg.host, port=self.port, http="h11", ws="none", lifespan="off",
            interface="asgi3", log_config=None, access_log=False, server_header=False,
            proxy_headers=False,  # X-Forwarded-For must not let a sender pick the address the allow-list sees
            limit_concurrency=cfg.max_connections, timeout_graceful_shutdown=_STOP_GRACE_S,
        )  # fmt: skip
        self._server = Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                while not self._server.started and not self._task.done():
                    await asyncio.sleep(0.01)
        except TimeoutError:
            pass
        if not self._server.started:
            await self.stop()
            sock.close()
            raise RuntimeError(f"webhook source of {self.ctx.channel}: the HTTP server did not start")
        shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        scheme, note = "http", ""
        if cfg.tls is not None:
            scheme = "https"
            note = f" (tls {cfg.tls.min_version}+{', client certificates' if cfg.tls.ca else ''})"
        url = f"{scheme}://{shown}:{self.port}{cfg.path}{note}"
        log.info("webhook %s listening on %s", self.ctx.channel, url)
        return [url]

    async def stop(self) -> None:
        """Stop accepting; requests in flight get up to _STOP_GRACE_S to be answered."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), _STOP_GRACE_S + 5)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except BaseException as exc:  # noqa: BLE001 - a crashed server is already stopped; say why
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.error("webhook %s: server ended with %s", self.ctx.channel, type(exc).__name__)
        log.info("webhook %s stopped", self.ctx.channel)

    # -- one request

    async def _notify(self, request: Request) -> Response:
        started = time.perf_counter()
        ip, port = request.client or ("?", 0)
        peer = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        try:
            response = await self._handle(request, ip, peer)
        except Exception as exc:  # noqa: BLE001 - answer 500 with a type name, never a traceback with content
            log.error("webhook %s: request from %s failed (%s)", self.ctx.channel, peer, type(exc).__name__)
            response = problem(500, "internal error")
        if log.isEnabledFor(logging.DEBUG):
            ms = (time.perf_counter() - started) * 1000
            log.debug("webhook %s: %s from %s, %d, %.1f ms", self.ctx.channel, request.method, peer,
                      response.status_code, ms)  # fmt: skip
        return response

    async def _handle(self, request: Request, ip: str, peer: str) -> Response:
        cfg = self.config
        if self._networks and not self._ip_allowed(ip):
            await self._audit("webhook.refused", ip, peer, reason="address not allowed")
            return problem(403, "sender not allowed")
        reason = self._credentials(request.headers)
        if reason is not None:
            return await self._unauthorized(ip, peer, reason)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            await self._audit("message.oversize", ip, peer, limit=cfg.max_body_bytes, bytes=int(declared))
            return problem(413, f"body larger than {cfg.max_body_bytes} bytes")
        body = bytearray()
        try:
            async with asyncio.timeout(cfg.read_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > cfg.max_body_bytes:
                        await self._audit("message.oversize", ip, peer, limit=cfg.max_body_bytes)
                        return problem(413, f"body larger than {cfg.max_body_bytes} bytes")
        except TimeoutError:
            await self._audit("message.truncated", ip, peer, reason="read timeout", bytes=len(body))
            return problem(408, f"body not received within {cfg.read_timeout_s:g} s")
        except ClientDisconnect:
            await self._audit("message.truncated", ip, peer, reason="connection closed", bytes=len(body))
            return problem(400, "connection closed before the body ended")
        raw = bytes(body)
        if self._hmac is not None and not self._signature_ok(request.headers.get(self._hmac.header, ""), raw):
            return await self._unauthorized(ip, peer, "invalid signature")
        try:
            notification = parse(raw, cfg.format)
        except PayloadError as exc:
            inbound = Inbound(raw=raw, kind="notification", peer=peer, decoded=exc)
            outcome = await self._deliver(inbound, peer)
            if outcome.status == "unavailable":
                return self._unavailable(outcome)
            status = 422 if outcome.status == "refused" else 400  # unreadable: never 202
            return problem(status, str(exc), field=exc.key, id=outcome.message_id)
        encoded = notification.to_json()
        inbound = Inbound(raw=encoded, kind="notification", peer=peer, decoded=notification,
                          dedup=hashlib.sha256(encoded).hexdigest(), type=notification.event)  # fmt: skip
        outcome = await self._deliver(inbound, peer)
        status = _STATUS[outcome.status]
        if status == 202:
            return JSONResponse({"status": outcome.status, "id": outcome.message_id}, 202)
        if status == 503:
            return self._unavailable(outcome)
        text = outcome.problem.text if outcome.problem else f"notification {outcome.status}"
        return problem(status, text, id=outcome.message_id)

    async def _deliver(self, inbound: Inbound, peer: str) -> Outcome:
        assert self._sink is not None
        try:
            return await self._sink(inbound)
        except Exception as exc:  # noqa: BLE001 - the sender must hear "not stored", never 202
            log.error("webhook %s: sink failed for %s (%s)", self.ctx.channel, peer, type(exc).__name__)
            return Outcome("unavailable")

    def _unavailable(self, outcome: Outcome) -> JSONResponse:
        text = outcome.problem.text if outcome.problem else "notification not stored; send it again later"
        return problem(503, text, headers={"Retry-After": str(self.config.retry_after_s)})

    # -- checks

    def _credentials(self, headers: Headers) -> str | None:
        """Why the request's credentials fail before its body is read, or None."""
        if self._token is not None:
            value = headers.get("authorization")
            if not value:
                return "missing credentials"
            scheme, _, token = value.partition(" ")
            given = hashlib.sha256(token.strip().encode("latin-1")).digest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, self._token):
                return "invalid credentials"
        elif self._hmac is not None and not headers.get(self._hmac.header):
            return "missing signature"
        return None

    def _signature_ok(self, value: str, body: bytes) -> bool:
        assert self._hmac is not None
        value, prefix = value.strip(), f"{self._hmac.algorithm}="
        if value.lower().startswith(prefix):
            value = value[len(prefix) :]
        try:
            given = bytes.fromhex(value)
        except ValueError:
            return False
        expected = hmac.new(self._hmac.secret.get_secret_value().encode(), body, self._hmac.algorithm).digest()
        return hmac.compare_digest(given, expected)

    def _ip_allowed(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)

    async def _unauthorized(self, ip: str, peer: str, reason: str) -> JSONResponse:
        await self._audit("webhook.refused", ip, peer, reason=reason)
        headers = {"WWW-Authenticate": 'Bearer realm="radbridge"'} if self._token is not None else None
        return problem(401, "credentials missing or invalid", headers=headers)

    async def _audit(self, action: str, ip: str, peer: str, **detail: Any) -> None:
        log.warning("webhook %s: %s from %s (%s)", self.ctx.channel, action, peer, detail.get("reason", "oversize"))
        try:
            await self.ctx.audit(action, actor=f"peer:{ip}", peer=peer, outcome="denied",
                                 detail={"channel": self.ctx.channel, **detail})  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - auditing must not take the listener down; it is logged
            log.error("webhook %s: audit of %s failed (%s)", self.ctx.channel, action, type(exc).__name__)
