"""Reading the audit trail: filtered pages of entries, newest first, for the audit viewer and its API.

Entries come back with their detail still sealed; the caller decides what of it may be shown
(engine/web/audit.py shows only fields known to hold no PHI). Paging is by keyset: the cursor is the
(node, seq) of the last entry shown, so a page never shifts when new entries arrive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, tuple_

from engine.store.tables import AuditRow

_audit = AuditRow.__table__
MAX_LIMIT = 500


@dataclass(frozen=True)
class Filters:
    """What to look for; every field optional. `action` ending in "." or "*" is a prefix ("auth.")."""

    action: str | None = None
    actor: str | None = None
    outcome: str | None = None
    since: str | None = None  # RFC 3339 UTC as the engine writes ts: compared as text
    until: str | None = None
    record: str | None = None  # one record id (message, study, job, grant, "user:NAME" ...)

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


@dataclass(frozen=True)
class Entry:
    node: str
    seq: int
    id: str
    ts: str
    actor: str
    peer: str | None
    action: str
    outcome: str
    purpose: str | None
    record_ids: list[str]
    indexes: dict[str, str]
    detail: bytes | None  # sealed

    @property
    def cursor(self) -> str:
        return f"{self.node}:{self.seq}"


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(filters: Filters) -> list[Any]:
    found: list[Any] = []
    if filters.action:
        action = filters.action.rstrip("*")
        if action.endswith(".") or filters.action.endswith("*"):
            found.append(_audit.c.action.like(_like(action) + "%", escape="\\"))
        else:
            found.append(_audit.c.action == action)
    if filters.actor:
        found.append(_audit.c.actor == filters.actor)
    if filters.outcome:
        found.append(_audit.c.outcome == filters.outcome)
    if filters.since:
        found.append(_audit.c.ts >= filters.since)
    if filters.until:
        found.append(_audit.c.ts < filters.until)
    if filters.record:
        # record_ids is a JSON list of strings: match the quoted id, not a substring of another id
        found.append(_audit.c.record_ids.like("%" + _like(json.dumps(filters.record)) + "%", escape="\\"))
    return found


def parse_cursor(cursor: str | None) -> tuple[str, int] | None:
    """ "node:seq" -> (node, seq); None for no or a malformed cursor."""
    if not cursor:
        return None
    node, _, seq = cursor.rpartition(":")
    return (node, int(seq)) if node and seq.isdigit() else None


def search(db: Engine, filters: Filters, limit: int = 50, after: tuple[str, int] | None = None) -> list[Entry]:
    """Entries matching `filters`, newest first (by time, then node and seq), after the cursor's entry."""
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(_audit).where(*_where(filters))
    with db.connect() as conn:
        if after is not None:
            ts = conn.execute(select(_audit.c.ts).where(_audit.c.node == after[0], _audit.c.seq == after[1])).scalar()
            if ts is None:
                return []
            query = query.where(tuple_(_audit.c.ts, _audit.c.node, _audit.c.seq) < tuple_(ts, after[0], after[1]))
        query = query.order_by(_audit.c.ts.desc(), _audit.c.node.desc(), _audit.c.seq.desc()).limit(limit)
        rows = conn.execute(query).mappings().all()
    return [
        Entry(r["node"], r["seq"], r["id"], r["ts"], r["actor"], r["peer"], r["action"], r["outcome"], r["purpose"],
              json.loads(r["record_ids"] or "[]"), json.loads(r["indexes"] or "{}"), r["detail"])
        for r in rows
    ]  # fmt: skip


def last(db: Engine, action: str) -> Entry | None:
    """The newest entry of one action (e.g. the last `keys.rotated`, the last `audit.verified`)."""
    found = search(db, Filters(action=action), limit=1)
    return found[0] if found else None


def actions(db: Engine) -> list[str]:
    """Every action name the log holds, for the viewer's filter list."""
    with db.connect() as conn:
        return [r[0] for r in conn.execute(select(_audit.c.action).group_by(_audit.c.action).order_by(_audit.c.action))]
