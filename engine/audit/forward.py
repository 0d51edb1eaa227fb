"""Forwarding the audit log, as it is written, to an off-host syslog collector: RFC 5424 over TLS (RFC 5425).

Each audit_log entry becomes one RFC 5424 message, framed by octet counting ("MSGLEN SP SYSLOG-MSG"):

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [radbridge@32473 node=.. seq=.. hash=.. ...] BOM<AuditMessage/>

- PRI: facility 10 (authpriv) by default, or 13 (log audit); severity 5 (notice) for a success,
  4 (warning) for a failure or a denial.
- TIMESTAMP is the entry's ts, HOSTNAME its node, MSGID its action (truncated to RFC 5424's 32 octets).
- STRUCTURED-DATA carries the chain position and the clear columns (node, seq, id, hash, prev, actor,
  peer, outcome, recordIds, purpose), escaped per RFC 5424 6.3.3. The SD-ID uses 32473, the example
  Private Enterprise Number of RFC 5612: replace `sd_id` with a registered PEN in production.
- MSG is the entry as a DICOM PS3.15 A.5 AuditMessage (engine.audit.export), BOM-prefixed UTF-8,
  which is what IHE ATNA (ITI-20) sends over syslog.
- Signed checkpoints are forwarded too (MSGID audit.checkpoint), each once every entry it covers has
  been forwarded, so the collector holds an off-host copy it can check the chain against.

Only the clear columns are read: the sealed `detail` column is never selected, so no PHI leaves.

Delivery is at least once, never with a gap. RFC 5425 has no application-level acknowledgement:
the position (the last forwarded (node, seq) per node) is advanced, and persisted, only after a
batch was written and drained to the socket (the transport's write buffer is empty) while the
collector had not closed the connection. A reconnect re-sends from the persisted position, so after
a crash or a connection lost mid-batch an entry may arrive twice, but none is skipped; a collector
de-duplicates on (node, seq), which is in every message. The position lives in a small JSON file
(mode 0600, replaced atomically), not in the database, so forwarding needs no schema change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, or_, select

from engine.audit.export import audit_message
from engine.store.tables import AuditCheckpoint, AuditRow

log = logging.getLogger("radbridge.audit.forward")

_audit = AuditRow.__table__
_checkpoints = AuditCheckpoint.__table__
# Everything but the sealed detail, which is never read here.
_COLUMNS = [c for c in _audit.c if c.name != "detail"]
_CP_COLUMNS = [
    _checkpoints.c.node,
    _checkpoints.c.seq,
    _checkpoints.c.hash,
    _checkpoints.c.ts,
    _checkpoints.c.key_id,
    _checkpoints.c.signature,
]

FACILITY_AUTHPRIV = 10
FACILITY_LOG_AUDIT = 13
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
EXAMPLE_PEN = 32473  # RFC 5612 documentation PEN
SD_ID = f"radbridge@{EXAMPLE_PEN}"
CHECKPOINT_SD_ID = f"radbridgeCheckpoint@{EXAMPLE_PEN}"
CHECKPOINT_MSGID = "audit.checkpoint"
BOM = b"\xef\xbb\xbf"
STATE_VERSION = 1


# -- RFC 5424 formatting ----------------------------------------------------------------------------


def _header_field(value: str | None, limit: int) -> str:
    """A header field: PRINTUSASCII (33..126) only, at most `limit` octets, "-" when empty."""
    text = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in (value or ""))[:limit]
    return text or "-"


def _sd_name(name: str) -> str:
    if not name or len(name) > 32 or any(ch in '= ]"' or not 33 <= ord(ch) <= 126 for ch in name):
        raise ValueError(f"not an RFC 5424 SD-NAME: {name!r}")
    return name


def escape_param(value: str) -> str:
    """PARAM-VALUE escaping (RFC 5424 6.3.3): '"', '\\' and ']' are preceded by a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def sd_element(sd_id: str, params: Iterable[tuple[str, Any]]) -> str:
    parts = [_sd_name(sd_id)]
    for name, value in params:
        if value is None or value == "":
            continue
        parts.append(f'{_sd_name(name)}="{escape_param(str(value))}"')
    return "[" + " ".join(parts) + "]"


def syslog_message(
    *,
    facility: int,
    severity: int,
    timestamp: str,
    hostname: str,
    app_name: str,
    msgid: str,
    structured_data: str,
    msg: bytes | None = None,
    procid: str | None = None,
) -> bytes:
    """One RFC 5424 SYSLOG-MSG (not framed)."""
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError("facility must be 0..23 and severity 0..7")
    header = (
        f"<{facility * 8 + severity}>1 {_header_field(timestamp, 64)} {_header_field(hostname, 255)} "
        f"{_header_field(app_name, 48)} {_header_field(procid, 128)} {_header_field(msgid, 32)} "
        f"{structured_data or '-'}"
    )
    data = header.encode("utf-8")
    return data + b" " + msg if msg else data


def frame(message: bytes) -> bytes:
    """RFC 5425 octet-counting: MSG-LEN SP SYSLOG-MSG."""
    return str(len(message)).encode() + b" " + message


def entry_message(row: Mapping[str, Any], *, app_name: str, facility: int, sd_id: str = SD_ID) -> bytes:
    """One audit_log row (without detail) as an RFC 5424 message carrying its ATNA AuditMessage."""
    if "detail" in row and row["detail"] is not None:
        raise ValueError("the sealed detail is never forwarded")
    severity = SEVERITY_NOTICE if row["outcome"] == "success" else SEVERITY_WARNING
    sd = sd_element(
        sd_id,
        [
            ("node", row["node"]),
            ("seq", row["seq"]),
            ("id", row["id"]),
            ("hash", row["hash"]),
            ("prev", row["prev_hash"]),
            ("actor", row["actor"]),
            ("peer", row.get("peer")),
            ("outcome", row["outcome"]),
            ("recordIds", row["record_ids"]),
            ("purpose", row.get("purpose")),
        ],
    )
    atna = ET.tostring(audit_message(row), encoding="unicode")
    return syslog_message(
        facility=facility,
        severity=severity,
        timestamp=row["ts"],
        hostname=row["node"],
        app_name=app_name,
        msgid=row["action"],
        structured_data=sd,
        msg=BOM + atna.encode("utf-8"),
    )


def checkpoint_message(cp: Mapping[str, Any], *, app_name: str, facility: int) -> bytes:
    """A signed checkpoint (node, seq, hash, ts, key id, Ed25519 signature over chain.checkpoint_payload)."""
    sd = sd_element(
        CHECKPOINT_SD_ID,
        [
            ("node", cp["node"]),
            ("seq", cp["seq"]),
            ("hash", cp["hash"]),
            ("ts", cp["ts"]),
            ("keyId", cp["key_id"]),
            ("signature", cp["signature"]),
        ],
    )
    return syslog_message(
        facility=facility,
        severity=SEVERITY_NOTICE,
        timestamp=cp["ts"],
        hostname=cp["node"],
        app_name=app_name,
        msgid=CHECKPOINT_MSGID,
        structured_data=sd,
    )


# -- the persisted position -------------------------------------------------------------------------


class ForwardState:
    """The last forwarded seq per node, for entries and checkpoints, in a JSON file (0600, atomic)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.entries: dict[str, int] = {}
        self.checkpoints: dict[str, int] = {}
        if self.path.exists():
            doc = json.loads(self.path.read_text())
            if doc.get("version") != STATE_VERSION:
                raise ValueError(f"{self.path}: unknown forward state version {doc.get('version')!r}")
            self.entries = {str(k): int(v) for k, v in doc.get("entries", {}).items()}
            self.checkpoints = {str(k): int(v) for k, v in doc.get("checkpoints", {}).items()}

    def save(self) -> None:
        doc = {"version": STATE_VERSION, "entries": self.entries, "checkpoints": self.checkpoints}
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)  # created 0600
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(doc, out, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename durable
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


# -- the forwarder ----------------------------------------------------------------------------------


class _Connection:
    """One TLS connection to the collector; watches for the collector closing it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closed = asyncio.Event()
        self._watch = asyncio.create_task(self._watch_eof())

    async def _watch_eof(self) -> None:
        # A collector sends nothing on RFC 5425; EOF or an error means it has gone.
        with contextlib.suppress(Exception):
            while await self.reader.read(4096):
                pass
        self.closed.set()

    @property
    def alive(self) -> bool:
        return not self.closed.is_set() and not self.writer.transport.is_closing()

    async def send(self, frames: list[bytes], timeout: float) -> None:
        if not self.alive:
            raise ConnectionError("collector closed the connection")
        self.writer.write(b"".join(frames))
        await asyncio.wait_for(self._flush(), timeout)
        await asyncio.sleep(0)  # let a pending EOF / reset be seen before the position moves
        if not self.alive:
            raise ConnectionError("collector closed the connection during the write")

    async def _flush(self) -> None:
        """drain(), then wait until the transport's buffer is empty: every byte handed to the kernel."""
        await self.writer.drain()
        while self.writer.transport.get_write_buffer_size() > 0:
            if not self.alive:
                raise ConnectionError("collector closed the connection during the write")
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self._watch.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


class AuditForwarder:
    """Streams audit entries and signed checkpoints to an RFC 5424 collector over TLS (RFC 5425).

    `await run(stop_event)` until the event is set (or stop() is called); `wake()` makes it look for
    new entries now instead of at the next poll. `forward_pending()` forwards what is there once.
    """

    def __init__(
        self,
        db: Engine,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext,
        state_path: Path | str,
        node: str,
        app_name: str = "radbridge",
        server_hostname: str | None = None,
        facility: int = FACILITY_AUTHPRIV,
        sd_id: str = SD_ID,
        nodes: Iterable[str] | None = None,
        publish_checkpoints: bool = True,
        batch: int = 100,
        poll_interval: float = 1.0,
        connect_timeout: float = 10.0,
        write_timeout: float = 30.0,
        backoff_min: float = 0.5,
        backoff_max: float = 60.0,
        gap_grace: float = 60.0,
    ) -> None:
        if facility not in (FACILITY_AUTHPRIV, FACILITY_LOG_AUDIT):
            raise ValueError("facility must be 10 (authpriv) or 13 (log audit)")
        if not isinstance(tls, ssl.SSLContext):
            raise TypeError("a TLS context is required: audit entries never travel in clear")
        _sd_name(sd_id)
        self.db = db
        self.host, self.port, self.tls = host, port, tls
        self.server_hostname = server_hostname or host
        self.node = node  # the node running this forwarder (logged; kept in the state file)
        self.app_name = app_name
        self.facility = facility
        self.sd_id = sd_id
        self.nodes = sorted(set(nodes)) if nodes is not None else None
        self.publish_checkpoints = publish_checkpoints
        self.batch = batch
        self.poll_interval = poll_interval
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.gap_grace = gap_grace
        self._gaps: dict[tuple[str, int], float] = {}
        self.state = ForwardState(state_path)
        self.sent_entries = 0
        self.sent_checkpoints = 0
        self.last_error: str | None = None
        self._conn: _Connection | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- control --------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for new entries now (safe from any thread)."""
        loop, event = self._loop, self._wake
        if loop is None or event is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(event.set)

    def stop(self) -> None:
        loop, event = self._loop, self._stop
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    @property
    def position(self) -> dict[str, int]:
        """The last forwarded seq per node (as persisted)."""
        return dict(self.state.entries)

    # -- reading --------------------------------------------------------------------------------

    def _read_entries(self) -> list[dict[str, Any]]:
        """The next batch after the persisted positions, in (node, seq) order; never the detail column."""
        query = select(*_COLUMNS).order_by(_audit.c.node, _audit.c.seq).limit(self.batch)
        known = self.state.entries
        conditions = [and_(_audit.c.node == node, _audit.c.seq > seq) for node, seq in sorted(known.items())]
        if known:
            conditions.append(_audit.c.node.notin_(list(known)))
            query = query.where(or_(*conditions))
        if self.nodes is not None:
            query = query.where(_audit.c.node.in_(self.nodes))
        with self.db.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        # Forward a contiguous run per node only: a chain has no gaps, so a missing seq is a write
        # not yet visible to this reader and the rest of that node waits for the next round. A gap
        # still there after gap_grace seconds (a deleted row: `audit verify` reports it) is passed
        # over with an error, so one broken chain cannot stop the off-host copy for good.
        out: list[dict[str, Any]] = []
        expected: dict[str, int] = {}
        blocked: set[str] = set()
        for row in rows:
            node = row["node"]
            if node in blocked:
                continue
            want = expected.get(node, known[node] + 1 if node in known else row["seq"])
            if row["seq"] != want:
                first = self._gaps.setdefault((node, want), time.monotonic())
                if time.monotonic() - first < self.gap_grace:
                    log.warning("audit forward: node %s seq %s not visible yet; waiting", node, want)
                    blocked.add(node)
                    continue
                log.error(
                    "audit forward: node %s seqs %s..%s missing; forwarding past the gap", node, want, row["seq"] - 1
                )
            self._gaps.pop((node, want), None)
            expected[node] = row["seq"] + 1
            out.append(row)
        return out

    def _read_checkpoints(self) -> list[dict[str, Any]]:
        """Checkpoints not yet forwarded whose entries all have been."""
        if not self.publish_checkpoints or not self.state.entries:
            return []
        conditions = []
        for node, upto in sorted(self.state.entries.items()):
            after = self.state.checkpoints.get(node, 0)
            conditions.append(and_(_checkpoints.c.node == node, _checkpoints.c.seq > after, _checkpoints.c.seq <= upto))
        query = select(*_CP_COLUMNS).where(or_(*conditions)).order_by(_checkpoints.c.node, _checkpoints.c.seq)
        with self.db.connect() as conn:
            return [dict(r) for r in conn.execute(query.limit(self.batch)).mappings()]

    # -- sending --------------------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.tls,
                server_hostname=self.server_hostname,
                ssl_handshake_timeout=self.connect_timeout,
            ),
            self.connect_timeout + 1,
        )
        log.info("audit forward: connected to %s:%s", self.host, self.port)
        return _Connection(reader, writer)

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _send(self, frames: list[bytes]) -> None:
        if self._conn is None or not self._conn.alive:
            await self._disconnect()
            self._conn = await self._connect()
        try:
            await self._conn.send(frames, self.write_timeout)
        except BaseException:
            await self._disconnect()
            raise

    async def forward_pending(self) -> int:
        """Forward everything not yet forwarded (entries, then their checkpoints); returns how many
        messages were sent. Raises OSError / ssl.SSLError / TimeoutError when the collector is
        unreachable or refused; the position then stays where it was."""
        sent = 0
        while True:
            rows = await asyncio.to_thread(self._read_entries)
            if rows:
                frames = [
                    frame(entry_message(r, app_name=self.app_name, facility=self.facility, sd_id=self.sd_id))
                    for r in rows
                ]
                await self._send(frames)
                for r in rows:  # advanced only after the batch was drained to the socket
                    self.state.entries[r["node"]] = r["seq"]
                await asyncio.to_thread(self.state.save)
                self.sent_entries += len(rows)
                sent += len(rows)
            cps = await asyncio.to_thread(self._read_checkpoints)
            if cps:
                await self._send(
                    [frame(checkpoint_message(c, app_name=self.app_name, facility=self.facility)) for c in cps]
                )
                for c in cps:
                    self.state.checkpoints[c["node"]] = c["seq"]
                await asyncio.to_thread(self.state.save)
                self.sent_checkpoints += len(cps)
                sent += len(cps)
            if len(rows) < self.batch and len(cps) < self.batch:
                return sent

    async def _pause(self, seconds: float, stop: asyncio.Event, wake: asyncio.Event | None) -> None:
        waiters = [asyncio.create_task(stop.wait())]
        if wake is not None:
            waiters.append(asyncio.create_task(wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        """Forward until stop_event is set (or stop() is called): poll every poll_interval seconds or on
        wake(); when the collector is down or refused, reconnect with exponential backoff."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop = stop_event or asyncio.Event()
        stop = self._stop
        backoff = self.backoff_min
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.forward_pending()
                except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "audit forward to %s:%s failed (%s); retrying in %.1fs",
                        self.host,
                        self.port,
                        self.last_error,
                        backoff,
                    )
                    await self._pause(backoff, stop, None)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                except Exception as exc:  # the store unavailable, say: keep trying, never take the engine down
                    self.last_error = f"{type(exc).__name__}"
                    # The type only, as everywhere: no traceback text in the logs.
                    log.error("audit forward: unexpected %s; retrying in %.1fs", type(exc).__name__, backoff)
                    await self._disconnect()
                    await self._pause(backoff, stop, None)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                self.last_error = None
                backoff = self.backoff_min
                await self._pause(self.poll_interval, stop, self._wake)
        finally:
            await self._disconnect()


def forwarder_from_settings(
    db: Engine,
    *,
    host: str,
    port: int,
    ca: str | None,
    state_path: Path | str,
    node: str,
    cert: str | None = None,
    key: str | None = None,
    min_version: str = "1.2",
    **options: Any,
) -> AuditForwarder:
    """An AuditForwarder whose TLS context is built by engine.security.tls.client_context."""
    from engine.security.tls import client_context

    return AuditForwarder(
        db,
        host=host,
        port=port,
        tls=client_context(ca, cert, key, min_version),
        state_path=state_path,
        node=node,
        **options,
    )


__all__ = [
    "AuditForwarder",
    "ForwardState",
    "checkpoint_message",
    "entry_message",
    "escape_param",
    "forwarder_from_settings",
    "frame",
    "syslog_message",
]
