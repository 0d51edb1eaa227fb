"""Messages and their sealed content parts: what producers write and what operators read."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, select, update

from engine.core.clock import utcnow
from engine.core.ids import new_id
from engine.security.vault import DataKey, Vault, WrappedKey
from engine.store.blobs import BlobFolder
from engine.store.sql import Compiled
from engine.store.tables import STATUSES, Content, DataKeyRow, Delivery, Message
from engine.store.writer import WriteItem

INDEX_COLUMNS = {
    "accession": "accession_idx",
    "mrn": "mrn_idx",
    "study_uid": "study_uid_idx",
    "control_id": "control_idx",
}

_messages = Message.__table__
_contents = Content.__table__
_keys = DataKeyRow.__table__
_deliveries = Delivery.__table__
_DELETE_PART = _contents.delete().where(
    (_contents.c.message_id == bindparam("p_message")) & (_contents.c.part == bindparam("p_part"))
)
_INSERT_PART = _contents.insert()
_SAME_CONTROL = (
    select(_messages.c.id, _messages.c.content_mac)
    .where(_messages.c.control_idx == bindparam("c"), _messages.c.received_at >= bindparam("since"))
    .order_by(_messages.c.id.desc())
    .limit(10)
)
SET_STATUS = (  # a message's overall status (also engine.store.deadletters)
    update(_messages)
    .where(_messages.c.id == bindparam("m_id"))
    .values(status=bindparam("m_status"), error=bindparam("m_error"), updated_at=bindparam("m_now"))
)


@dataclass(frozen=True)
class MessageView:
    """A message's metadata: ids, states and times; never content."""

    id: str
    channel: str
    direction: str
    kind: str
    status: str
    received_at: datetime
    updated_at: datetime
    config_hash: str
    size: int
    error: str | None
    deliveries: tuple[tuple[str, str, int], ...]  # (destination, status, attempts)
    parts: tuple[str, ...]


@dataclass(frozen=True)
class Prestored:
    """A payload sealed and durably written ahead of its message (Messages.prestore)."""

    message_id: str
    data_key: DataKey
    row: dict[str, Any]  # its contents row


class Messages:
    def __init__(self, engine: Engine, vault: Vault, blobs: BlobFolder, config_hash: str, inline_max: int) -> None:
        self.engine = engine
        self.vault = vault
        self.blobs = blobs
        self.config_hash = config_hash
        self.inline_max = inline_max
        self._sql = Compiled(engine.dialect)
        self._hot: Any = None  # DBAPI connection for the per-message duplicate check
        self._hot_lock = threading.Lock()

    # -- writing -------------------------------------------------------------------------------

    def prestore(self, raw: bytes) -> Prestored:
        """Seal `raw` under a new message's data key and write it to the blob folder, durably, before
        the message exists: a source can overlap this with its parsing. receive(prestored=...) then
        commits the message with it; a message never committed leaves an orphan blob (swept)."""
        message_id = new_id()
        data_key = self.vault.new_data_key(message_id)
        return Prestored(message_id, data_key, self._content_row(data_key, "raw", raw))

    def receive(
        self,
        channel: str,
        kind: str,
        raw: bytes,
        *,
        direction: str = "in",
        indexes: Mapping[str, str] | None = None,
        destinations: Sequence[str] = (),
        status: str = "received",
        error: str | None = None,
        content_mac: str | None = None,
        message_id: str | None = None,
        parts: Mapping[str, bytes] | None = None,
        prestored: Prestored | None = None,
    ) -> tuple[str, WriteItem]:
        """Seal a new message under a fresh data key (or take the one `prestored` already sealed raw
        under); returns its id and the rows to commit."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        if prestored is not None:
            message_id, data_key = prestored.message_id, prestored.data_key
        else:
            message_id = message_id or new_id()
            data_key = self.vault.new_data_key(message_id)
        now = utcnow()
        row: dict[str, Any] = {
            "id": message_id,
            "channel": channel,
            "direction": direction,
            "kind": kind,
            "status": status,
            "received_at": now,
            "updated_at": now,
            "config_hash": self.config_hash,
            "size": len(raw),
            "error": error,
            "control_idx": None,
            "content_mac": content_mac,
            "accession_idx": None,
            "mrn_idx": None,
            "study_uid_idx": None,
        }
        for name, value in (indexes or {}).items():
            row[INDEX_COLUMNS[name]] = value
        item = WriteItem(inserts=[(_messages, row), (_keys, self._key_row(data_key, now))])
        item.inserts.append((_contents, prestored.row if prestored else self._content_row(data_key, "raw", raw)))
        for part, data in (parts or {}).items():  # e.g. "transformed", sealed under the same data key
            item.inserts.append((_contents, self._content_row(data_key, part, data)))
        for destination in destinations:
            item.inserts.append(
                (
                    _deliveries,
                    {
                        "message_id": message_id,
                        "destination": destination,
                        "channel": channel,
                        "status": "queued",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "last_error": None,
                        "updated_at": now,
                    },
                )
            )
        return message_id, item

    def add_part(self, message_id: str, part: str, data: bytes) -> WriteItem:
        """Seal another part (transformed, sent:<dest>, response:<dest>) under the message's data key."""
        return WriteItem(inserts=[(_contents, self._content_row(self._data_key(message_id), part, data))])

    def put_part(self, message_id: str, part: str, data: bytes) -> WriteItem:
        """Like add_part, replacing the part if it exists (the newest response of a retried delivery)."""
        row = self._content_row(self._data_key(message_id), part, data)
        params = {"p_message": message_id, "p_part": part}
        # As statements, in this order: the writer runs plain inserts before statements.
        return WriteItem(statements=[(_DELETE_PART, params), (_INSERT_PART, row)])

    def set_status(self, message_id: str, status: str, error: str | None = None) -> WriteItem:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        return WriteItem(
            statements=[(SET_STATUS, {"m_id": message_id, "m_status": status, "m_error": error, "m_now": utcnow()})]
        )

    def _key_row(self, data_key: DataKey, now: datetime) -> dict[str, Any]:
        w = data_key.wrapped
        return {
            "record_id": data_key.record_id,
            "kek_id": w.kek_id,
            "kek_version": w.kek_version,
            "wrapped": w.wrapped,
            "created_at": now,
        }

    def _content_row(self, data_key: DataKey, part: str, data: bytes) -> dict[str, Any]:
        sealed = self.vault.seal(data_key, part, data)
        row = {"message_id": data_key.record_id, "part": part, "size": len(data), "sealed": None, "blob": None}
        if len(sealed) > self.inline_max:
            row["blob"] = self.blobs.put(data_key.record_id, part, sealed)
        else:
            row["sealed"] = sealed
        return row

    # -- reading -------------------------------------------------------------------------------

    def same_control(self, control_idx: str, since: datetime) -> list[tuple[str, str | None]]:
        """(id, content_mac) of recent messages carrying this sender + control id, newest first.
        Asked for every incoming message, so it runs on a connection of its own, compiled once."""
        with self._hot_lock:
            if self._hot is None:
                self._hot = self.engine.raw_connection()
            cursor = self._hot.cursor()
            try:
                return [tuple(r) for r in self._sql.execute(cursor, _SAME_CONTROL, {"c": control_idx, "since": since})]
            finally:
                cursor.close()

    def close(self) -> None:
        with self._hot_lock:
            if self._hot is not None:
                self._hot.close()
                self._hot = None

    def _data_key(self, message_id: str) -> DataKey:
        with self.engine.connect() as conn:
            row = conn.execute(select(_keys).where(_keys.c.record_id == message_id)).first()
        if row is None:
            raise LookupError(f"message {message_id} has no data key (unknown or purged)")
        return self.vault.unwrap(WrappedKey(row.kek_id, row.kek_version, row.wrapped), message_id)

    def read(self, message_id: str, part: str = "raw") -> bytes:
        """Decrypt one part. Callers that show it to a person must audit the access."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(_contents).where(_contents.c.message_id == message_id, _contents.c.part == part)
            ).first()
        if row is None:
            raise LookupError(f"message {message_id} has no part {part!r}")
        sealed = row.sealed if row.sealed is not None else self.blobs.get(row.blob)
        return self.vault.open(self._data_key(message_id), part, sealed)

    def get(self, message_id: str) -> MessageView | None:
        found = self.list(ids=[message_id], limit=1)
        return found[0] if found else None

    def list(
        self,
        *,
        channel: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        index: tuple[str, str] | None = None,
        ids: Iterable[str] | None = None,
        limit: int = 50,
    ) -> list[MessageView]:
        """Newest first. `index` is (kind, blind index) — search by identifier without any plaintext scan."""
        query = select(_messages).order_by(_messages.c.id.desc()).limit(limit)
        if channel:
            query = query.where(_messages.c.channel == channel)
        if status:
            query = query.where(_messages.c.status == status)
        if since:
            query = query.where(_messages.c.received_at >= since)
        if until:  # exclusive, so consecutive windows do not overlap
            query = query.where(_messages.c.received_at < until)
        if index:
            query = query.where(_messages.c[INDEX_COLUMNS[index[0]]] == index[1])
        if ids is not None:
            query = query.where(_messages.c.id.in_(list(ids)))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            found = [r.id for r in rows]
            deliveries: dict[str, list[tuple[str, str, int]]] = {}
            parts: dict[str, list[str]] = {}
            if found:
                for d in conn.execute(select(_deliveries).where(_deliveries.c.message_id.in_(found))):
                    deliveries.setdefault(d.message_id, []).append((d.destination, d.status, d.attempts))
                for c in conn.execute(
                    select(_contents.c.message_id, _contents.c.part).where(_contents.c.message_id.in_(found))
                ):
                    parts.setdefault(c.message_id, []).append(c.part)
        return [
            MessageView(
                r.id,
                r.channel,
                r.direction,
                r.kind,
                r.status,
                r.received_at,
                r.updated_at,
                r.config_hash,
                r.size,
                r.error,
                tuple(sorted(deliveries.get(r.id, []))),
                tuple(sorted(parts.get(r.id, []))),
            )
            for r in rows
        ]
