"""Reading and writing the correlation state: studies, their content, orders and keys.

Reads run on a plain connection; every change is a WriteItem for the store's writer. Changes to a
study or an order are guarded on the row's `version` (StaleWrite if it moved since it was read),
so two engine nodes, or an instance arriving meanwhile, never get an update lost: the correlator
re-reads and decides again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, bindparam, select, update

from engine.core.clock import utcnow
from engine.store.sql import upsert_insert
from engine.store.tables import Instance, Order, OrderKey, Study, StudyKey
from engine.store.writer import WriteItem

_studies, _instances = Study.__table__, Instance.__table__
_orders, _order_keys, _study_keys = Order.__table__, OrderKey.__table__, StudyKey.__table__


@dataclass(frozen=True)
class StudyRow:
    key: str
    id: str
    channel: str
    study_uid_idx: str
    state: str
    reason: str | None
    instances: int
    first_at: datetime
    last_at: datetime
    stable_due: datetime | None
    wait_due: datetime | None
    header_message: str
    content_hash: str | None
    triggered_hash: str | None
    version: int
    updated_at: datetime

    def but(self, **changes: Any) -> StudyRow:
        return replace(self, **changes)


@dataclass(frozen=True)
class OrderRow:
    id: str
    key: str
    state: str
    priority: str
    mrn_idx: str
    study_key: str | None
    message_id: str
    expires_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime

    def but(self, **changes: Any) -> OrderRow:
        return replace(self, **changes)


@dataclass(frozen=True)
class Content:
    """What a study holds now: the set of SOP instances (as a hash) and its routing facts."""

    count: int
    hash: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    series: int


_STUDY_COLS = [f.name for f in fields(StudyRow)]
_ORDER_COLS = [f.name for f in fields(OrderRow)]
_STUDY_FIXED = ("key", "id", "channel", "study_uid_idx", "first_at", "header_message")
_STUDY_SET = [c for c in _STUDY_COLS if c not in _STUDY_FIXED]
_ORDER_SET = [c for c in _ORDER_COLS if c not in ("id", "created_at")]

_UPDATE_STUDY = (
    update(_studies)
    .where(_studies.c.key == bindparam("g_key"), _studies.c.version == bindparam("g_version"))
    .values({c: bindparam(f"s_{c}", type_=_studies.c[c].type) for c in _STUDY_SET})
)
_UPDATE_ORDER = (
    update(_orders)
    .where(_orders.c.id == bindparam("g_id"), _orders.c.version == bindparam("g_version"))
    .values({c: bindparam(f"s_{c}", type_=_orders.c[c].type) for c in _ORDER_SET})
)


@lru_cache(maxsize=4)
def _key_insert(dialect: str) -> Any:
    binds = {c.name: bindparam(f"k_{c.name}", type_=c.type) for c in _order_keys.columns}
    return upsert_insert(dialect, _order_keys).values(binds).on_conflict_do_nothing()


class Repo:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    # -- reads ----------------------------------------------------------------------------------

    def study(self, key: str) -> StudyRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_studies).where(_studies.c.key == key)).first()
        return StudyRow(**row._mapping) if row else None

    def study_by_id(self, study_id: str) -> StudyRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_studies).where(_studies.c.id == study_id)).first()
        return StudyRow(**row._mapping) if row else None

    def studies(self, *, state: str | None = None, limit: int = 50, uid_idx: str | None = None) -> list[StudyRow]:
        query = select(_studies).order_by(_studies.c.first_at.desc()).limit(limit)
        if state:
            query = query.where(_studies.c.state == state)
        if uid_idx:
            query = query.where(_studies.c.study_uid_idx == uid_idx)
        with self.engine.connect() as conn:
            return [StudyRow(**r._mapping) for r in conn.execute(query)]

    def content(self, study_key: str) -> Content:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_instances.c.sop_idx, _instances.c.series_idx, _instances.c.modality, _instances.c.body_part)
                .where(_instances.c.study_key == study_key)
                .order_by(_instances.c.sop_idx)
            ).all()
        digest = hashlib.sha256("\n".join(r.sop_idx for r in rows).encode()).hexdigest()
        return Content(
            count=len(rows),
            hash=digest,
            modalities=tuple(sorted({r.modality for r in rows if r.modality})),
            body_parts=tuple(sorted({r.body_part for r in rows if r.body_part})),
            series=len({r.series_idx for r in rows}),
        )

    def instance_messages(self, study_key: str) -> list[str]:
        """The stored instance messages of a study, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_instances.c.message_id).where(_instances.c.study_key == study_key)
                .order_by(_instances.c.received_at.desc())
            ).scalars()  # fmt: skip
            return list(rows)

    def order(self, order_id: str) -> OrderRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_orders).where(_orders.c.id == order_id)).first()
        return OrderRow(**row._mapping) if row else None

    def order_by_key(self, key: str) -> OrderRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_orders).where(_orders.c.key == key)).first()
        return OrderRow(**row._mapping) if row else None

    def orders_of_study(self, study_key: str) -> list[OrderRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(_orders).where(_orders.c.study_key == study_key).order_by(_orders.c.id))
            return [OrderRow(**r._mapping) for r in rows]

    def orders_of_patient(self, mrn_idx: str) -> list[OrderRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(_orders).where(_orders.c.mrn_idx == mrn_idx).order_by(_orders.c.id))
            return [OrderRow(**r._mapping) for r in rows]

    def study_keys(self, study_key: str) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            k = _study_keys.c
            rows = conn.execute(select(k.kind, k.idx).where(k.study_key == study_key))
            return [(r.kind, r.idx) for r in rows]

    def orders_by_keys(self, pairs: Iterable[tuple[str, str]]) -> list[OrderRow]:
        pairs = list(pairs)
        if not pairs:
            return []
        with self.engine.connect() as conn:
            ids = set()
            for kind, idx in pairs:
                q = select(_order_keys.c.order_id).where(_order_keys.c.kind == kind, _order_keys.c.idx == idx)
                ids.update(conn.execute(q).scalars())
            if not ids:
                return []
            rows = conn.execute(select(_orders).where(_orders.c.id.in_(sorted(ids))).order_by(_orders.c.id))
            return [OrderRow(**r._mapping) for r in rows]

    def studies_by_keys(self, pairs: Iterable[tuple[str, str]]) -> list[StudyRow]:
        pairs = list(pairs)
        with self.engine.connect() as conn:
            keys: set[str] = set()
            for kind, idx in pairs:
                q = select(_study_keys.c.study_key).where(_study_keys.c.kind == kind, _study_keys.c.idx == idx)
                keys.update(conn.execute(q).scalars())
            if not keys:
                return []
            rows = conn.execute(select(_studies).where(_studies.c.key.in_(sorted(keys))).order_by(_studies.c.key))
            return [StudyRow(**r._mapping) for r in rows]

    def due(self, now: datetime, limit: int = 100) -> list[tuple[str, str]]:
        """Timers that have run out: ("quiet"|"wait", study key) and ("expiry", order id)."""
        with self.engine.connect() as conn:
            quiet = conn.execute(
                select(_studies.c.key).where(_studies.c.stable_due <= now).order_by(_studies.c.stable_due).limit(limit)
            ).scalars()
            out = [("quiet", k) for k in quiet]
            waits = conn.execute(
                select(_studies.c.key).where(_studies.c.wait_due <= now).order_by(_studies.c.wait_due).limit(limit)
            ).scalars()
            out += [("wait", k) for k in waits]
            expired = conn.execute(
                select(_orders.c.id).where(_orders.c.expires_at <= now).order_by(_orders.c.expires_at).limit(limit)
            ).scalars()
            out += [("expiry", i) for i in expired]
        return out

    # -- writes ---------------------------------------------------------------------------------

    @staticmethod
    def save_study(old: StudyRow, new: StudyRow) -> WriteItem:
        params = {f"s_{c}": getattr(new, c) for c in _STUDY_SET}
        params.update(g_key=old.key, g_version=old.version, s_version=old.version + 1, s_updated_at=utcnow())
        return WriteItem(guards=[(_UPDATE_STUDY, params)])

    @staticmethod
    def save_order(old: OrderRow, new: OrderRow) -> WriteItem:
        params = {f"s_{c}": getattr(new, c) for c in _ORDER_SET}
        params.update(g_id=old.id, g_version=old.version, s_version=old.version + 1, s_updated_at=utcnow())
        return WriteItem(guards=[(_UPDATE_ORDER, params)])

    def new_order(self, row: OrderRow, pairs: Iterable[tuple[str, str]]) -> WriteItem:
        item = WriteItem(inserts=[(_orders, {c: getattr(row, c) for c in _ORDER_COLS})])
        item.extend(self.order_keys(row.id, pairs))
        return item

    def order_keys(self, order_id: str, pairs: Iterable[tuple[str, str]]) -> WriteItem:
        stmt = _key_insert(self.dialect)
        return WriteItem(statements=[(stmt, {"k_kind": k, "k_idx": i, "k_order_id": order_id}) for k, i in pairs])
