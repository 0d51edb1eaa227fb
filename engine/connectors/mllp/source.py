"""The MLLP listener: connections, framing, timeouts, allow-lists, and the ACK each outcome earns."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import ssl
import time
from datetime import datetime
from typing import Any

from engine.connectors.mllp.client import _close, _nodelay
from engine.connectors.mllp.config import MllpSourceConfig, _allow_entry
from engine.core.component import ComponentContext, Inbound, Outcome, Problem, Sink
from engine.core.registry import register
from engine.hl7v2 import AckError, Hl7ParseError, Message, build_ack, sniff_control_id
from engine.hl7v2.ack import new_ack_control_id
from engine.hl7v2.mllp import FrameTooLarge, MllpDecoder, encode
from engine.security.tls import peer_common_name, server_context_for

log = logging.getLogger("radbridge.mllp")
_READ_CHUNK = 65536
_ACK_MAX_BYTES = 1 << 20
_STOP_GRACE_S = 10.0


# --- source ------------------------------------------------------------------------------------


class _Conn:
    __slots__ = ("cn", "id", "ip", "peer", "reading", "task")

    def __init__(self, conn_id: int) -> None:
        self.id = conn_id
        self.ip = ""
        self.peer = ""
        self.cn: str | None = None
        self.reading = True  # waiting for the peer (handshake or read): safe to cancel on stop
        self.task: asyncio.Task[None] | None = None


_DEFAULT_ERRORS = {
    "invalid": AckError(207, "message content is invalid"),
    "refused": AckError(207, "message refused by this channel"),
    "unavailable": AckError(207, "message not stored: the engine is unavailable, send it again later"),
}
_TYPE_REFUSED = AckError(200, "message type not accepted on this channel")
_COMMIT = {"AA": "CA", "AE": "CE", "AR": "CR"}


def _ack_error(problem: Problem | None, default: AckError) -> AckError:
    if problem is None:
        return default
    return AckError(problem.code, problem.text, problem.segment, problem.sequence, problem.field)


@register("source", "mllp")
class MllpSource:
    """An MLLP listener (plain TCP or TLS, optional mutual TLS and peer allow-list).

    Each frame is parsed, handed to the sink as an Inbound (also when unparseable, so the engine
    keeps it for review), and answered from the Outcome the sink returns:

    ========================  ============  =========================================
    outcome                   original      enhanced (MSH-15 present, ack_mode enhanced)
    ========================  ============  =========================================
    accepted/duplicate/
    filtered                  AA            CA
    invalid                   AE + ERR      CE + ERR
    refused                   AR + ERR      CR + ERR
    unavailable, sink error   AR + ERR      CE + ERR  (not stored: the sender must resend)
    ========================  ============  =========================================

    A message whose MSH cannot be read gets AE (AR when refused or unavailable) built without the
    inbound header, acknowledging the control id sniffed from the bytes; such messages never get
    AA/CA. A type outside `accept_types` is answered AR/CR with ERR 200 whatever the sink said
    (the runtime should return "refused" for it itself; `accepts()` tells it). In enhanced mode
    MSH-15 decides whether the commit ACK is sent at all (AL always, NE never, ER only when not
    CA, SU only when CA). The application acknowledgement of enhanced mode (MSH-16) is the
    runtime's job, sent later on its own connection; this class sends only commit ACKs.

    ACKs carry their own MSH-10 from `new_ack_control_id()`: 20 characters, unique per process
    and, with overwhelming probability, across processes (see _AckIds).

    Messages on one connection are handled one at a time, in order; connections run concurrently.
    Connection-level events go to ctx.audit: connection.refused (allow-list, TLS failure, too many
    connections), message.oversize, message.truncated (peer closed or read_timeout_s passed
    mid-frame: nothing is acknowledged) and connection.garbage (bytes outside frames, once per
    connection). Empty frames are ignored (some senders use them as keep-alives).
    """

    Config = MllpSourceConfig

    def __init__(self, config: MllpSourceConfig, ctx: ComponentContext) -> None:
        self.config = config
        self.ctx = ctx
        self._tls: ssl.SSLContext | None = None
        if config.tls is not None:
            self._tls = server_context_for(config.tls, ctx.root, f"mllp source of {ctx.channel}")
        allow = config.allow or []
        self._networks = [n for n in map(_allow_entry, allow) if n is not None]
        self._names = frozenset(a for a in allow if _allow_entry(a) is None)
        accept = config.accept_types
        self._accept = None if accept is None else frozenset(accept)
        self._server: asyncio.Server | None = None
        self._sink: Sink | None = None
        self._conns: dict[int, _Conn] = {}
        self._ids = itertools.count(1)
        self._stopping = False
        self.port: int | None = None  # the bound port, once started

    # -- lifecycle

    async def start(self, sink: Sink) -> list[str]:
        self._sink = sink
        self._stopping = False
        self._server = await asyncio.start_server(
            self._on_connect, self.config.host, self.config.port, reuse_address=True
        )
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        note = ""
        if self.config.tls is not None:
            note = f" (tls {self.config.tls.min_version}+{', client certificates' if self.config.tls.ca else ''})"
        log.info("mllp %s listening on %s:%s%s", self.ctx.channel, shown, self.port, note)
        return [f"mllp://{shown}:{self.port}{note}"]

    async def stop(self) -> None:
        """Stop accepting; let a message being processed finish and get its ACK; close the rest."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            if conn.reading and conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in self._conns.values() if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        log.info("mllp %s stopped", self.ctx.channel)

    @property
    def connections(self) -> int:
        return len(self._conns)

    def accepts(self, message_type: str | None) -> bool:
        """Whether `accept_types` lets this type in ('ORM^O01'; None when unknown)."""
        if self._accept is None:
            return True
        if message_type is None:
            return False
        return message_type in self._accept or message_type.partition("^")[0] in self._accept

    # -- connections

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Called synchronously from connection_made: pausing now means no byte reaches the plain
        # stream before a TLS upgrade takes the transport over.
        writer.transport.pause_reading()
        conn = _Conn(next(self._ids))
        self._conns[conn.id] = conn
        conn.task = asyncio.get_running_loop().create_task(self._serve(conn, reader, writer))
        conn.task.add_done_callback(lambda _t: self._conns.pop(conn.id, None))

    async def _audit(self, action: str, conn: _Conn, outcome: str = "failure", **detail: Any) -> None:
        actor = f"peer:{conn.cn}" if conn.cn else f"peer:{conn.ip}"
        try:
            await self.ctx.audit(
                action,
                actor=actor,
                peer=conn.peer,
                outcome=outcome,
                detail={"channel": self.ctx.channel, "connection": conn.id, **detail},
            )
        except Exception as exc:  # noqa: BLE001 - auditing must not take the listener down; it is logged
            log.error("mllp %s conn %d: audit of %s failed (%s)", self.ctx.channel, conn.id, action, type(exc).__name__)

    async def _refuse(self, conn: _Conn, writer: asyncio.StreamWriter, reason: str) -> None:
        _close(writer)
        conn.reading = False  # a stop() now waits for the audit entry instead of cancelling it
        log.warning("mllp %s conn %d from %s refused: %s", self.ctx.channel, conn.id, conn.peer, reason)
        await self._audit("connection.refused", conn, "denied", reason=reason)

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        conn.ip = str(peername[0])
        conn.peer = f"[{conn.ip}]:{peername[1]}" if ":" in conn.ip else f"{conn.ip}:{peername[1]}"
        try:
            if self._stopping:
                _close(writer)
                return
            if len(self._conns) > self.config.max_connections:
                await self._refuse(conn, writer, "too many connections")
                return
            if self._networks and not self._ip_allowed(conn.ip):
                await self._refuse(conn, writer, "address not allowed")
                return
            _nodelay(writer)
            if self._tls is not None:
                try:
                    await writer.start_tls(self._tls, ssl_handshake_timeout=self.config.read_timeout_s)
                except OSError as exc:
                    reason = getattr(exc, "reason", None) or type(exc).__name__
                    await self._refuse(conn, writer, f"TLS handshake failed ({reason})")
                    return
                conn.cn = peer_common_name(writer.get_extra_info("peercert"))
                if self._names and conn.cn not in self._names:
                    await self._refuse(conn, writer, "certificate name not allowed")
                    return
            else:
                writer.transport.resume_reading()
            log.info("mllp %s conn %d from %s opened", self.ctx.channel, conn.id, conn.peer)
            await self._session(conn, reader, writer)
        except asyncio.CancelledError:
            log.info("mllp %s conn %d closed by stop", self.ctx.channel, conn.id)
            raise
        except Exception as exc:  # noqa: BLE001 - one broken connection must not take the listener down
            log.error("mllp %s conn %d failed (%s)", self.ctx.channel, conn.id, type(exc).__name__)
        finally:
            _close(writer)

    def _ip_allowed(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)

    async def _session(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        decoder = MllpDecoder(cfg.max_message_bytes)
        frame_deadline = 0.0
        seen_start = 0
        garbage_reported = False
        messages = 0
        while not self._stopping:
            if decoder.in_frame:
                if decoder.started != seen_start:
                    seen_start = decoder.started
                    frame_deadline = loop.time() + cfg.read_timeout_s
                timeout = max(0.0, frame_deadline - loop.time())
            else:
                timeout = cfg.idle_timeout_s
            conn.reading = True
            try:
                async with asyncio.timeout(timeout):
                    data = await reader.read(_READ_CHUNK)
            except TimeoutError:
                if decoder.in_frame:
                    log.warning("mllp %s conn %d: frame unfinished after %g s", self.ctx.channel, conn.id, timeout)
                    await self._audit("message.truncated", conn, reason="read timeout", bytes=decoder.buffered)
                else:
                    log.info("mllp %s conn %d idle, closed after %d messages", self.ctx.channel, conn.id, messages)
                return
            except OSError:
                data = b""
            finally:
                conn.reading = False
            if not data:
                if decoder.in_frame:
                    log.warning("mllp %s conn %d: closed mid-frame", self.ctx.channel, conn.id)
                    await self._audit("message.truncated", conn, reason="connection closed", bytes=decoder.buffered)
                log.info("mllp %s conn %d closed by peer after %d messages", self.ctx.channel, conn.id, messages)
                return
            try:
                frames = decoder.feed(data)
            except FrameTooLarge:
                log.warning("mllp %s conn %d: frame over %d bytes", self.ctx.channel, conn.id, cfg.max_message_bytes)
                await self._audit("message.oversize", conn, limit=cfg.max_message_bytes)
                return
            if decoder.garbage and not garbage_reported:
                garbage_reported = True
                log.warning("mllp %s conn %d: bytes outside frames discarded", self.ctx.channel, conn.id)
                await self._audit("connection.garbage", conn, bytes=decoder.garbage)
            for frame in frames:
                if not frame.strip():
                    continue
                ack = await self._handle(conn, frame)
                messages += 1
                if ack is not None:
                    try:
                        writer.write(encode(ack))
                        await writer.drain()
                    except OSError:
                        log.info("mllp %s conn %d: peer gone before its ACK", self.ctx.channel, conn.id)
                        return

    # -- one message

    async def _handle(self, conn: _Conn, frame: bytes) -> bytes | None:
        started = time.perf_counter()
        msg: Message | None = None
        error: Hl7ParseError | None = None
        try:
            msg = Message.parse(frame)
        except Hl7ParseError as exc:
            error = exc
        mtype = dedup = None
        if msg is not None:
            code, trigger = msg.message_code, msg.trigger_event
            mtype = code if not trigger else f"{code}^{trigger}"
            control_id = msg.control_id
            if control_id:
                msh = msg.msh
                dedup = f"{msh.value(3) or ''}|{msh.value(4) or ''}|{control_id}"
        inbound = Inbound(raw=frame, kind="hl7v2", peer=conn.peer, decoded=msg if msg is not None else error,
                          dedup=dedup, type=mtype)  # fmt: skip
        assert self._sink is not None
        try:
            outcome = await self._sink(inbound)
        except Exception as exc:  # noqa: BLE001 - the sender must hear "not stored", never silence or AA
            log.error("mllp %s conn %d: sink failed (%s)", self.ctx.channel, conn.id, type(exc).__name__)
            outcome = Outcome("unavailable")
        code, err = self._decide(outcome, msg, error, mtype)
        if msg is not None and self.config.ack_mode == "enhanced":
            condition = (msg.msh.value(15) or "").strip().upper()
            if condition:
                # CR is for what this receiver does not take; "not stored" is CE ("any other reason").
                code = "CE" if outcome.status == "unavailable" else _COMMIT[code]
                wanted = {"NE": False, "ER": code != "CA", "SU": code == "CA"}.get(condition, True)
                if not wanted:
                    self._log_message(conn, frame, outcome, f"{code} (not sent: MSH-15 {condition})", started)
                    return None
        now = datetime.now(self.ctx.site_tz)
        ack_id = new_ack_control_id()
        try:
            ack = build_ack(msg, code, control_id=ack_id, error=err, now=now,  # type: ignore[arg-type]
                            original_control_id=None if msg is not None else sniff_control_id(frame))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - an odd header must not leave the sender without an answer
            log.warning("mllp %s conn %d: ACK from header failed (%s)", self.ctx.channel, conn.id, type(exc).__name__)
            ack = build_ack(None, code, control_id=ack_id, error=err, now=now,  # type: ignore[arg-type]
                            original_control_id=msg.control_id if msg is not None else None)  # fmt: skip
        self._log_message(conn, frame, outcome, code, started)
        return ack

    def _decide(
        self, outcome: Outcome, msg: Message | None, error: Hl7ParseError | None, mtype: str | None
    ) -> tuple[str, AckError | None]:
        status = outcome.status
        if status == "unavailable":
            return "AR", _ack_error(outcome.problem, _DEFAULT_ERRORS["unavailable"])
        if msg is None:  # unreadable: never AA
            default = AckError.from_parse_error(error) if error is not None else _DEFAULT_ERRORS["invalid"]
            return ("AR" if status == "refused" else "AE"), _ack_error(outcome.problem, default)
        if not self.accepts(mtype):
            if status == "refused" and outcome.problem is not None:
                return "AR", _ack_error(outcome.problem, _TYPE_REFUSED)
            if status != "refused":
                log.warning("mllp %s: a type outside accept_types came back %s; answering AR", self.ctx.channel, status)
            return "AR", _TYPE_REFUSED
        if status == "refused":
            return "AR", _ack_error(outcome.problem, _DEFAULT_ERRORS["refused"])
        if status == "invalid":
            return "AE", _ack_error(outcome.problem, _DEFAULT_ERRORS["invalid"])
        return "AA", None

    def _log_message(self, conn: _Conn, frame: bytes, outcome: Outcome, code: str, started: float) -> None:
        if log.isEnabledFor(logging.DEBUG):
            ms = (time.perf_counter() - started) * 1000
            log.debug(
                "mllp %s conn %d: %d bytes, %s, %s, %.1f ms",
                self.ctx.channel, conn.id, len(frame), outcome.status, code, ms,
            )  # fmt: skip
