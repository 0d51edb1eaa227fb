"""Sources' own durable state (a change-feed position, an MPPS step), one sealed value per name.

Each put seals the value under a fresh data key (so key rotation and crypto-shredding treat it like
any record) and replaces the previous key and value in one transaction.
"""

from __future__ import annotations

from sqlalchemy import Engine, bindparam, delete, select

from engine.core.clock import utcnow
from engine.core.ids import new_id
from engine.security.vault import Vault, WrappedKey
from engine.store.tables import DataKeyRow, SourceState
from engine.store.writer import GroupWriter, WriteItem

_state = SourceState.__table__
_keys = DataKeyRow.__table__
_PART = "state"


class ChannelState:
    """The StateStore (engine.core.component) of one channel: names are kept as `channel/name`."""

    def __init__(self, engine: Engine, writer: GroupWriter, vault: Vault, channel: str) -> None:
        self.engine, self.writer, self.vault, self.channel = engine, writer, vault, channel

    def _name(self, name: str) -> str:
        return f"{self.channel}/{name}"

    def get(self, name: str) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_state).where(_state.c.name == self._name(name))).first()
            if row is None:
                return None
            key = conn.execute(select(_keys).where(_keys.c.record_id == row.record_id)).first()
        if key is None:
            return None  # crypto-shredded
        data_key = self.vault.unwrap(WrappedKey(key.kek_id, key.kek_version, key.wrapped), row.record_id)
        return self.vault.open(data_key, _PART, row.sealed)

    def item(self, name: str, value: bytes) -> WriteItem:
        full, record_id, now = self._name(name), new_id(), utcnow()
        data_key = self.vault.new_data_key(record_id)
        with self.engine.connect() as conn:
            old = conn.execute(select(_state.c.record_id).where(_state.c.name == full)).scalar()
        w = data_key.wrapped
        item = WriteItem(
            inserts=[(_keys, {"record_id": record_id, "kek_id": w.kek_id, "kek_version": w.kek_version,
                              "wrapped": w.wrapped, "created_at": now})]
        )  # fmt: skip
        sealed = self.vault.seal(data_key, _PART, value)
        row = {"name": full, "record_id": record_id, "sealed": sealed, "updated_at": now}
        item.statements.append((_DELETE_STATE, {"s_name": full}))
        item.statements.append((_state.insert(), row))
        if old:
            item.statements.append((_DELETE_KEY, {"s_record": old}))
        return item

    async def put(self, name: str, value: bytes) -> None:
        await self.writer.awrite(self.item(name, value))


_DELETE_STATE = delete(_state).where(_state.c.name == bindparam("s_name"))
_DELETE_KEY = delete(_keys).where(_keys.c.record_id == bindparam("s_record"))
