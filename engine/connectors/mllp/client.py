"""The MLLP client side: connecting (TLS, TCP_NODELAY), reading ACKs, the destination and `radbridge send`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass

from engine.connectors.mllp.config import MllpDestinationConfig
from engine.core.component import ComponentContext, Delivered, Outbound
from engine.core.errors import PermanentError, RetryableError
from engine.core.registry import register
from engine.hl7v2 import Hl7ParseError, Message, sniff_control_id
from engine.hl7v2.mllp import FrameTooLarge, MllpDecoder, encode
from engine.security.tls import client_context_for

log = logging.getLogger("radbridge.mllp")
_READ_CHUNK = 65536
_ACK_MAX_BYTES = 1 << 20
_STOP_GRACE_S = 10.0


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
            self._tls = client_context_for(config.tls, ctx.root, f"mllp destination of {ctx.channel}")
            self._server_name = config.tls.server_name
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
