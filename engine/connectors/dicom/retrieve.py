"""Retrieving a study from a PACS: the `dicom-retrieve` destination (C-MOVE, C-GET or WADO-RS).

Its messages name a study (`{"study_uid": ...}`, e.g. a Notification). C-MOVE asks the PACS to
send the study to our own storage listener (`move_destination`, an AE the PACS knows); C-GET and
WADO-RS bring the instances back here and publish each, in memory and byte for byte as received,
on the internal topic `into`, where the imaging channel's source takes them in. Study Root, STUDY
level, by StudyInstanceUID. Logs, errors and audit entries name the PACS, AE titles, message ids,
status codes and counts, never UIDs.

Delivered("N instances") on success. RetryableError: no connection, association rejected or
aborted, timeouts, HTTP 5xx/401/403, DIMSE failure or warning statuses (0xA7xx out of resources,
0xB000 sub-operations failed, 0xCxxx unable to process, 0xFE00 cancelled), an instance the engine
could not store or no channel subscribes to, and a study the PACS returns no instance of: it may not
hold it yet (Orthanc answers 0xC000 or HTTP 404); the runtime's retries end in the dead letter queue.
PermanentError, as retrying cannot help: a message without a valid study_uid, 0xA801 (the PACS does
not know move_destination), 0xA900 (identifier refused), HTTP 400/406, a WADO-RS answer over max_bytes.

The multipart/related answer of WADO-RS is split with the standard library's email parser: the
PyPI parsers we looked at serve multipart/form-data (they require Content-Disposition) or bring in
requests (requests-toolbelt, dicomweb-client), and the email parser keeps bytes exact.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydicom import uid as ts
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, _config, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from engine.connectors.dicom.retrieve_config import UID as _UID
from engine.connectors.dicom.retrieve_config import RetrieveConfig
from engine.core.component import ComponentContext, Delivered, Inbound, Outbound
from engine.core.errors import PermanentError, RetryableError
from engine.core.registry import register
from engine.dicom import DicomHeaderError, part10, read_header
from engine.security.tls import client_context, client_context_for

log = logging.getLogger("radbridge.dicom.retrieve")
# pynetdicom logs request identifiers (the Study UID) at INFO, httpx every URL (WADO-RS URLs hold it).
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))

_PERMANENT = {0xA801: "move destination unknown", 0xA900: "identifier does not match SOP class"}
_MAX_CONTEXTS = 128
# The syntaxes that get a presentation context each (C-GET with a short sop_classes list), so the PACS
# can send every instance as stored; rarer ones share one more context per class.
_COMMON_SYNTAXES = [
    ts.ExplicitVRLittleEndian, ts.ImplicitVRLittleEndian, ts.DeflatedExplicitVRLittleEndian, ts.ExplicitVRBigEndian,
    ts.JPEGBaseline8Bit, ts.JPEGExtended12Bit, ts.JPEGLosslessSV1, ts.JPEGLSLossless, ts.JPEGLSNearLossless,
    ts.JPEG2000Lossless, ts.JPEG2000, ts.RLELossless,
]  # fmt: skip


@dataclass
class _Job:
    """One C-MOVE / C-GET, shared between the event loop and pynetdicom's threads."""

    loop: asyncio.AbstractEventLoop
    assoc: Any = None
    connected: bool = False  # TCP connected (so a failed association was refused or aborted, not unreachable)
    problem: str = "no final response"  # why there is no final status
    rejected: dict[str, Any] | None = None  # A-ASSOCIATE-RJ result, source, reason
    published: int = 0  # C-GET: instances handed to the engine
    unstored: int = 0  # C-GET: the engine could not store them, or no channel subscribes to `into`


def study_uid_of(message: Outbound) -> str:
    """The study a message names; PermanentError (naming the message, never its content) otherwise."""
    try:
        data = json.loads(message.body)
    except (ValueError, UnicodeDecodeError):
        raise PermanentError(f"message {message.message_id}: body is not JSON") from None
    uid = data.get("study_uid") if isinstance(data, dict) else None
    if not isinstance(uid, str) or len(uid.strip()) > 64 or not _UID.fullmatch(uid.strip()):
        raise PermanentError(f"message {message.message_id}: no valid study_uid")
    return uid.strip()


def _on_open(event: evt.Event, job: _Job) -> None:
    """TCP connected (before the association request): note it, and turn Nagle off."""
    job.connected = True
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@register("destination", "dicom-retrieve")
class RetrieveDestination:
    """Retrieves the study a message names (see the module docstring for outcomes)."""

    Config = RetrieveConfig

    def __init__(self, config: RetrieveConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx
        self._tls: ssl.SSLContext | None = None
        if config.tls is not None or (config.base_url or "").startswith("https://"):
            self._tls = client_context_for(config.tls, ctx.root, f"dicom-retrieve of {ctx.channel}")
        if config.method == "wado-rs":
            assert config.base_url is not None
            parts = urlsplit(config.base_url)
            self.peer = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        else:
            self.peer = f"{config.host}:{config.port}"
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def send(self, message: Outbound) -> Delivered:
        uid = study_uid_of(message)
        cfg = self.config
        if cfg.skip_if_held and self.ctx.held_instances is not None:
            try:
                held = await asyncio.to_thread(self.ctx.held_instances, uid)
            except Exception as exc:  # noqa: BLE001 - the store may be busy: try the whole message again later
                raise RetryableError(f"dicom-retrieve of {self.ctx.channel}: cannot count held instances "
                                     f"({type(exc).__name__})") from None  # fmt: skip
            if held > 0:
                return Delivered(detail="already held")
        if cfg.method != "c-move" and self.ctx.topics is None:
            raise PermanentError(f"dicom-retrieve of {self.ctx.channel}: {cfg.method} needs the engine's topics")
        started = time.monotonic()
        what = f"dicom-retrieve {cfg.method} {self.peer} message {message.message_id}"
        if cfg.method == "wado-rs":
            try:
                count = await asyncio.wait_for(self._wado(uid, what), cfg.timeout_s)
            except TimeoutError:
                raise RetryableError(f"{what}: not done within {cfg.timeout_s:g} s") from None
        else:
            count = await self._dimse(uid, what)
        log.info("%s: %d instance(s) in %.2f s", what, count, time.monotonic() - started)
        return Delivered(detail=f"{count} instances")

    # -- publishing (C-GET, WADO-RS)

    async def _publish(self, raw: bytes, fallback_uid: str = "") -> bool:
        """Hand one instance to the `into` topic; False when no subscriber stored it."""
        assert self.ctx.topics is not None and self.config.into is not None
        decoded: Any
        try:
            decoded = read_header(raw)
            sop_uid, sop_class = decoded.sop_instance_uid, decoded.sop_class_uid
        except DicomHeaderError as exc:
            decoded, sop_uid, sop_class = exc, fallback_uid, ""
        keyword = ts.UID(sop_class).keyword if sop_class else ""
        inbound = Inbound(raw=raw, kind="dicom", peer=self.peer, decoded=decoded, dedup=sop_uid or None,
                          type=keyword or sop_class or None)  # fmt: skip
        outcomes = await self.ctx.topics.publish(self.config.into, inbound)
        return bool(outcomes) and all(o.status != "unavailable" for o in outcomes)

    # -- DIMSE (C-MOVE, C-GET)

    def _ae(self) -> tuple[AE, list[Any]]:
        cfg = self.config
        ae = AE(ae_title=cfg.calling_ae)
        ae.connection_timeout = ae.acse_timeout = cfg.connect_timeout_s
        ae.dimse_timeout = ae.network_timeout = cfg.dimse_timeout_s
        if cfg.method == "c-move":
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            return ae, []
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        classes = cfg.sop_classes or [c.abstract_syntax for c in StoragePresentationContexts]
        classes = list(dict.fromkeys(classes))[: _MAX_CONTEXTS - 1]
        if len(classes) * (len(_COMMON_SYNTAXES) + 1) < _MAX_CONTEXTS:  # a context per syntax: all as stored
            for uid in classes:
                for syntax in _COMMON_SYNTAXES:
                    ae.add_requested_context(uid, [syntax])
                ae.add_requested_context(uid, [s for s in ALL_TRANSFER_SYNTAXES if s not in _COMMON_SYNTAXES])
        else:
            for uid in classes:
                ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES)
        return ae, [build_role(uid, scp_role=True) for uid in classes]

    def _on_store(self, event: evt.Event, job: _Job) -> int:
        """A C-GET storage sub-operation, in pynetdicom's thread: publish it on the event loop."""
        raw = part10(event.file_meta, event.request.DataSet.getvalue())  # in memory only, as received
        publish = self._publish(raw, str(event.request.AffectedSOPInstanceUID))
        future = asyncio.run_coroutine_threadsafe(publish, job.loop)
        try:
            stored = future.result(self.config.dimse_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure to store is "out of resources" to the PACS
            future.cancel()
            log.warning("dicom-retrieve %s: publishing an instance failed (%s)", self.peer, type(exc).__name__)
            stored = False
        if not stored:
            job.unstored += 1
            return 0xA700
        job.published += 1
        return 0x0000

    async def _dimse(self, uid: str, what: str) -> int:
        job = _Job(asyncio.get_running_loop())
        work = asyncio.ensure_future(asyncio.to_thread(self._associate_and_retrieve, uid, job))
        work.add_done_callback(lambda f: f.cancelled() or f.exception())  # an abandoned thread's error is no noise
        try:
            status, completed, failed = await asyncio.wait_for(asyncio.shield(work), self.config.timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if job.assoc is not None:
                job.assoc.abort(block=False)
                job.assoc.dimse.msg_queue.put((None, None))  # wake the thread now, not after dimse_timeout_s
            if isinstance(exc, TimeoutError):
                raise RetryableError(f"{what}: not done within {self.config.timeout_s:g} s") from None
            raise
        except (OSError, ValueError, RuntimeError) as exc:  # pynetdicom refusing our own request
            raise RetryableError(f"{what}: {type(exc).__name__}") from None
        if job.rejected is not None:
            await self._audit("pacs.rejected", **job.rejected)
        if status is None:
            raise RetryableError(f"{what}: {job.problem}")
        if job.unstored:
            into = self.config.into
            raise RetryableError(f"{what}: the engine could not store {job.unstored} instance(s) (topic {into})")
        if status in _PERMANENT:
            raise PermanentError(f"{what}: PACS answered 0x{status:04X} ({_PERMANENT[status]})")
        if status != 0x0000:
            hint = ""
            if status >> 12 == 0xC and not completed:  # Orthanc's answer to an unknown study or move destination
                hint = " (unable to process: the PACS may not hold the study yet"
                hint += ", or may not know move_destination)" if self.config.method == "c-move" else ")"
            raise RetryableError(f"{what}: PACS answered 0x{status:04X}{hint} ({completed} done, {failed} failed)")
        count = job.published if self.config.method == "c-get" else completed
        if count == 0:
            raise RetryableError(f"{what}: the PACS returned no instance of the study (it may not hold it yet)")
        return count

    def _associate_and_retrieve(self, uid: str, job: _Job) -> tuple[int | None, int, int]:
        """Blocking, in a worker thread: (final status or None, completed, failed sub-operations); when
        there is no final status, job.problem says why."""
        cfg = self.config
        assert cfg.host is not None and cfg.port is not None and cfg.called_ae is not None
        ae, roles = self._ae()
        handlers: list[Any] = [(evt.EVT_CONN_OPEN, _on_open, [job])]
        if cfg.method == "c-get":
            handlers.append((evt.EVT_C_STORE, self._on_store, [job]))
        tls_args = (self._tls, (cfg.tls.server_name if cfg.tls else None) or cfg.host) if self._tls else None
        assoc = job.assoc = ae.associate(cfg.host, cfg.port, ae_title=cfg.called_ae, ext_neg=roles or None,
                                         evt_handlers=handlers, tls_args=tls_args)  # fmt: skip
        if not assoc.is_established:
            if assoc.is_rejected:
                rj = assoc.acceptor.primitive
                job.rejected = {"result": getattr(rj, "result", None), "source": getattr(rj, "result_source", None),
                                "reason": getattr(rj, "diagnostic", None)}  # fmt: skip
                job.problem = "association rejected (result {result}, source {source}, reason {reason})"
                job.problem = job.problem.format(**job.rejected)
            elif job.connected:
                job.problem = "association aborted while negotiating (TLS failure? no context accepted?)"
            else:
                job.problem = "cannot connect"
            return None, 0, 0
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = uid
        status: int | None = None
        completed = failed = 0
        get = cfg.method == "c-get"
        model = StudyRootQueryRetrieveInformationModelGet if get else StudyRootQueryRetrieveInformationModelMove
        try:
            if get:
                responses = assoc.send_c_get(query, model)
            else:
                responses = assoc.send_c_move(query, str(cfg.move_destination), model)
            for rsp, _identifier in responses:
                if "Status" not in rsp:  # pynetdicom's way of saying: timed out, aborted, or an invalid response
                    job.problem = "no valid response (timeout or association aborted)"
                    return None, completed, failed
                status = int(rsp.Status)
                completed = max(completed, int(rsp.get("NumberOfCompletedSuboperations", 0) or 0))
                failed = max(failed, int(rsp.get("NumberOfFailedSuboperations", 0) or 0))
                if status not in (0xFF00, 0xFF01):
                    break
        except ValueError:  # pynetdicom: no accepted presentation context for the model
            job.problem = f"the PACS did not accept {model.name}"
            return None, 0, 0
        finally:
            if assoc.is_established:
                assoc.release()
        if status in (0xFF00, 0xFF01):
            job.problem = "association ended before the final response"
            return None, completed, failed
        return status, completed, failed

    # -- WADO-RS

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            cfg, auth, headers = self.config, None, {}
            if cfg.auth is not None and cfg.auth.bearer is not None:
                headers["Authorization"] = f"Bearer {cfg.auth.bearer.get_secret_value()}"
            elif cfg.auth is not None and cfg.auth.username is not None and cfg.auth.password is not None:
                auth = httpx.BasicAuth(cfg.auth.username, cfg.auth.password.get_secret_value())
            timeout = httpx.Timeout(cfg.dimse_timeout_s, connect=cfg.connect_timeout_s)
            self._http = httpx.AsyncClient(
                base_url=str(cfg.base_url), auth=auth, headers=headers, timeout=timeout, trust_env=False,
                verify=self._tls if self._tls is not None else client_context(),
            )  # fmt: skip
        return self._http

    async def _wado(self, uid: str, what: str) -> int:
        cfg = self.config
        accept = 'multipart/related; type="application/dicom"'
        if cfg.transfer_syntax:
            accept += f"; transfer-syntax={cfg.transfer_syntax}"
        try:
            async with self._client().stream("GET", f"studies/{uid}", headers={"Accept": accept}) as response:
                status = response.status_code
                if status == 200:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > cfg.max_bytes:
                            raise PermanentError(f"{what}: answer larger than max_bytes ({cfg.max_bytes})")
                content_type = response.headers.get("content-type", "")
        except httpx.HTTPError as exc:
            raise RetryableError(f"{what}: {type(exc).__name__}") from None
        if status in (401, 403):
            await self._audit("pacs.unauthorized", status=status)
            raise RetryableError(f"{what}: HTTP {status} (credentials refused)")
        if status in (400, 406):
            raise PermanentError(f"{what}: HTTP {status} (the server will not serve this request)")
        if status in (204, 404):
            raise RetryableError(f"{what}: HTTP {status}: no instance of the study (the PACS may not hold it yet)")
        if status != 200:
            raise RetryableError(f"{what}: HTTP {status}")
        try:
            instances = split_multipart(content_type, bytes(body))
        except ValueError as exc:
            raise RetryableError(f"{what}: unreadable multipart answer ({exc})") from None
        if not instances:
            raise RetryableError(f"{what}: the PACS returned no instance of the study (it may not hold it yet)")
        for raw in instances:
            if not await self._publish(raw):
                raise RetryableError(f"{what}: the engine could not store an instance (topic {cfg.into})")
        return len(instances)

    async def _audit(self, action: str, **detail: Any) -> None:
        try:
            detail = {"channel": self.ctx.channel, "method": self.config.method, **detail}
            await self.ctx.audit(action, actor=f"peer:{self.peer}", peer=self.peer, outcome="denied", detail=detail)
        except Exception as exc:  # noqa: BLE001 - auditing must not hide the retrieval's own error; it is logged
            log.error("dicom-retrieve %s: audit of %s failed (%s)", self.peer, action, type(exc).__name__)


def split_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The application/dicom parts of a multipart/related body, byte for byte (ValueError if malformed)."""
    if not content_type.lower().startswith("multipart/"):
        raise ValueError("not a multipart answer")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise ValueError("malformed multipart body")
    parts = []
    for part in message.iter_parts():
        if part.get_content_type() == "application/dicom":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes) and payload:
                parts.append(payload)
    return parts
