"""Organisational attestations: dated statements that something outside the engine's sight happened
(a BAA signed, a risk analysis done, staff trained, a restore tested), with who says so and where the
evidence is. Recorded by `radbridge compliance attest` (audited `compliance.attested`), never edited: a
newer attestation of the same item supersedes the older one. An attestation older than its item's
period (a year for most) no longer counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine, select

from engine.compliance.evidence import Evidence, Item
from engine.core.clock import utcnow
from engine.core.errors import PermanentError
from engine.core.ids import new_id
from engine.store.tables import Attestation as AttestationRow
from engine.store.writer import WriteItem

_table = AttestationRow.__table__
ACTION = "compliance.attested"


@dataclass(frozen=True)
class Kind:
    id: str
    title: str
    cite: str
    max_age_days: int
    hint: str  # what the attestation states
    standalone: bool = True  # its own report item; False: evidence inside another item


KINDS: dict[str, Kind] = {
    k.id: k
    for k in (
        Kind("baa", "Business associate agreement", "§164.308(b)(1), §164.314(a)", 365,
             "a BAA with every covered entity (and subcontractor) whose PHI the engine handles is signed and current"),
        Kind("breach-notification", "Breach notification procedure", "§164.404-§164.410", 365,
             "a breach notification procedure exists, names who decides and notifies, and was reviewed"),
        Kind("risk-analysis", "Risk analysis", "§164.308(a)(1)(ii)(A)", 365,
             "a security risk analysis covering this installation was carried out or reviewed"),
        Kind("staff-training", "Security awareness training", "§164.308(a)(5)(i)", 365,
             "everyone who operates the engine completed security awareness training"),
        Kind("iso27001", "ISO/IEC 27001 (or equivalent) certification", "§164.308(a)(8)", 365,
             "the operating organisation holds a current ISO/IEC 27001, SOC 2 or HITRUST certification / audit"),
        Kind("dua", "Data use agreement", "§164.514(e)(4)", 365,
             "a data use agreement covers every recipient of a limited data set", standalone=False),
        Kind("restore-test", "Restore test", "§164.308(a)(7)(ii)(D)", 90,
             "a backup was restored (with the exported keyring) and the data read back", standalone=False),
        Kind("key-escrow", "Key escrow", "§164.308(a)(7)(ii)(B)", 365,
             "the keyring (or KMS key) is escrowed apart from the backups and can be recovered", standalone=False),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Attestation:
    id: str
    item: str
    attested_on: date
    attested_by: str
    evidence: str
    recorded_at: datetime

    def age_days(self, today: date) -> int:
        return (today - self.attested_on).days


def record(ctx: Any, item: str, attested_on: date, by: str, evidence: str, actor: str) -> Attestation:
    """Store an attestation and its audit entry in one commit. `ctx` is an engine.runtime Context."""
    if item not in KINDS:
        raise PermanentError(f"unknown attestation item {item!r}; known: {', '.join(KINDS)}")
    if attested_on > utcnow().date():
        raise PermanentError(f"attestation date {attested_on.isoformat()} is in the future")
    by, evidence = by.strip(), evidence.strip()
    if not by or len(by) > 200:
        raise PermanentError("--by must name who attests (1 to 200 characters)")
    if not evidence or len(evidence) > 1000:
        raise PermanentError("--evidence must say where the evidence is (1 to 1000 characters)")
    row = Attestation(new_id(), item, attested_on, by, evidence, utcnow())
    write = WriteItem(inserts=[(_table, asdict(row))])
    detail = {"item": item, "attested_on": attested_on.isoformat(), "by": by}
    write.audit.append(ctx.audit.event(ACTION, actor=actor, record_ids=[row.id], detail=detail))
    ctx.writer.write(write)
    return row


def latest(db: Engine) -> dict[str, Attestation]:
    """The newest attestation of each item (by the date attested, then by when it was recorded)."""
    out: dict[str, Attestation] = {}
    with db.connect() as conn:
        for r in conn.execute(select(_table).order_by(_table.c.attested_on, _table.c.recorded_at)).mappings():
            out[r["item"]] = Attestation(r["id"], r["item"], r["attested_on"], r["attested_by"], r["evidence"],
                                         r["recorded_at"])  # fmt: skip
    return out


def current(ev: Evidence, item: str) -> Attestation | None:
    """The item's newest attestation when it is within the item's period, else None."""
    found = ev.attestations.get(item)
    if found is None or found.age_days(ev.now.date()) > KINDS[item].max_age_days:
        return None
    return found


def describe(att: Attestation | None) -> dict[str, Any] | None:
    if att is None:
        return None
    return {"attested_on": att.attested_on.isoformat(), "by": att.attested_by, "evidence": att.evidence,
            "recorded_at": att.recorded_at.isoformat(timespec="seconds")}  # fmt: skip


def attestation_items(ev: Evidence) -> list[Item]:
    out = []
    for kind in KINDS.values():
        if not kind.standalone:
            continue
        found = ev.attestations.get(kind.id)
        details: dict[str, Any] = {"states": kind.hint, "valid_for_days": kind.max_age_days,
                                   "latest": describe(found)}  # fmt: skip
        command = f"`radbridge compliance attest {kind.id} --date YYYY-MM-DD --by NAME --evidence REF`"
        if found is None:
            status, why = "attention", f"not attested: record it with {command}"
        elif found.age_days(ev.now.date()) > kind.max_age_days:
            status = "attention"
            why = f"attested {found.attested_on.isoformat()}, over {kind.max_age_days} days ago: renew it"
        else:
            status, why = "pass", f"attested {found.attested_on.isoformat()} by {found.attested_by}"
        out.append(Item(f"attestation-{kind.id}", "checklist", kind.cite, kind.title, status, why, details))
    return out
