"""Writing audit entries: who, what, which records (ids and blind indexes, never PHI), when, outcome, why.

Any sensitive detail (a config diff, an error text) is sealed under the audit's own key, so the
trail outlives the messages it describes. Entries are linked into the node's chain by the store
writer, in the same transaction as the change they describe.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, select

from engine.audit.chain import GENESIS, link
from engine.audit.codes import PURPOSE_CODES
from engine.core.clock import iso
from engine.core.ids import new_id
from engine.security.vault import AuditSealer
from engine.store.sql import Compiled
from engine.store.tables import AuditRow
from engine.store.writer import GroupWriter, WriteItem

_audit = AuditRow.__table__
_HEAD = (
    select(_audit.c.seq, _audit.c.hash).where(_audit.c.node == bindparam("node")).order_by(_audit.c.seq.desc()).limit(1)
)
OUTCOMES = ("success", "failure", "denied")


class ChainLinker:
    """Places rows after one node's chain head, inside the writer's transaction (write lock held).

    The head is cached between batches. Another process appending to the same chain (the CLI
    recording an access) makes our next insert collide on (node, seq); the writer then calls
    invalidate() and retries, so the chain never forks.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._head: tuple[int, str] | None = None
        self._pending: tuple[int, str] | None = None

    def link(self, cursor: Any, sql: Compiled, rows: list[dict[str, Any]]) -> None:
        if self._head is None:
            found = sql.execute(cursor, _HEAD, {"node": self.node}).fetchone()
            self._head = (found[0], found[1]) if found else (0, GENESIS)
        link(self.node, self._head[0], self._head[1], rows)
        self._pending = (rows[-1]["seq"], rows[-1]["hash"])

    def committed(self) -> None:
        if self._pending is not None:
            self._head, self._pending = self._pending, None

    def invalidate(self) -> None:
        self._head = self._pending = None


class AuditLog:
    def __init__(self, writer: GroupWriter, sealer: AuditSealer, node: str) -> None:
        self.writer = writer
        self.sealer = sealer
        self.node = node

    def event(
        self,
        action: str,
        *,
        actor: str,
        outcome: str = "success",
        peer: str | None = None,
        purpose: str | None = None,
        record_ids: Iterable[str] = (),
        indexes: Mapping[str, str] | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Build an entry (not yet written); add it to a WriteItem's `audit` to commit it with the change."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown audit outcome {outcome!r}")
        entry_id = new_id()
        if purpose is not None and purpose not in PURPOSE_CODES:
            # Free text (a --reason, a form field) may name a patient: the clear column keeps a code only,
            # the words go into the sealed detail.
            detail = {**(detail or {}), "purpose_text": purpose}
            purpose = "other"
        sealed = None
        if detail:
            sealed = self.sealer.seal(entry_id, json.dumps(detail, sort_keys=True, default=str).encode())
        return {
            "id": entry_id,
            "ts": iso(),
            "actor": actor,
            "peer": peer,
            "action": action,
            "outcome": outcome,
            "purpose": purpose,
            "record_ids": json.dumps(sorted(record_ids)),
            "indexes": json.dumps(dict(indexes or {}), sort_keys=True),
            "detail": sealed,
        }

    def record(self, action: str, **fields: Any) -> None:
        """Write one entry now and wait for its commit."""
        self.writer.write(WriteItem(audit=[self.event(action, **fields)]))

    async def arecord(self, action: str, **fields: Any) -> None:
        await self.writer.awrite(WriteItem(audit=[self.event(action, **fields)]))

    def open_detail(self, entry_id: str, sealed: bytes | None) -> dict[str, Any] | None:
        return json.loads(self.sealer.open(entry_id, sealed)) if sealed else None
