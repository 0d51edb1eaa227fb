"""The access matrix: which role may do what. The one place every permission decision is made.

Deny by default: an unknown role, an unknown permission or a disabled principal gets nothing.
Viewing a page and revealing the PHI on it are separate permissions: views show PHI masked, and
revealing it (`phi.reveal`, `messages.reveal_phi`) is a deliberate, audited action. A break-glass
grant adds the reveal permissions for a fixed time (checked at every use, so it expires by itself).
A token principal has exactly its token's scopes (each also allowed by its owner's role), never a
break-glass grant. docs/access.md holds the same matrix as a table; a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from engine.config.auth import ROLES  # noqa: F401 - the roles, named where the matrix is
from engine.core.errors import PermanentError

PERMISSIONS: dict[str, str] = {
    "channels.view": "see channels, their state and queue depths",
    "channels.operate": "start, stop and pause channels",
    "messages.view": "list and show stored messages (ids, kinds, states; content masked)",
    "messages.reveal_phi": "show a stored message's content unmasked",
    "messages.reprocess": "re-process a stored message",
    "dead_letters.manage": "retry or discard dead letters",
    "studies.view": "see studies and their correlation (patient data masked)",
    "worklist.view": "see the prioritized worklist (patient data masked)",
    "findings.feedback": "agree or disagree with an AI finding",
    "jobs.view": "see inference jobs",
    "jobs.manage": "cancel or retry inference jobs",
    "models.view": "see model versions and their governance state",
    "models.govern": "activate, shadow, retire, recall models; tune thresholds",
    "audit.view": "read the audit trail",
    "audit.verify": "verify the audit chain and checkpoints",
    "audit.export": "export the audit trail (FHIR AuditEvent, syslog)",
    "users.view": "see users, roles, tokens and sessions",
    "users.manage": "add users, change roles, disable, unlock, issue tokens",
    "keys.view": "see key versions and ages (never key material)",
    "keys.manage": "rotate and retire keys",
    "compliance.view": "see the compliance report",
    "break_glass.review": "review break-glass grants",
    "phi.reveal": "show patient identity (name, MRN, birth date, accession) unmasked in a view",
}

_ALL = frozenset(PERMISSIONS)
MATRIX: dict[str, frozenset[str]] = {
    "admin": _ALL - {"messages.reveal_phi", "phi.reveal", "findings.feedback", "audit.export"},
    "integration_analyst": frozenset({
        "channels.view", "channels.operate", "messages.view", "messages.reveal_phi", "messages.reprocess",
        "dead_letters.manage", "studies.view", "worklist.view", "jobs.view", "jobs.manage", "models.view",
    }),
    "radiologist": frozenset({"studies.view", "worklist.view", "findings.feedback", "jobs.view", "models.view",
                              "phi.reveal"}),
    "technologist": frozenset({"studies.view", "worklist.view", "jobs.view"}),
    "auditor": frozenset({
        "messages.view", "models.view", "audit.view", "audit.verify", "audit.export", "users.view", "keys.view",
        "compliance.view", "break_glass.review",
    }),
    # The ceiling of what a service token may be scoped to; a service account has no other way in.
    "service": frozenset({"channels.view", "messages.view", "studies.view", "worklist.view", "findings.feedback",
                          "jobs.view", "audit.export"}),
}  # fmt: skip

REVEAL = frozenset({"phi.reveal", "messages.reveal_phi"})
BREAK_GLASS_ROLES = frozenset({"admin", "integration_analyst", "radiologist", "technologist"})
BREAK_GLASS_GRANTS = REVEAL
MASK = "•••••"  # fixed width: a masked value does not even give away its length


class AccessDenied(PermanentError):
    """A principal asked for something its role (or token, or grant) does not allow; `reason` is a code."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"access denied: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user signed in with a password (and TOTP), through a session, or a token."""

    username: str
    role: str
    via: Literal["password", "session", "token"]
    scopes: frozenset[str] | None = None  # a token's scopes; None for a signed-in user
    break_glass_until: datetime | None = None
    break_glass_id: str | None = None
    token_id: str | None = None

    @property
    def actor(self) -> str:
        """How the audit log names this principal."""
        return f"token:{self.token_id}" if self.via == "token" else f"user:{self.username}"

    def elevated(self, now: datetime) -> bool:
        """A break-glass grant in force right now (never for a token)."""
        return self.via != "token" and self.break_glass_until is not None and now < self.break_glass_until


def role_allows(role: str, permission: str) -> bool:
    return permission in MATRIX.get(role, frozenset())


def permissions(who: str | Principal, now: datetime | None = None) -> frozenset[str]:
    """Everything `who` may do right now."""
    if isinstance(who, str):
        return MATRIX.get(who, frozenset())
    base = MATRIX.get(who.role, frozenset())
    if who.via == "token":
        return base & (who.scopes or frozenset())
    if who.role == "service":
        return frozenset()  # service accounts act only through their tokens
    if now is not None and who.elevated(now) and who.role in BREAK_GLASS_ROLES:
        base = base | BREAK_GLASS_GRANTS
    return base


def allowed(who: str | Principal, permission: str, now: datetime | None = None) -> bool:
    """Deny by default. `who` is a role name (the matrix alone) or a principal (its token's scopes and
    any break-glass grant in force at `now` count; without `now` no grant counts)."""
    return permission in PERMISSIONS and permission in permissions(who, now)


def require(who: str | Principal, permission: str, now: datetime | None = None) -> None:
    if not allowed(who, permission, now):
        raise AccessDenied("not_permitted", f"access denied: {permission} is not permitted")


def may_break_glass(role: str) -> bool:
    return role in BREAK_GLASS_ROLES


def mask(value: str | None, reveal: bool) -> str:
    """The value when revealing is allowed (and was asked for), a fixed mask otherwise."""
    if value is None:
        return ""
    return value if reveal else MASK
