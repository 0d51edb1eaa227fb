"""What a compliance evidence item is, and the live facts item functions read.

An item function takes an `Evidence` (the opened engine context plus facts gathered once: the audit
log's last entry per action, the audit chain verification, the latest attestations) and returns one
`Item` or a list of them. Items say pass / attention / fail and why in one line; their `details` hold
configuration names, key ids, times and counts — never patient data. engine.compliance.catalogue
lists the item functions in report order; adding an item is adding a function there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, select

from engine.core.clock import utcnow
from engine.store.tables import AuditRow

if TYPE_CHECKING:
    from engine.audit.verify import Verification
    from engine.compliance.attestations import Attestation
    from engine.runtime.context import Context

Status = Literal["pass", "attention", "fail"]
STATUSES: tuple[Status, ...] = ("pass", "attention", "fail")
_RANK = {"pass": 0, "attention": 1, "fail": 2}

# Report sections, in order: the five technical safeguards of 45 CFR §164.312, then the checklist.
SAFEGUARDS: dict[str, str] = {
    "access": "§164.312(a)(1) Access control",
    "audit": "§164.312(b) Audit controls",
    "integrity": "§164.312(c)(1) Integrity",
    "authentication": "§164.312(d) Person or entity authentication",
    "transmission": "§164.312(e)(1) Transmission security",
    "checklist": "Administrative and organisational checklist (§164.308, §164.310, §164.314, §164.514, §164.404)",
}

_audit = AuditRow.__table__


@dataclass(frozen=True)
class Item:
    id: str  # kebab-case, stable: tests and auditors refer to it
    safeguard: str  # a key of SAFEGUARDS
    cite: str  # the paragraph the item gives evidence for, e.g. "§164.312(a)(2)(iv)"
    title: str
    status: Status
    why: str  # one line
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in _RANK:
            raise ValueError(f"item {self.id}: unknown status {self.status!r}")
        if self.safeguard not in SAFEGUARDS:
            raise ValueError(f"item {self.id}: unknown safeguard {self.safeguard!r}")


def worst(statuses: list[Status] | tuple[Status, ...]) -> Status:
    """The most serious status of several (pass when there are none)."""
    return max(statuses, key=_RANK.__getitem__, default="pass")


def parse_ts(ts: str) -> datetime:
    """An audit timestamp (RFC 3339 UTC as the engine writes it) as an aware datetime."""
    parsed = datetime.fromisoformat(ts)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ActionFacts:
    last_ts: str
    count: int


class AuditFacts:
    """The newest entry time and the count of every (action, outcome) in the audit log: one scan."""

    def __init__(self, rows: dict[tuple[str, str], ActionFacts]) -> None:
        self.rows = rows

    @classmethod
    def read(cls, ctx: Context) -> AuditFacts:
        query = select(_audit.c.action, _audit.c.outcome, func.max(_audit.c.ts), func.count()).group_by(
            _audit.c.action, _audit.c.outcome
        )
        with ctx.db.connect() as conn:
            return cls({(a, o): ActionFacts(ts, n) for a, o, ts, n in conn.execute(query)})

    def _matching(self, names: tuple[str, ...], outcome: str | None) -> list[ActionFacts]:
        # A name ending in "." is a prefix ("restore." matches restore.tested, restore.done ...).
        def match(action: str) -> bool:
            return any(action.startswith(n) if n.endswith(".") else action == n for n in names)

        return [f for (a, o), f in self.rows.items() if match(a) and (outcome is None or o == outcome)]

    def last(self, *names: str, outcome: str | None = "success") -> str | None:
        """The newest time of an entry named so (with that outcome; None: any outcome), or None."""
        found = self._matching(names, outcome)
        return max((f.last_ts for f in found), default=None)

    def count(self, *names: str, outcome: str | None = "success") -> int:
        return sum(f.count for f in self._matching(names, outcome))


@dataclass
class Evidence:
    """The live facts item functions read; each expensive fact is gathered once, when first asked."""

    ctx: Context
    now: datetime = field(default_factory=utcnow)
    sbom_path: Path | None = None  # where the SBOM was written for this report, if anywhere
    vuln_scan: bool = True  # run pip-audit when it is installed
    vuln_timeout_s: float = 120.0

    @cached_property
    def audit(self) -> AuditFacts:
        return AuditFacts.read(self.ctx)

    @cached_property
    def verification(self) -> Verification:
        from engine.audit.verify import verify

        keyring = self.ctx.keyring
        return verify(self.ctx.db, keyring.verify_key, keyring.signing_key_id)

    @cached_property
    def attestations(self) -> dict[str, Attestation]:
        from engine.compliance.attestations import latest

        return latest(self.ctx.db)

    def age_days(self, ts: str | None) -> float | None:
        """Days from an audit timestamp to now; None for never."""
        return None if ts is None else (self.now - parse_ts(ts)) / timedelta(days=1)


ItemFn = Callable[[Evidence], "Item | list[Item]"]
