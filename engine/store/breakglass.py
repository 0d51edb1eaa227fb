"""Break-glass grants and PHI reveals in the store.

A grant needs a role that may elevate, a stated reason, at most an hour, and a fresh TOTP code (a wrong
one counts toward the lockout). The reason and the later review note are free text that may name a
patient, so they are sealed under the grant's own data key. Every grant, refusal, review and reveal
is audited; `list` feeds the dashboard (grants in force) and the compliance report (all, reviewed or not).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, select, update

from engine.core.clock import utcnow
from engine.core.errors import PermanentError
from engine.core.ids import new_id
from engine.security import breakglass
from engine.security.access import REVEAL, AccessDenied, Principal, allowed, role_allows
from engine.security.vault import Vault, WrappedKey
from engine.store.tables import BreakGlassGrant, DataKeyRow
from engine.store.users import Event, Users
from engine.store.writer import StaleWrite, WriteItem

_grants = BreakGlassGrant.__table__
_keys = DataKeyRow.__table__
_REVIEW = (
    update(_grants)
    .where(_grants.c.id == bindparam("k_id"), _grants.c.reviewed_at.is_(None))
    .values(reviewed_by=bindparam("p_by"), reviewed_at=bindparam("p_at"), review_sealed=bindparam("p_note"))
)
_END = (
    update(_grants)
    .where(_grants.c.id == bindparam("k_id"), _grants.c.ended_at.is_(None))
    .values(ended_at=bindparam("p_at"))
)


@dataclass(frozen=True)
class Grant:
    id: str
    username: str
    reason: str
    minutes: int
    granted_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_note: str | None

    def in_force(self, now: datetime) -> bool:
        return breakglass.in_force(self.expires_at, self.ended_at, now)


class BreakGlass:
    def __init__(self, db: Engine, writer: Any, vault: Vault, event: Event, users: Users) -> None:
        self.db, self.writer, self.vault, self.event, self.users = db, writer, vault, event, users

    def _deny(self, username: str | None, reason: str, peer: str | None) -> AccessDenied:
        self.writer.write(WriteItem(audit=[self.event(
            "auth.break_glass", actor=f"user:{username}" if username else "anonymous", outcome="denied", peer=peer,
            purpose=breakglass.PURPOSE, detail={"reason": reason},
        )]))  # fmt: skip
        return AccessDenied(reason)

    def grant(self, username: str, reason: str, minutes: int, totp_code: str | None, now: datetime | None = None,
              peer: str | None = None) -> Grant:  # fmt: skip
        """Elevate `username` to reveal PHI for `minutes`; raises AccessDenied (audited) when refused."""
        now = now or utcnow()
        raw = self.users._raw(username.strip().lower())
        if raw is None or raw.disabled:
            raise self._deny(raw.username if raw else None, "disabled" if raw else "unknown_user", peer)
        locked = raw.locked_until
        if locked is not None and now < locked:
            raise self._deny(raw.username, "locked", peer)
        try:
            breakglass.check_request(raw.role, reason, minutes)
        except AccessDenied as exc:
            self._deny(raw.username, exc.reason, peer)
            raise
        refused, item = self.users.check_totp(raw, totp_code, now)
        if refused is not None:
            guess = refused in ("bad_totp", "totp_replayed")
            self.users.refuse(raw, refused, now, peer, action="auth.break_glass", count=guess,
                              purpose=breakglass.PURPOSE)  # fmt: skip
            raise AccessDenied(refused, f"break-glass refused: {refused.replace('_', ' ')}")
        grant_id, expires = new_id(), breakglass.expires_at(now, minutes)
        data_key = self.vault.new_data_key(grant_id)
        w = data_key.wrapped
        item.inserts.append((_keys, {"record_id": grant_id, "kek_id": w.kek_id, "kek_version": w.kek_version,
                                     "wrapped": w.wrapped, "created_at": now}))  # fmt: skip
        item.inserts.append((_grants, {
            "id": grant_id, "username": raw.username, "minutes": minutes, "granted_at": now,
            "reason_sealed": self.vault.seal(data_key, "reason", reason.strip().encode()),
            "expires_at": expires, "ended_at": None, "reviewed_by": None, "reviewed_at": None,
            "review_sealed": None,
        }))  # fmt: skip
        item.audit.append(self.event(
            "auth.break_glass", actor=f"user:{raw.username}", peer=peer, purpose=breakglass.PURPOSE,
            record_ids=[grant_id], detail={"reason": reason.strip(), "minutes": minutes, "expires_at": expires},
        ))  # fmt: skip
        try:
            self.writer.write(item)
        except StaleWrite:  # a racing request used the same TOTP step
            self.users.refuse(raw, "totp_replayed", now, peer, action="auth.break_glass", count=True,
                              purpose=breakglass.PURPOSE)
            raise AccessDenied("totp_replayed", "break-glass refused: totp replayed") from None
        return Grant(grant_id, raw.username, reason.strip(), minutes, now, expires, None, None, None, None)

    def _open(self, r: Any) -> Grant:
        """A grant row joined with its wrapped data key: the reason and note opened."""
        data_key = self.vault.unwrap(WrappedKey(r.kek_id, r.kek_version, r.wrapped), r.id)
        note = self.vault.open(data_key, "review", r.review_sealed).decode() if r.review_sealed else None
        return Grant(r.id, r.username, self.vault.open(data_key, "reason", r.reason_sealed).decode(), r.minutes,
                     r.granted_at, r.expires_at, r.ended_at, r.reviewed_by, r.reviewed_at, note)  # fmt: skip

    def _query(self, query: Any) -> list[Grant]:
        joined = query.add_columns(_keys.c.kek_id, _keys.c.kek_version, _keys.c.wrapped).join(
            _keys, _keys.c.record_id == _grants.c.id
        )
        with self.db.connect() as conn:
            return [self._open(r) for r in conn.execute(joined).all()]

    def get(self, grant_id: str) -> Grant | None:
        found = self._query(select(_grants).where(_grants.c.id == grant_id))
        return found[0] if found else None

    def list(self, now: datetime | None = None, *, since: datetime | None = None, in_force: bool = False,
             unreviewed: bool = False) -> list[Grant]:  # fmt: skip
        """Newest first: all grants since a time, only those in force (dashboard), or only unreviewed."""
        now = now or utcnow()
        query = select(_grants).order_by(_grants.c.granted_at.desc())
        if since is not None:
            query = query.where(_grants.c.granted_at >= since)
        if in_force:
            query = query.where(_grants.c.expires_at > now, _grants.c.ended_at.is_(None))
        if unreviewed:
            query = query.where(_grants.c.reviewed_at.is_(None))
        return self._query(query)

    def active(self, username: str, now: datetime | None = None) -> Grant | None:
        now = now or utcnow()
        return next((g for g in self.list(now, in_force=True) if g.username == username), None)

    def end(self, grant_id: str, actor: str, now: datetime | None = None) -> None:
        """Drop an elevation before it expires (the user is done, or an admin stops it)."""
        now = now or utcnow()
        grant = self.get(grant_id)
        if grant is None:
            raise LookupError("no such break-glass grant")
        item = WriteItem(guards=[(_END, {"k_id": grant_id, "p_at": now})])
        item.audit.append(self.event("auth.break_glass_ended", actor=actor, record_ids=[grant_id],
                                     detail={"user": grant.username}))  # fmt: skip
        self.writer.write(item)

    def review(self, grant_id: str, reviewer: str, note: str, now: datetime | None = None) -> None:
        """Record that someone else looked at why the glass was broken (once per grant)."""
        now = now or utcnow()
        grant = self.get(grant_id)
        if grant is None:
            raise LookupError("no such break-glass grant")
        if reviewer == f"user:{grant.username}":
            raise PermanentError("a break-glass grant is reviewed by someone other than its holder")
        if grant.reviewed_at is not None:
            raise PermanentError("the grant is already reviewed")
        if not note.strip():
            raise PermanentError("a review needs a note")
        with self.db.connect() as conn:
            key = conn.execute(select(_keys).where(_keys.c.record_id == grant_id)).one()
        data_key = self.vault.unwrap(WrappedKey(key.kek_id, key.kek_version, key.wrapped), grant_id)
        params = {"k_id": grant_id, "p_by": reviewer[:120], "p_at": now,
                  "p_note": self.vault.seal(data_key, "review", note.strip().encode())}  # fmt: skip
        item = WriteItem(guards=[(_REVIEW, params)])
        item.audit.append(self.event("auth.break_glass_review", actor=reviewer, record_ids=[grant_id],
                                     detail={"user": grant.username, "note": note.strip()}))  # fmt: skip
        self.writer.write(item)

    def reveal(self, principal: Principal, permission: str, record_ids: list[str], now: datetime | None = None,
               purpose: str | None = None, peer: str | None = None) -> None:  # fmt: skip
        """The deliberate act of unmasking PHI: allowed by role or by a grant in force, and audited
        either way (`phi.reveal`, denied or success, naming the grant when it was the grant)."""
        if permission not in REVEAL:
            raise ValueError(f"{permission} is not a reveal permission")
        now = now or utcnow()
        ok = allowed(principal, permission, now)
        if principal.via == "token":
            via = "token"
        elif role_allows(principal.role, permission):
            via = "role"
        else:
            via = "break_glass" if ok else "none"
        detail: dict[str, Any] = {"permission": permission, "via": via}
        if via == "break_glass":
            detail["grant"] = principal.break_glass_id
        self.writer.write(WriteItem(audit=[self.event(
            "phi.reveal", actor=principal.actor, outcome="success" if ok else "denied", peer=peer,
            purpose=breakglass.PURPOSE if via == "break_glass" else purpose, record_ids=record_ids, detail=detail,
        )]))  # fmt: skip
        if not ok:
            raise AccessDenied("not_permitted", f"access denied: {permission} is not permitted")
