"""API tokens and web sessions in the store.

Tokens: created for a user with scopes within its role, shown once, kept as a digest; refused when
malformed, unknown, revoked, expired, or when the owner is disabled or locked. Every use is audited
(`auth.token`, success and failure): a token is a service acting on data, and the trail must say which.
A token's effective scopes are re-checked against the owner's role at each use, so demoting the owner
narrows its tokens at once.

Sessions: the row is keyed by the hash of the cookie's id; idle and absolute timeouts are checked at
each use and an expired session is ended (and audited) the first time it is presented.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, select, update

from engine.config.auth import AuthPolicy, SessionPolicy
from engine.core.clock import utcnow
from engine.core.errors import PermanentError
from engine.security import sessions, tokens
from engine.security.access import MATRIX, Principal
from engine.security.users import Refusal
from engine.store.tables import ApiToken, User, UserSession
from engine.store.users import Event, grant_in_force
from engine.store.writer import WriteItem

_tokens = ApiToken.__table__
_sessions = UserSession.__table__
_users = User.__table__
_TOKEN_USED = update(_tokens).where(_tokens.c.id == bindparam("k_id")).values(last_used_at=bindparam("p_at"))
_REVOKE = (
    update(_tokens)
    .where(_tokens.c.id == bindparam("k_id"), _tokens.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("p_at"), revoked_by=bindparam("p_by"))
)
_TOUCH = update(_sessions).where(_sessions.c.id_hash == bindparam("k_id")).values(last_seen_at=bindparam("p_at"))
_END = (
    update(_sessions)
    .where(_sessions.c.id_hash == bindparam("k_id"), _sessions.c.ended_at.is_(None))
    .values(ended_at=bindparam("p_at"), end_reason=bindparam("p_reason"))
)


@dataclass(frozen=True)
class TokenRow:
    """A token as it may be shown: never its digest."""

    id: str
    username: str
    label: str
    scopes: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime) -> str:
        return "revoked" if self.revoked_at else "expired" if now >= self.expires_at else "active"


@dataclass(frozen=True)
class IssuedToken:
    token_id: str
    token: str  # shown once
    expires_at: datetime


def _token_row(r: Any) -> TokenRow:
    return TokenRow(r.id, r.username, r.label, json.loads(r.scopes), r.created_at, r.created_by,
                    r.expires_at, r.revoked_at, r.last_used_at)  # fmt: skip


class Tokens:
    def __init__(self, db: Engine, writer: Any, event: Event, policy: AuthPolicy | None = None) -> None:
        self.db, self.writer, self.event = db, writer, event
        self.policy = policy or AuthPolicy()

    def create(self, username: str, scopes: list[str], expires_days: int, label: str, actor: str,
               now: datetime | None = None) -> IssuedToken:  # fmt: skip
        now, username = now or utcnow(), username.strip().lower()
        with self.db.connect() as conn:
            owner = conn.execute(select(_users.c.role, _users.c.disabled).where(_users.c.username == username)).first()
        if owner is None:
            raise LookupError("no such user")
        if owner.disabled:
            raise PermanentError("the user is disabled")
        if not scopes:
            raise PermanentError("a token needs at least one scope (--scope)")
        bad = tokens.scope_problems(owner.role, scopes)
        if bad:
            raise PermanentError(f"scope(s) not allowed for role {owner.role}: {', '.join(bad)}")
        if not 1 <= expires_days <= self.policy.token_max_days:
            raise PermanentError(f"a token expires after 1 to {self.policy.token_max_days} days")
        new, expires = tokens.issue(), now + timedelta(days=expires_days)
        row = {"id": new.token_id, "username": username, "label": label[:120], "digest": new.digest,
               "scopes": json.dumps(sorted(set(scopes))), "created_at": now, "created_by": actor[:120],
               "expires_at": expires, "revoked_at": None, "revoked_by": None, "last_used_at": None}  # fmt: skip
        item = WriteItem(inserts=[(_tokens, row)])
        item.audit.append(self.event("token.created", actor=actor, record_ids=[new.token_id, f"user:{username}"],
                                     detail={"scopes": sorted(set(scopes)), "expires_at": expires, "label": label}))
        self.writer.write(item)
        return IssuedToken(new.token_id, new.token, expires)

    def revoke(self, token_id: str, actor: str, reason: str, now: datetime | None = None) -> None:
        now = now or utcnow()
        row = self.get(token_id)
        if row is None:
            raise LookupError("no such token")
        if row.revoked_at is not None:
            raise PermanentError("the token is already revoked")
        item = WriteItem(guards=[(_REVOKE, {"k_id": token_id, "p_at": now, "p_by": actor[:120]})])
        item.audit.append(self.event("token.revoked", actor=actor,
                                     record_ids=[token_id, f"user:{row.username}"], detail={"reason": reason}))
        self.writer.write(item)

    def get(self, token_id: str) -> TokenRow | None:
        with self.db.connect() as conn:
            r = conn.execute(select(_tokens).where(_tokens.c.id == token_id)).first()
        return _token_row(r) if r else None

    def list(self, username: str | None = None) -> list[TokenRow]:
        query = select(_tokens).order_by(_tokens.c.username, _tokens.c.created_at)
        if username:
            query = query.where(_tokens.c.username == username)
        with self.db.connect() as conn:
            return [_token_row(r) for r in conn.execute(query).all()]

    def _refuse(self, token_id: str | None, owner: str | None, reason: str, peer: str | None) -> Refusal:
        ids = [i for i in (token_id, f"user:{owner}" if owner else None) if i]
        self.writer.write(WriteItem(audit=[self.event(
            "auth.token", actor=f"token:{token_id}" if token_id else "anonymous", outcome="failure", peer=peer,
            record_ids=ids, detail={"reason": reason},
        )]))  # fmt: skip
        return Refusal(reason)

    def authenticate(self, token: str, now: datetime | None = None, peer: str | None = None) -> Principal | Refusal:
        now = now or utcnow()
        parsed = tokens.parse(token)
        if parsed is None:
            return self._refuse(None, None, "malformed", peer)
        token_id, secret = parsed
        with self.db.connect() as conn:
            r = conn.execute(select(_tokens).where(_tokens.c.id == token_id)).first()
            owner = conn.execute(select(_users).where(_users.c.username == r.username)).first() if r else None
        if r is None or not tokens.matches(r.digest, token_id, secret):
            return self._refuse(token_id, None, "unknown_token", peer)
        if r.revoked_at is not None:
            return self._refuse(token_id, r.username, "revoked", peer)
        if now >= r.expires_at:
            return self._refuse(token_id, r.username, "expired", peer)
        if owner is None or owner.disabled:
            return self._refuse(token_id, r.username, "disabled", peer)
        locked = owner.locked_until
        if locked is not None and now < locked:
            return self._refuse(token_id, r.username, "locked", peer)
        scopes = frozenset(json.loads(r.scopes)) & MATRIX.get(owner.role, frozenset())
        if not scopes:
            return self._refuse(token_id, r.username, "role_changed", peer)
        item = WriteItem(statements=[(_TOKEN_USED, {"k_id": token_id, "p_at": now})])
        item.audit.append(self.event("auth.token", actor=f"token:{token_id}", peer=peer,
                                     record_ids=[token_id, f"user:{r.username}"],
                                     detail={"scopes": sorted(scopes)}))  # fmt: skip
        self.writer.write(item)
        return Principal(r.username, owner.role, "token", scopes=scopes, token_id=token_id)


@dataclass(frozen=True)
class ActiveSession:
    principal: Principal
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime


class Sessions:
    def __init__(self, db: Engine, writer: Any, event: Event, policy: SessionPolicy | None = None) -> None:
        self.db, self.writer, self.event = db, writer, event
        self.policy = policy or SessionPolicy()

    def start(self, principal: Principal, now: datetime | None = None,
              peer: str | None = None) -> sessions.NewSession:  # fmt: skip
        """A session for a principal that just signed in with its password (never for a token)."""
        if principal.via != "password":
            raise PermanentError("a session starts only from a password sign-in")
        now, new = now or utcnow(), sessions.new_session()
        row = {"id_hash": new.id_hash, "username": principal.username, "csrf_token": new.csrf_token,
               "created_at": now, "last_seen_at": now, "ended_at": None, "end_reason": None,
               "peer": peer[:256] if peer else None}  # fmt: skip
        item = WriteItem(inserts=[(_sessions, row)])
        item.audit.append(self.event("auth.session", actor=principal.actor, peer=peer,
                                     record_ids=[f"session:{new.id_hash[:16]}"], detail={"event": "started"}))
        self.writer.write(item)
        return new

    def _end_item(self, id_hash: str, username: str, reason: str, now: datetime, peer: str | None) -> WriteItem:
        item = WriteItem(statements=[(_END, {"k_id": id_hash, "p_at": now, "p_reason": reason})])
        item.audit.append(self.event("auth.session", actor=f"user:{username}", peer=peer,
                                     record_ids=[f"session:{id_hash[:16]}"], detail={"event": reason}))
        return item

    def validate(self, session_id: str, now: datetime | None = None,
                 peer: str | None = None, touch: bool = True) -> ActiveSession | Refusal:  # fmt: skip
        """The session's principal (role and break-glass as of now), or why it no longer counts.
        Records the use (at most every `touch_seconds`) unless `touch` is False: a page refreshing by
        itself is not the person using it, and must not keep an unattended session from idling out."""
        now, id_hash = now or utcnow(), sessions.hash_id(session_id)
        with self.db.connect() as conn:
            s = conn.execute(select(_sessions).where(_sessions.c.id_hash == id_hash)).first()
            user = conn.execute(select(_users).where(_users.c.username == s.username)).first() if s else None
            grant = grant_in_force(conn, s.username, now) if s else None
        if s is None or user is None:
            return Refusal("unknown_session")
        if s.ended_at is not None:
            return Refusal(s.end_reason or "ended")
        created, seen = s.created_at, s.last_seen_at
        state = sessions.state(created, seen, now, self.policy)
        locked = user.locked_until
        if state == "active" and (user.disabled or user.role == "service" or (locked and now < locked)):
            state = "disabled" if user.disabled or user.role == "service" else "locked"
        if state != "active":
            self.writer.write(self._end_item(id_hash, s.username, state, now, peer))
            return Refusal(state)
        if touch and sessions.needs_touch(seen, now, self.policy):
            self.writer.write(WriteItem(statements=[(_TOUCH, {"k_id": id_hash, "p_at": now})]))
            seen = now
        principal = Principal(user.username, user.role, "session", break_glass_until=grant[1] if grant else None,
                              break_glass_id=grant[0] if grant else None)  # fmt: skip
        return ActiveSession(principal, s.csrf_token, created, seen)

    def end(self, session_id: str, now: datetime | None = None, reason: str = "logout",
            peer: str | None = None) -> bool:  # fmt: skip
        """Sign out; False when the session was unknown or already ended."""
        now, id_hash = now or utcnow(), sessions.hash_id(session_id)
        with self.db.connect() as conn:
            s = conn.execute(select(_sessions).where(_sessions.c.id_hash == id_hash)).first()
        if s is None or s.ended_at is not None:
            return False
        self.writer.write(self._end_item(id_hash, s.username, reason, now, peer))
        return True
