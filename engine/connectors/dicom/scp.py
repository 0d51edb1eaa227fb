"""The DICOM listener (SCP): C-STORE and C-ECHO here, IAN and MPPS in notify.py.

Threads. pynetdicom runs every association in threads of its own; our handlers run there and hand
their work to the engine's asyncio loop (captured in start()) with run_coroutine_threadsafe,
waiting a bounded time for the answer.

TCP_NODELAY is set on every accepted socket in _Server.get_request, the accept hook of pynetdicom's
AssociationServer (ApplicationEntity.make_server lets us choose the server class), before any byte
or TLS handshake goes over it.

TLS. The context comes from engine.security.tls.server_context_for and is given to pynetdicom's server,
but the handshake runs in the connection's own thread (_Handler.handle), bounded by acse_timeout_s:
pynetdicom's own get_request would run it inside the accept loop, where one client that never says
hello stalls every other connection and a failed handshake vanishes unaudited.

Memory, and no temp files. Received datasets stay in memory (pynetdicom's default: we never set
_config.STORE_RECV_CHUNKED_DATASET, which would spool each dataset to a plaintext temp file). The
cap is wire.PduGuard, installed in place of each association's AssociationSocket.recv when the
connection opens (EVT_CONN_OPEN): it reads every PDU itself, refuses one longer than max_pdu before
reading its body, and counts the dataset fragments of the message being received; past
max_instance_bytes it aborts the association (A-ABORT to the peer, a synthetic A-ABORT to
pynetdicom's DUL) and we audit message.oversize. Nothing of that instance reaches the sink; one
association holds at most about max_instance_bytes of dataset (plus one PDU) while receiving, and
about three copies of it while the Part 10 bytes are built and handed over.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, DEFAULT_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import InstanceAvailabilityNotification, ModalityPerformedProcedureStep, Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from engine.connectors.dicom.config import DicomSourceConfig
from engine.connectors.dicom.notify import NotificationScp
from engine.connectors.dicom.wire import PduGuard, dataset_problem, nodelay
from engine.core.component import ComponentContext, Inbound, Outcome, Sink
from engine.core.errors import ConfigError
from engine.core.registry import register
from engine.dicom import DicomHeaderError, part10, read_header
from engine.security.tls import peer_common_name, server_context_for

log = logging.getLogger("radbridge.dicom")
_STOP_GRACE_S = 10.0
_AUDIT_TIMEOUT_S = 10.0
# What the SCU is told for each outcome (PS3.4 B.2.3, PS3.7 C): refused is 0124 "Refused: Not
# Authorized" (this channel does not take it), not A900 (which says the dataset does not match its
# SOP class); 0xA700 "Out of Resources" makes the SCU send the instance again later.
STORE_STATUS = {
    "accepted": 0x0000, "duplicate": 0x0000, "filtered": 0x0000,
    "invalid": 0xC210, "refused": 0x0124, "unavailable": 0xA700,
}  # fmt: skip
_local = threading.local()  # hands a connection from _Handler.handle to the EVT_CONN_OPEN handler


@dataclass
class _Conn:
    id: int
    ip: str
    peer: str
    sock: socket.socket
    cn: str | None = None
    calling: str = ""
    guard: PduGuard | None = None
    busy: int = 0
    ended: bool = False

    @property
    def actor(self) -> str:
        return f"ae:{self.calling}" if self.calling else f"peer:{self.cn or self.ip}"


class _Server(ThreadedAssociationServer):
    source: DicomSource
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        nodelay(sock)
        return sock, address  # TLS is started by _Handler, in the connection's own thread

    def shutdown(self) -> None:  # the AE never listed this server (make_server, not start_server)
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class _Handler(RequestHandler):
    server: _Server

    def handle(self) -> None:
        conn = self.server.source._admit(self.request, self.client_address)
        if conn is None:
            return
        self.request = conn.sock
        _local.conn = conn
        try:
            super().handle()  # creates the Association (EVT_CONN_OPEN: _on_open) and starts it
        finally:
            _local.conn = None


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _sop_type(sop_class: str) -> str:
    return UID(sop_class).keyword or sop_class


@register("source", "dicom")
class DicomSource:
    """A DICOM listener (plain TCP or TLS, optional mutual TLS, allow-list of calling AEs, addresses and
    certificate names) serving storage, echo, IAN and MPPS as configured.

    Each instance is handed to the sink as received (Part 10 bytes around the dataset exactly as it
    came over the wire), and the C-STORE status comes from the Outcome: accepted, duplicate and
    filtered -> 0x0000; invalid -> 0xC210; refused -> 0x0124; unavailable, a sink error or no
    answer within sink_timeout_s -> 0xA700, so the SCU sends it again. A truncated or structurally
    broken dataset gets 0xC210 without reaching the sink and is audited (message.truncated).
    Refused associations are audited as association.refused, oversize instances as message.oversize.
    """

    Config = DicomSourceConfig

    def __init__(self, config: DicomSourceConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx
        self._tls: ssl.SSLContext | None = None
        if config.tls is not None:
            self._tls = server_context_for(config.tls, ctx.root, f"dicom source of {ctx.channel}")
        self._allow = [(e, e.network()) for e in config.allow or ()]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: Sink | None = None
        self._server: _Server | None = None
        self._conns: dict[Association, _Conn] = {}  # kept until the association's thread ends (see _on_open)
        self._conns_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = False
        self._notify = NotificationScp(self) if {"ian", "mpps"} & set(config.services) else None
        self.port: int | None = None

    # -- lifecycle

    async def start(self, sink: Sink) -> list[str]:
        cfg = self.config
        if cfg.topic and self.ctx.topics is None:
            raise ConfigError(f"dicom source of {self.ctx.channel}: topic {cfg.topic} needs the engine's topics")
        if "mpps" in cfg.services and self.ctx.state is None:
            raise ConfigError(f"dicom source of {self.ctx.channel}: mpps needs the channel's state store")
        self._loop, self._sink, self._stopping = asyncio.get_running_loop(), sink, False
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations + 1  # ours (_on_requested) answers first, audited
        ae.maximum_pdu_size = cfg.max_pdu
        ae.acse_timeout, ae.dimse_timeout = cfg.acse_timeout_s, cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        if "storage" in cfg.services:
            for cx in AllStoragePresentationContexts:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        for service, sop in (("echo", Verification), ("ian", InstanceAvailabilityNotification),
                             ("mpps", ModalityPerformedProcedureStep)):  # fmt: skip
            if service in cfg.services:
                ae.add_supported_context(sop, DEFAULT_TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_CLOSE, self._on_end),
            (evt.EVT_ABORTED, self._on_end), (evt.EVT_RELEASED, self._on_end),
        ]  # fmt: skip
        if self._notify is not None:
            handlers += [(evt.EVT_N_CREATE, self._notify.on_create), (evt.EVT_N_SET, self._notify.on_set)]
        server = ae.make_server((cfg.host, cfg.port), ssl_context=self._tls, evt_handlers=handlers,
                                server_class=_Server, request_handler=_Handler)  # fmt: skip
        server.source = self
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         name=f"dicom-{self.ctx.channel}", daemon=True).start()  # fmt: skip
        if cfg.topic and self.ctx.topics is not None:
            self.ctx.topics.subscribe(cfg.topic, sink)
        shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        note = f" (tls {cfg.tls.min_version}+{', client certificates' if cfg.tls.ca else ''})" if cfg.tls else ""
        log.info("dicom %s listening on %s:%s as %s%s", self.ctx.channel, shown, self.port, cfg.ae_title, note)
        return [f"dicom://{cfg.ae_title}@{shown}:{self.port}{note}"]

    async def stop(self) -> None:
        """Stop accepting; let instances being stored finish (up to 10 s); abort the other associations."""
        self._stopping = True
        unsubscribe = getattr(self.ctx.topics, "unsubscribe", None)
        if self.config.topic and self._sink is not None and unsubscribe is not None:
            unsubscribe(self._sink)
        if self._server is not None:
            await asyncio.to_thread(self._shutdown, self._server)
            self._server = None
        log.info("dicom %s stopped", self.ctx.channel)

    def _shutdown(self, server: _Server) -> None:
        server.shutdown()
        deadline = time.monotonic() + _STOP_GRACE_S
        while any(c.busy for c in self._snapshot()) and time.monotonic() < deadline:
            time.sleep(0.02)
        for assoc in server.active_associations:
            assoc.abort(block=False)
        # Their threads (daemons) end once the peer hangs up; one still waiting for an A-ASSOCIATE-RQ
        # that will never come ends at acse_timeout_s: worth a short wait, not a long one.
        deadline = time.monotonic() + 2
        for assoc in server.active_associations:
            assoc.join(max(deadline - time.monotonic(), 0.01))

    @property
    def associations(self) -> int:
        return 0 if self._server is None else len(self._server.active_associations)

    # -- bridging association threads and the engine's loop

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run a coroutine on the engine's loop from an association thread; TimeoutError when slow."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def deliver(self, inbound: Inbound, conn_id: int) -> Outcome | None:
        """The sink's Outcome for an Inbound, or None when it failed or did not answer in time."""
        assert self._sink is not None
        try:
            return self.run(self._sink(inbound), self.config.sink_timeout_s)
        except TimeoutError:
            log.error("dicom %s assoc %d: no outcome in time", self.ctx.channel, conn_id)
        except Exception as exc:  # noqa: BLE001 - the peer must hear "not stored", never silence
            log.error("dicom %s assoc %d: sink failed (%s)", self.ctx.channel, conn_id, type(exc).__name__)
        return None

    def audit(self, action: str, conn: _Conn, outcome: Literal["success", "denied", "failure"] = "failure",
              **detail: Any) -> None:  # fmt: skip
        fields = {"actor": conn.actor, "peer": conn.peer, "outcome": outcome,
                  "detail": {"channel": self.ctx.channel, "association": conn.id, **detail}}  # fmt: skip
        try:
            self.run(self.ctx.audit(action, **fields), _AUDIT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - auditing must not take the listener down; it is logged
            log.error("dicom %s assoc %d: audit of %s failed (%s)", self.ctx.channel, conn.id, action,
                      type(exc).__name__)  # fmt: skip

    def conn(self, assoc: Association) -> _Conn:
        return self._conns[assoc]

    def _snapshot(self) -> list[_Conn]:
        with self._conns_lock:
            return list(self._conns.values())

    # -- admission: address, TLS, certificate name (connection thread), AE titles (EVT_REQUESTED)

    def _admits(self, conn: _Conn, calling: str | None = None) -> bool:
        """Whether some allow entry admits the peer; a None cn/calling is not checked (not known yet)."""
        if not self._allow:
            return True
        try:
            address = ipaddress.ip_address(conn.ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for entry, network in self._allow:
            if network is not None and address not in network:
                continue
            if entry.cn is not None and conn.cn is not None and entry.cn != conn.cn:
                continue
            if entry.ae_title is not None and calling is not None and entry.ae_title != calling:
                continue
            return True
        return False

    def _admit(self, sock: socket.socket, address: Any) -> _Conn | None:
        ip, port = str(address[0]), address[1]
        conn = _Conn(next(self._ids), ip, f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}", sock)
        sock.settimeout(self.config.acse_timeout_s)
        reason = "stopping" if self._stopping else None
        if reason is None and not self._admits(conn):
            reason = "address not allowed"
        if reason is None and self._tls is not None:
            try:
                conn.sock = self._tls.wrap_socket(sock, server_side=True)  # the handshake, bounded by the timeout
            except (OSError, ValueError) as exc:
                reason = f"TLS handshake failed ({getattr(exc, 'reason', None) or type(exc).__name__})"
            else:
                conn.cn = peer_common_name(conn.sock.getpeercert())
                if not self._admits(conn):
                    reason = "certificate name not allowed"
        if reason is not None:
            _close(conn.sock)
            log.warning("dicom %s assoc %d from %s refused: %s", self.ctx.channel, conn.id, conn.peer, reason)
            if reason != "stopping":
                self.audit("association.refused", conn, "denied", reason=reason)
            return None
        conn.sock.settimeout(self.config.dimse_timeout_s)  # bounds a PDU that stalls half-way
        return conn

    def _on_open(self, event: Event) -> None:
        conn: _Conn | None = getattr(_local, "conn", None)
        if conn is None:  # not one of ours (cannot happen: only _Handler creates acceptors)
            return
        socket_wrapper = event.assoc.dul.socket
        conn.guard = PduGuard(socket_wrapper.recv, conn.sock, self.config.max_pdu, self.config.max_instance_bytes,
                               lambda reason, size: self._oversize(conn, reason, size))  # fmt: skip
        socket_wrapper.recv = conn.guard
        with self._conns_lock:  # forget associations whose threads have ended (handlers may outlive EVT_ABORTED)
            for assoc in [a for a in self._conns if a.ident is not None and not a.is_alive()]:
                del self._conns[assoc]
            self._conns[event.assoc] = conn

    def _oversize(self, conn: _Conn, reason: str, size: int) -> None:
        log.warning("dicom %s assoc %d from %s aborted: %s", self.ctx.channel, conn.id, conn.peer, reason)
        self.audit("message.oversize", conn, reason=reason, bytes=size, limit=self.config.max_instance_bytes)

    def _on_requested(self, event: Event) -> None:
        assoc, cfg = event.assoc, self.config
        conn = self._conns[assoc]
        rq = assoc.requestor.primitive
        conn.calling = str(rq.calling_ae_title or "").strip()
        called = str(rq.called_ae_title or "").strip()
        acceptors = [a for a in self._server.active_associations if a.is_acceptor] if self._server else []
        if self._stopping:
            reject, reason = (2, 3, 1), "stopping"
        elif len(acceptors) > cfg.max_associations:
            reject, reason = (2, 3, 2), "too many associations"
        elif cfg.check_called_ae and called != cfg.ae_title:
            reject, reason = (1, 1, 7), "called AE title not recognised"
        elif not self._admits(conn, conn.calling):
            reject, reason = (1, 1, 3), "calling AE title not allowed"
        else:
            log.info("dicom %s assoc %d from %s (%s) requested", self.ctx.channel, conn.id, conn.peer, conn.calling)
            return
        log.warning("dicom %s assoc %d from %s (%s) rejected: %s", self.ctx.channel, conn.id, conn.peer,
                    conn.calling, reason)  # fmt: skip
        self.audit("association.refused", conn, "denied", reason=reason, called_ae=called)
        assoc.acse.send_reject(*reject)
        assoc.kill()  # waits until the A-ASSOCIATE-RJ is out, as pynetdicom does for its own rejections

    def _on_end(self, event: Event) -> None:
        conn = self._conns.get(event.assoc)
        if conn is None or conn.ended:
            return
        conn.ended = True
        guard = conn.guard
        if guard is not None and guard.partial and not guard.tripped:
            log.warning("dicom %s assoc %d: ended mid-instance", self.ctx.channel, conn.id)
            self.audit("message.truncated", conn, reason="association ended mid-instance", bytes=guard.partial)

    # -- C-STORE

    def _on_store(self, event: Event) -> int:
        conn = self._conns[event.assoc]
        conn.busy += 1
        try:
            return self._store(conn, event)
        finally:
            conn.busy -= 1

    def _store(self, conn: _Conn, event: Event) -> int:
        started = time.perf_counter()
        request = event.request
        meta = event.file_meta
        if conn.calling:
            meta.SourceApplicationEntityTitle = conn.calling
        sop_type = _sop_type(str(request.AffectedSOPClassUID))
        with request.DataSet.getbuffer() as dataset:  # the received bytes, not a copy of them
            size = len(dataset)
            problem = dataset_problem(dataset, UID(str(meta.TransferSyntaxUID)), self.config.max_instance_bytes)
            raw = part10(meta, dataset) if problem is None else b""  # type: ignore[arg-type]
        if problem is not None:
            log.warning("dicom %s assoc %d: %s dataset of %d bytes (%s), 0xC210", self.ctx.channel, conn.id,
                        problem, size, sop_type)  # fmt: skip
            self.audit("message.truncated", conn, reason=f"{problem} dataset", bytes=size, type=sop_type)
            return 0xC210
        # Seal and write the instance in a worker thread while its header is parsed here: the blob's
        # fsyncs overlap the parse; the channel waits for them before it commits the message.
        pending = self.ctx.prestore(raw) if self.ctx.prestore is not None else None
        decoded: Any
        try:
            decoded = replace(read_header(raw), calling_ae=conn.calling)
            dedup: str | None = decoded.sop_instance_uid
        except DicomHeaderError as exc:
            decoded, dedup = exc, None
        inbound = Inbound(
            raw=raw, kind="dicom", peer=conn.peer, decoded=decoded, dedup=dedup, type=sop_type,
            sha256=getattr(decoded, "sha256", None), prestored=pending,
        )  # fmt: skip
        outcome = self.deliver(inbound, conn.id)
        status = STORE_STATUS["unavailable"] if outcome is None else STORE_STATUS[outcome.status]
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dicom %s assoc %d: %s, %d bytes, %s, 0x%04X, %.1f ms", self.ctx.channel, conn.id, sop_type,
                      len(raw), outcome.status if outcome else "no outcome", status,
                      (time.perf_counter() - started) * 1000)  # fmt: skip
        return status
