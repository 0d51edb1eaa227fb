"""The DICOM destination: a Storage SCU sending each instance exactly as stored.

pynetdicom is blocking, so each send runs in a worker thread, one at a time. The association is kept
open between sends (released after idle_s without one) and reopened when it dropped, or when an
instance needs a presentation context it does not have: every (SOP class, transfer syntax) seen so
far is proposed again, each instance in its own transfer syntax only, so compressed instances go out
as they are (never decompressed, never re-encoded). TCP_NODELAY is set on the socket as soon as it
connects (EVT_CONN_OPEN), before the A-ASSOCIATE-RQ goes out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import threading

from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.status import code_to_category

from engine.connectors.dicom.config import DicomDestinationConfig
from engine.connectors.dicom.wire import c_store_raw, nodelay, split_part10
from engine.core.component import ComponentContext, Delivered, Outbound
from engine.core.errors import PermanentError, RetryableError
from engine.core.registry import register
from engine.security.tls import client_context_for

log = logging.getLogger("radbridge.dicom")
_MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1-255


@register("destination", "dicom")
class DicomDestination:
    """C-STOREs each Outbound.body (the Part 10 bytes of one instance) to a Storage SCP.

    Success or warning -> Delivered(detail="C-STORE 0x0000"); association refused or aborted,
    connection or TLS failure, no response within dimse_timeout_s, status 0xA7xx -> RetryableError;
    any other failure status, or no presentation context accepted for the instance's SOP class and
    transfer syntax -> RetryableError or PermanentError per on_failure; bytes that are not a Part 10
    instance -> PermanentError. Error texts name status codes and SOP class keywords, never UIDs.
    """

    Config = DicomDestinationConfig

    def __init__(self, config: DicomDestinationConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx
        self._tls_args: tuple[ssl.SSLContext, str] | None = None
        if config.tls is not None:
            context = client_context_for(config.tls, ctx.root, f"dicom destination of {ctx.channel}")
            self._tls_args = (context, config.tls.server_name or config.host)
        self._assoc: Association | None = None
        self._proposed: list[tuple[str, str]] = []
        self._lock = asyncio.Lock()  # one send at a time ...
        self._thread_lock = threading.Lock()  # ... also when a cancelled send's thread is still at work
        self._idle: asyncio.TimerHandle | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._message_ids = itertools.cycle(range(1, 65536))
        self.associations = 0  # associations opened so far (for tests and metrics)
        self._where = f"dicom {config.called_ae}@{config.host}:{config.port}"

    # -- lifecycle

    async def send(self, message: Outbound) -> Delivered:
        async with self._lock:
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            try:
                return await asyncio.to_thread(self._send, message)
            finally:
                if self._assoc is not None and self.config.idle_s > 0:
                    self._idle = asyncio.get_running_loop().call_later(self.config.idle_s, self._on_idle)

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        async with self._lock:
            await asyncio.to_thread(self._release)

    def _on_idle(self) -> None:
        self._idle = None
        self._idle_task = asyncio.get_running_loop().create_task(self._release_idle())

    async def _release_idle(self) -> None:
        if not self._lock.locked():  # a send came in meanwhile: it re-arms the timer when done
            async with self._lock:
                await asyncio.to_thread(self._release)

    def _release(self) -> None:
        with self._thread_lock:
            self._release_locked()

    def _drop(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.abort()

    # -- one instance (worker thread)

    def _send(self, message: Outbound) -> Delivered:
        mid = message.message_id
        try:
            sop_class, sop_instance, syntax, offset = split_part10(message.body)
        except ValueError as exc:
            raise PermanentError(f"{self._where}: message {mid} is not a DICOM instance ({exc})") from None
        what = f"{UID(sop_class).keyword or 'SOP class'} in {syntax.name or 'a private transfer syntax'}"
        with self._thread_lock:
            try:
                assoc, context_id = self._association(sop_class, str(syntax), mid, what)
                status = c_store_raw(assoc, context_id, sop_class, sop_instance, message.body[offset:],
                                       next(self._message_ids))  # fmt: skip
            except (OSError, RuntimeError) as exc:
                self._drop()
                raise RetryableError(f"{self._where}: message {mid} not sent ({type(exc).__name__})") from exc
            if status is None:
                self._drop()
                raise RetryableError(f"{self._where}: no C-STORE response for message {mid} within "
                                     f"{self.config.dimse_timeout_s:g} s (or the association ended)")  # fmt: skip
            if self.config.idle_s == 0:
                self._release_locked()
        category = code_to_category(status)
        if category in ("Success", "Warning"):
            return Delivered(detail=f"C-STORE 0x{status:04X}")
        text = f"{self._where}: C-STORE 0x{status:04X} ({category}) for message {mid}"
        if 0xA700 <= status <= 0xA7FF:
            raise RetryableError(text)
        raise self._policy(text)

    def _release_locked(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()
            log.info("%s: association released", self._where)

    def _policy(self, text: str) -> Exception:
        return RetryableError(text) if self.config.on_failure == "retry" else PermanentError(text)

    def _association(self, sop_class: str, syntax: str, mid: str, what: str) -> tuple[Association, int]:
        pair = (sop_class, syntax)
        assoc = self._assoc
        if assoc is not None and not assoc.is_established:
            self._assoc = assoc = None
        if assoc is not None:
            context_id = _context(assoc, pair)
            if context_id is not None:
                return assoc, context_id
            if pair in self._proposed:  # proposed on this association and rejected by the peer
                raise self._policy(f"{self._where}: peer accepts no presentation context for {what} (message {mid})")
            self._release_locked()  # renegotiate with this pair added
        proposals = list(dict.fromkeys([*self._proposed, pair]))[-_MAX_CONTEXTS:]
        assoc = self._associate(proposals, what, mid)
        self._assoc, self._proposed = assoc, proposals
        context_id = _context(assoc, pair)
        if context_id is None:
            raise self._policy(f"{self._where}: peer accepts no presentation context for {what} (message {mid})")
        return assoc, context_id

    def _associate(self, proposals: list[tuple[str, str]], what: str, mid: str) -> Association:
        cfg = self.config
        ae = AE(ae_title=cfg.calling_ae)
        ae.connection_timeout, ae.acse_timeout = cfg.connect_timeout_s, cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = max(cfg.idle_s * 2, cfg.dimse_timeout_s)  # our idle release comes first
        ae.maximum_pdu_size = cfg.max_pdu
        for sop_class, syntax in proposals:
            ae.add_requested_context(sop_class, syntax)
        connected: list[bool] = []

        def on_connected(event: Event) -> None:  # before the A-ASSOCIATE-RQ goes out
            nodelay(event.assoc.dul.socket.socket)
            connected.append(True)

        assoc = ae.associate(cfg.host, cfg.port, ae_title=cfg.called_ae, tls_args=self._tls_args,
                             evt_handlers=[(evt.EVT_CONN_OPEN, on_connected)])  # fmt: skip
        if assoc.is_established:
            self.associations += 1
            log.info("%s: association opened (%d presentation contexts)", self._where, len(proposals))
            return assoc
        answer = assoc.acceptor.primitive
        if connected and answer is not None and answer.result == 0x00 and not assoc.accepted_contexts:
            # pynetdicom aborts such an association itself
            raise self._policy(f"{self._where}: peer accepts no presentation context for {what} (message {mid})")
        if not connected:
            detail = "not established: no connection (refused, unreachable, timed out or TLS failed)"
        elif assoc.is_rejected:
            rj = assoc.acceptor.primitive
            detail = "rejected"
            if rj is not None:
                detail += f" (result {rj.result}, source {rj.result_source}, reason {rj.diagnostic})"
        elif assoc.is_aborted:
            detail = "aborted by the peer"
        else:
            detail = f"not accepted within {cfg.acse_timeout_s:g} s"
        raise RetryableError(f"{self._where}: association {detail}")


def _context(assoc: Association, pair: tuple[str, str]) -> int | None:
    for cx in assoc.accepted_contexts:
        if (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) == pair:
            return cx.context_id
    return None
