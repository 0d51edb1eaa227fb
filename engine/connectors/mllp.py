"""HL7 v2 over MLLP: a listener (source), a client (destination) and `send_messages` for the CLI.

Framing lives in engine.hl7v2.mllp, ACK building in engine.hl7v2.ack; this module is the sockets,
TLS, allow-lists, timeouts and the mapping between what the engine did (Outcome) and what the peer
is told (ACK). Logs and exceptions carry connection ids, peers, sizes and ACK codes — never
message content, field values or control ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.core.component import ComponentContext, Delivered, Inbound, Outbound, Outcome, Problem, Sink
from engine.core.errors import ConfigError, PermanentError, RetryableError
from engine.core.registry import register
from engine.hl7v2 import AckError, Hl7ParseError, Message, build_ack, sniff_control_id
from engine.hl7v2.ack import new_ack_control_id
from engine.hl7v2.mllp import FrameTooLarge, MllpDecoder, encode
from engine.security.tls import client_context, peer_common_name, server_context

__all__ = [
    "AckInfo",
    "AckResult",
    "MllpDestination",
    "MllpDestinationConfig",
    "MllpSource",
    "MllpSourceConfig",
    "new_ack_control_id",
    "parse_ack",
    "send_messages",
]

log = logging.getLogger("radbridge.mllp")
_READ_CHUNK = 65536
_ACK_MAX_BYTES = 1 << 20
_STOP_GRACE_S = 10.0


# --- ACK control ids ---------------------------------------------------------------------------




# --- configuration -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MllpServerTls(_Strict):
    cert: str = Field(description="Server certificate chain (PEM file), relative to the project root.")
    key: str = Field(description="Private key of the server certificate (PEM file), relative to the project root.")
    ca: str | None = Field(
        None,
        description="CA certificates (PEM) that sign client certificates. When set, every client must present "
        "a certificate this CA signed (mutual TLS).",
    )
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version accepted: '1.2' or '1.3'.")


class MllpClientTls(_Strict):
    ca: str | None = Field(
        None, description="CA certificates (PEM) to verify the server with; the system store when omitted."
    )
    cert: str | None = Field(None, description="Client certificate (PEM) to present, for mutual TLS.")
    key: str | None = Field(None, description="Private key of the client certificate (PEM).")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version accepted: '1.2' or '1.3'.")
    server_name: str | None = Field(None, description="Name the server certificate must carry; defaults to `host`.")

    @model_validator(mode="after")
    def _pair(self) -> MllpClientTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together")
        return self


def _allow_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


class MllpSourceConfig(_Strict):
    host: str = Field("0.0.0.0", description="Address to listen on; 0.0.0.0 or :: for every interface.")
    port: int = Field(ge=0, le=65535, description="TCP port to listen on (0 picks a free one, for tests).")
    tls: MllpServerTls | None = Field(None, description="Serve MLLP over TLS (1.2 or later); plain TCP when omitted.")
    allow: list[str] | None = Field(
        None,
        description="Peers allowed to connect: IP addresses or networks (10.0.0.0/8) and/or client certificate "
        "common names (needs tls.ca). When both kinds are listed a peer must match one of each. Others are "
        "disconnected at once and audited (connection.refused). Everyone may connect when omitted.",
    )
    max_message_bytes: int = Field(
        1 << 20, ge=256, description="Largest frame accepted; a longer one is audited and the connection closed."
    )
    idle_timeout_s: float = Field(300, gt=0, description="Close a connection that sends nothing for this long.")
    read_timeout_s: float = Field(
        30,
        gt=0,
        description="Longest time from the start of a frame (or of the TLS handshake) to its end; a frame still "
        "unfinished then is dropped unacknowledged, audited, and the connection closed.",
    )
    max_connections: int = Field(64, ge=1, description="Connections served at once; more are refused and audited.")
    accept_types: list[str] | None = Field(
        None,
        description="Message types this channel takes, e.g. ['ORM^O01', 'OMI^O23'] (or just 'ORM' for every "
        "trigger). Others are still stored and audited, then answered AR with ERR code 200. All when omitted.",
    )
    ack_mode: Literal["original", "enhanced"] = Field(
        "original",
        description="'original': always answer AA/AE/AR. 'enhanced': when a message carries MSH-15, answer with "
        "a commit ACK (CA/CE/CR) as MSH-15 asks (AL, NE, ER, SU); messages without MSH-15 get original ACKs.",
    )

    @field_validator("allow")
    @classmethod
    def _allow_nonempty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            value = [v.strip() for v in value]
            if not value or any(not v for v in value):
                raise ValueError("allow needs at least one non-empty address, network or certificate name")
        return value

    @field_validator("accept_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for item in value:
                code, _, trigger = item.partition("^")
                if len(code) != 3 or not code.isalnum() or (trigger and not (2 <= len(trigger) <= 3)):
                    raise ValueError(f"accept_types: {item!r} is not a message type like 'ORM^O01' or 'ORM'")
        return value

    @model_validator(mode="after")
    def _names_need_client_certs(self) -> MllpSourceConfig:
        names = [a for a in self.allow or () if _allow_entry(a) is None]
        if names and (self.tls is None or self.tls.ca is None):
            raise ValueError("allow lists certificate names, but tls.ca is not set: no client certificate is asked for")
        return self


class MllpDestinationConfig(_Strict):
    host: str = Field(description="Host name or address of the receiving system.")
    port: int = Field(ge=1, le=65535, description="Its MLLP port.")
    tls: MllpClientTls | None = Field(None, description="Connect with TLS (1.2 or later); plain TCP when omitted.")
    connect_timeout_s: float = Field(10, gt=0, description="Give up connecting after this long (retried later).")
    ack_timeout_s: float = Field(30, gt=0, description="Wait this long for the ACK of each message.")
    keep_alive: bool = Field(
        True, description="Keep the connection open between messages (reconnecting when it fails)."
    )
    on_ae: Literal["retry", "dead"] = Field(
        "dead", description="AE/CE from the peer (content error): 'dead' dead-letters the message, 'retry' retries."
    )
    on_ar: Literal["retry", "dead"] = Field(
        "retry", description="AR/CR from the peer (rejected, often 'busy'): 'retry' retries later, 'dead' dead-letters."
    )
    on_timeout: Literal["retry", "dead"] = Field(
        "retry", description="No ACK within ack_timeout_s: 'retry' (default) or 'dead'."
    )


def _path(ctx: ComponentContext, value: str | None) -> str | None:
    return None if value is None else str(ctx.root / value)


# --- ACK reading (destination and send_messages) -----------------------------------------------


@dataclass(frozen=True)
class AckInfo:
    code: str  # MSA-1: AA, AE, AR, CA, CE, CR (upper-cased)
    acked_control_id: str | None  # MSA-2
    error_code: int | None  # ERR-3.1 (v2.5+) or ERR-1.4.1 (older), HL7 table 0357


def parse_ack(frame: bytes) -> AckInfo:
    """MSA-1, MSA-2 and the first ERR code of an ACK; ValueError (Hl7ParseError) if it has no MSA."""
    msg = Message.parse(frame)
    msa = msg.segment("MSA")
    if msa is None:
        raise Hl7ParseError("ACK without an MSA segment", code=100, segment="MSA")
    error_code = None
    err = msg.segment("ERR")
    if err is not None:
        raw = err.value(3, 1, 1) or err.value(1, 1, 4, 1)
        if raw and raw.strip().isdigit():
            error_code = int(raw.strip())
    return AckInfo((msa.value(1) or "").strip().upper(), msa.value(2), error_code)


class _ConnectionClosed(ConnectionError):
    pass


class _FrameReader:
    """Whole frames from a StreamReader, one at a time (extra frames wait for the next call)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.decoder = MllpDecoder(_ACK_MAX_BYTES)
        self.pending: deque[bytes] = deque()

    async def next(self, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            while not self.pending:
                data = await self.reader.read(_READ_CHUNK)
                if not data:
                    raise _ConnectionClosed("connection closed before the ACK")
                self.pending.extend(self.decoder.feed(data))
        return self.pending.popleft()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _connect(
    host: str, port: int, tls: ssl.SSLContext | None, server_name: str | None, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=(server_name or host) if tls else None
            )
    except TimeoutError as exc:
        raise RetryableError(f"mllp {host}:{port}: no connection within {timeout:g} s") from exc
    except ssl.SSLError as exc:
        raise RetryableError(f"mllp {host}:{port}: TLS handshake failed ({exc.reason or type(exc).__name__})") from exc
    except OSError as exc:
        raise RetryableError(f"mllp {host}:{port}: cannot connect ({type(exc).__name__})") from exc
    _nodelay(writer)
    return reader, writer


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.close()


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
            t = config.tls
            try:
                self._tls = server_context(_path(ctx, t.cert), _path(ctx, t.key), _path(ctx, t.ca), t.min_version)  # type: ignore[arg-type]
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"mllp source of {ctx.channel}: unusable TLS files ({type(exc).__name__})") from exc
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


# --- destination -------------------------------------------------------------------------------


def _policy_error(policy: str, text: str, response: bytes | None = None, code: str | None = None) -> Exception:
    exc: Exception = RetryableError(text) if policy == "retry" else PermanentError(text)
    exc.response = response  # type: ignore[attr-defined]  # the peer's ACK, for the runtime to store
    exc.ack_code = code  # type: ignore[attr-defined]
    return exc


@register("destination", "mllp")
class MllpDestination:
    """Sends one HL7 message per `send` over MLLP and waits for its ACK.

    AA/CA -> Delivered(response=ACK bytes, detail=code). AE/CE and AR/CR -> RetryableError or
    PermanentError per on_ae/on_ar; no ACK within ack_timeout_s per on_timeout; connect failures,
    resets and an ACK for another control id (MSA-2 != MSH-10) -> RetryableError. Raised errors carry
    `.response` (the ACK bytes, when one came) and `.ack_code`; their text names codes, never the
    peer's text (ERR-8/MSA-3 may quote content). The connection is kept after AE/AR and dropped after
    a timeout, reset, unreadable or mismatched ACK, so a late ACK is never matched to the next
    message. Retrying is the runtime's job, not this class's.
    """

    Config = MllpDestinationConfig

    def __init__(self, config: MllpDestinationConfig, ctx: ComponentContext) -> None:
        self.config = config
        self.ctx = ctx
        self._tls: ssl.SSLContext | None = None
        self._server_name: str | None = None
        if config.tls is not None:
            t = config.tls
            try:
                self._tls = client_context(_path(ctx, t.ca), _path(ctx, t.cert), _path(ctx, t.key), t.min_version)
            except (OSError, ssl.SSLError) as exc:
                what = f"mllp destination of {ctx.channel}"
                raise ConfigError(f"{what}: unusable TLS files ({type(exc).__name__})") from exc
            self._server_name = t.server_name
        self._writer: asyncio.StreamWriter | None = None
        self._frames: _FrameReader | None = None
        self._lock = asyncio.Lock()
        self.connects = 0  # connections opened so far (for tests and metrics)
        self._where = f"mllp {config.host}:{config.port}"

    async def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        _close(self._writer)
        self._writer = self._frames = None

    async def _connection(self) -> tuple[_FrameReader, asyncio.StreamWriter]:
        writer, frames = self._writer, self._frames
        if writer is not None and frames is not None:
            if not (writer.is_closing() or frames.reader.at_eof() or frames.pending):
                return frames, writer
            self._drop()
        cfg = self.config
        reader, writer = await _connect(cfg.host, cfg.port, self._tls, self._server_name, cfg.connect_timeout_s)
        self.connects += 1
        self._writer, self._frames = writer, _FrameReader(reader)
        return self._frames, writer

    async def send(self, message: Outbound) -> Delivered:
        control_id = sniff_control_id(message.body)
        if not control_id:
            raise PermanentError(f"{self._where}: message {message.message_id} has no MSH-10 to match its ACK")
        try:
            frame = encode(message.body)
        except ValueError as exc:
            raise PermanentError(f"{self._where}: message {message.message_id} holds MLLP framing bytes") from exc
        async with self._lock:
            try:
                return await self._exchange(message, frame, control_id)
            except asyncio.CancelledError:
                self._drop()  # an ACK may still be on its way: never match it to the next message
                raise
            finally:
                if not self.config.keep_alive:
                    self._drop()

    async def _exchange(self, message: Outbound, frame: bytes, control_id: str) -> Delivered:
        cfg, where, mid = self.config, self._where, message.message_id
        frames, writer = await self._connection()
        try:
            writer.write(frame)
            await writer.drain()
            ack = await frames.next(cfg.ack_timeout_s)
        except TimeoutError:
            self._drop()
            text = f"{where}: no ACK for message {mid} within {cfg.ack_timeout_s:g} s"
            raise _policy_error(cfg.on_timeout, text) from None
        except FrameTooLarge as exc:
            self._drop()
            raise RetryableError(f"{where}: ACK for message {mid} larger than {_ACK_MAX_BYTES} bytes") from exc
        except OSError as exc:
            self._drop()
            text = f"{where}: connection lost before the ACK of message {mid} ({type(exc).__name__})"
            raise RetryableError(text) from exc
        try:
            info = parse_ack(ack)
        except Hl7ParseError as exc:
            self._drop()
            raise _policy_error("retry", f"{where}: unreadable ACK for message {mid}", ack) from exc
        if info.acked_control_id != control_id:
            self._drop()
            raise _policy_error("retry", f"{where}: ACK for message {mid} acknowledges another control id (MSA-2)",
                                ack, info.code)  # fmt: skip
        code, err = info.code, f" (ERR {info.error_code})" if info.error_code is not None else ""
        if code in ("AA", "CA"):
            return Delivered(response=ack, detail=code)
        if code in ("AE", "CE"):
            policy = cfg.on_ae
        elif code in ("AR", "CR"):
            policy = cfg.on_ar
        else:  # unknown or empty MSA-1: peer-written, so not quoted
            policy, code = "retry", "an unknown MSA-1"
        raise _policy_error(policy, f"{where}: peer answered {code}{err} for message {mid}", ack, info.code)


# --- `radbridge send` ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AckResult:
    control_id: str | None  # MSH-10 of the message sent
    code: str | None  # MSA-1 of its ACK; None when none came
    error_code: int | None  # ERR code of the ACK (HL7 table 0357)
    elapsed_ms: float  # from writing the message to reading its ACK
    note: str = ""  # why there is no usable ACK ("no ACK within 10 s", "connection closed", ...)


async def send_messages(
    messages: list[bytes],
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None,
    timeout_s: float,
    server_name: str | None = None,
) -> list[AckResult]:
    """Send each message on one connection, waiting for its ACK before the next.

    Returns one result per message attempted. Stops after the first message that gets no usable
    ACK (timeout, closed connection, unreadable ACK, or an ACK for another control id), since the
    stream can no longer be trusted; the results are then shorter than `messages`. Raises
    RetryableError when it cannot connect.
    """
    reader, writer = await _connect(host, port, tls, server_name, timeout_s)
    frames = _FrameReader(reader)
    results: list[AckResult] = []
    try:
        for body in messages:
            result, usable = await _send_one(body, writer, frames, timeout_s)
            results.append(result)
            if not usable:  # the stream can no longer be trusted to pair ACKs with messages
                break
    finally:
        _close(writer)
    return results


async def _send_one(
    body: bytes, writer: asyncio.StreamWriter, frames: _FrameReader, timeout_s: float
) -> tuple[AckResult, bool]:
    """One message and its ACK; the flag says whether the connection is still usable."""
    control_id = sniff_control_id(body)
    started = time.perf_counter()

    def result(code: str | None, error: int | None, note: str = "") -> AckResult:
        return AckResult(control_id, code, error, round((time.perf_counter() - started) * 1000, 2), note)

    try:
        frame = encode(body)
    except ValueError:
        return result(None, None, "not sent: the message holds MLLP framing bytes"), True
    try:
        writer.write(frame)
        await writer.drain()
        ack = await frames.next(timeout_s)
    except TimeoutError:
        return result(None, None, f"no ACK within {timeout_s:g} s"), False
    except (OSError, FrameTooLarge) as exc:
        return result(None, None, f"connection lost ({type(exc).__name__})"), False
    try:
        info = parse_ack(ack)
    except Hl7ParseError:
        return result(None, None, "unreadable ACK"), False
    if info.acked_control_id != control_id:
        return result(info.code, info.error_code, "ACK is for another control id (MSA-2)"), False
    return result(info.code, info.error_code), True
