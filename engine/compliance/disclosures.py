"""The accounting of disclosures for one patient (§164.528): every time the engine sent the patient's data,
or data derived from it, outside the hospital (external models, de-identified exports).

Rows are found by the patient identifier's blind index; the identifier itself is never stored, shown or
audited. Reading the accounting is audited (`disclosure.viewed`) with the purpose given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from engine.store.tables import Disclosure

ACTION = "disclosure.viewed"
_table = Disclosure.__table__


@dataclass(frozen=True)
class Entry:
    id: str
    at: datetime
    recipient: str
    purpose: str
    method: str
    items: int


def for_patient(ctx: Any, patient_id: str) -> list[Entry]:
    """The patient's disclosures, oldest first. `ctx` is an engine.runtime Context."""
    idx = ctx.index("mrn", patient_id)
    query = select(_table).where(_table.c.patient_idx == idx).order_by(_table.c.at, _table.c.id)
    with ctx.db.connect() as conn:
        return [Entry(r.id, r.at, r.recipient, r.purpose, r.method, r.items) for r in conn.execute(query)]


def view(ctx: Any, patient_id: str, actor: str, reason: str) -> list[Entry]:
    """The accounting, with the read audited: who, why, the patient's blind index and the rows shown."""
    entries = for_patient(ctx, patient_id)
    ctx.audit.record(ACTION, actor=actor, purpose=reason[:64], record_ids=[e.id for e in entries],
                     indexes={"mrn": ctx.index("mrn", patient_id)}, detail={"disclosures": len(entries)})  # fmt: skip
    return entries


def line(entry: Entry) -> str:
    at = entry.at.astimezone(UTC) if entry.at.tzinfo else entry.at  # stored in UTC
    return (f"{at:%Y-%m-%d %H:%M}Z  recipient={entry.recipient}  purpose={entry.purpose}  "
            f"method={entry.method}  items={entry.items}")  # fmt: skip
