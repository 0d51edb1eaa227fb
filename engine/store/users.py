"""Users in the store: accounts, password sign-in with lockout and TOTP, role changes; all audited.

Takes the writer and the audit log's `event` builder from its caller (store never imports audit), and
commits each change together with its audit entry. Reads never return the password hash or the TOTP
secret; `authenticate` answers with a Principal or a Refusal whose reason code is what gets audited
(never the password, never the code). An unknown user costs the same argon2 verify as a known one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, null, or_, select, update

from engine.config.auth import AuthPolicy
from engine.core.clock import utcnow
from engine.core.errors import PermanentError
from engine.core.ids import new_id
from engine.security import passwords, totp
from engine.security.access import Principal
from engine.security.passwords import Passwords
from engine.security.users import Refusal, check_role, check_username
from engine.security.vault import Vault, WrappedKey
from engine.store.tables import BreakGlassGrant, DataKeyRow, User
from engine.store.writer import StaleWrite, WriteItem

Event = Callable[..., dict[str, Any]]
_users = User.__table__
_keys = DataKeyRow.__table__
_grants = BreakGlassGrant.__table__
_TOTP_PART = "totp"
_SELF_ENROL = "auth.totp_enrol"  # a user's own TOTP enrolment: its start and refusals (success: user.totp_enrolled)


@dataclass(frozen=True)
class UserRow:
    """What may be shown about a user: no hash, no secret."""

    username: str
    display_name: str
    role: str
    has_password: bool
    totp_enrolled: bool
    failed_logins: int
    locked_until: datetime | None
    disabled: bool
    created_at: datetime
    changed_at: datetime
    changed_by: str
    last_login_at: datetime | None
    version: int

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until


@dataclass(frozen=True)
class PendingTotp:
    """A secret offered to a user enrolling their own authenticator: not stored, not yet active. The
    web page carries it sealed (engine/web/account.py); `version` is the user row's when it was offered."""

    secret: str
    version: int

    def __repr__(self) -> str:  # never the secret, should one ever be logged
        return f"PendingTotp(version={self.version})"


def _no_service(raw: Any) -> None:
    if raw.role == "service":
        raise PermanentError("service accounts do not sign in, so they have no second factor")


def _row(r: Any) -> UserRow:
    return UserRow(r.username, r.display_name, r.role, r.password_hash is not None, r.totp_sealed is not None,
                   r.failed_logins, r.locked_until, bool(r.disabled), r.created_at,
                   r.changed_at, r.changed_by, r.last_login_at, r.version)  # fmt: skip


@functools.cache
def _change(columns: tuple[str, ...]) -> Any:
    """An admin change guarded on the row's version (StaleWrite when someone changed it meanwhile)."""
    values: dict[str, Any] = {c: bindparam(f"p_{c}") for c in columns}
    return (
        update(_users)
        .where(_users.c.username == bindparam("k_user"), _users.c.version == bindparam("k_version"))
        .values(version=_users.c.version + 1, changed_at=bindparam("p_at"), changed_by=bindparam("p_by"), **values)
    )


_WHO = _users.c.username == bindparam("k_user")
_FAILED = update(_users).where(_WHO).values(failed_logins=_users.c.failed_logins + 1)
_LOCK = update(_users).where(_WHO).values(failed_logins=0, locked_until=bindparam("p_until"))
_SIGNED_IN = update(_users).where(_WHO).values(failed_logins=0, locked_until=null(), last_login_at=bindparam("p_at"))
_REHASH = update(_users).where(_WHO).values(password_hash=bindparam("p_hash"))
# A guard: only a step later than the last one used (two sign-ins racing with one code: one wins).
_TOTP_USED = (
    update(_users)
    .where(_WHO, or_(_users.c.totp_counter.is_(None), _users.c.totp_counter < bindparam("k_counter")))
    .values(totp_counter=bindparam("p_counter"))
)
_DELETE_KEY = delete(_keys).where(_keys.c.record_id == bindparam("k_record"))


def grant_in_force(conn: Connection, username: str, now: datetime) -> tuple[str, datetime] | None:
    """The break-glass grant (id, expiry) a user holds at `now`, the one lasting longest."""
    found = conn.execute(
        select(_grants.c.id, _grants.c.expires_at)
        .where(_grants.c.username == username, _grants.c.expires_at > now, _grants.c.ended_at.is_(None))
        .order_by(_grants.c.expires_at.desc()).limit(1)
    ).first()  # fmt: skip
    return (found.id, found.expires_at) if found else None


class Users:
    def __init__(self, db: Engine, writer: Any, vault: Vault, event: Event, policy: AuthPolicy | None = None,
                 hasher: Passwords | None = None) -> None:  # fmt: skip
        self.db, self.writer, self.vault, self.event = db, writer, vault, event
        self.policy = policy or AuthPolicy()
        self.passwords = hasher or Passwords()

    # reads

    def _raw(self, username: str) -> Any:
        with self.db.connect() as conn:
            return conn.execute(select(_users).where(_users.c.username == username)).first()

    def get(self, username: str) -> UserRow | None:
        raw = self._raw(username.strip().lower())
        return _row(raw) if raw else None

    def all(self) -> list[UserRow]:
        with self.db.connect() as conn:
            return [_row(r) for r in conn.execute(select(_users).order_by(_users.c.username)).all()]

    def _require(self, username: str) -> Any:
        raw = self._raw(username.strip().lower())
        if raw is None:
            raise LookupError("no such user")
        return raw

    # changes

    def _update(self, raw: Any, actor: str, now: datetime, values: dict[str, Any]) -> WriteItem:
        params = {"k_user": raw.username, "k_version": raw.version, "p_at": now, "p_by": actor[:120]}
        params.update({f"p_{k}": v for k, v in values.items()})
        return WriteItem(guards=[(_change(tuple(sorted(values))), params)])

    def _audit(self, item: WriteItem, action: str, actor: str, username: str, **fields: Any) -> None:
        item.audit.append(self.event(action, actor=actor, record_ids=[f"user:{username}"], **fields))

    def add(self, username: str, display_name: str, role: str, password: str | None, actor: str,
            now: datetime | None = None) -> UserRow:  # fmt: skip
        """A new user. Every role but service needs a password that meets the policy; service
        accounts have none and act through API tokens only."""
        now, name, role = now or utcnow(), check_username(username), check_role(role)
        if role == "service" and password is not None:
            raise PermanentError("service accounts have no password: they use API tokens")
        if role != "service":
            if password is None:
                raise PermanentError("a password is required")
            passwords.check(password, name, self.policy.password)
        if self._raw(name) is not None:
            raise PermanentError("that username is taken")
        row = {"username": name, "display_name": display_name.strip()[:200] or name, "role": role,
               "password_hash": self.passwords.hash(password) if password else None, "totp_record": None,
               "totp_sealed": None, "totp_counter": None, "failed_logins": 0, "locked_until": None,
               "disabled": False, "version": 0, "created_at": now, "changed_at": now,
               "changed_by": actor[:120], "password_changed_at": now if password else None,
               "last_login_at": None}  # fmt: skip
        item = WriteItem(inserts=[(_users, row)])
        self._audit(item, "user.created", actor, name, detail={"role": role, "password": password is not None})
        self.writer.write(item)
        return _row(self._raw(name))

    def set_password(self, username: str, password: str, actor: str, now: datetime | None = None) -> None:
        now, raw = now or utcnow(), self._require(username)
        if raw.role == "service":
            raise PermanentError("service accounts have no password: they use API tokens")
        passwords.check(password, raw.username, self.policy.password)
        item = self._update(raw, actor, now, {"password_hash": self.passwords.hash(password),
                                              "password_changed_at": now})  # fmt: skip
        self._audit(item, "user.password_changed", actor, raw.username)
        self.writer.write(item)

    def change_own_password(self, username: str, current: str, new: str, now: datetime | None = None,
                            peer: str | None = None) -> Refusal | None:  # fmt: skip
        """A signed-in user's own change: the current password first (a wrong one counts toward the
        lockout, as at sign-in), then the policy on the new one (PasswordRejected). None when done."""
        now, raw = now or utcnow(), self._require(username)
        locked = raw.locked_until
        if locked is not None and now < locked:
            return self.refuse(raw, "locked", now, peer, action="auth.password_change")
        if raw.password_hash is None or not self.passwords.verify(raw.password_hash, current):
            return self.refuse(raw, "bad_password", now, peer, action="auth.password_change", count=True)
        self.set_password(username, new, f"user:{raw.username}", now)
        return None

    def set_role(self, username: str, role: str, actor: str, reason: str, now: datetime | None = None) -> None:
        now, raw, role = now or utcnow(), self._require(username), check_role(role)
        if (raw.role == "service") != (role == "service"):
            raise PermanentError("a service account cannot become a person's account, nor the reverse")
        item = self._update(raw, actor, now, {"role": role})
        self._audit(item, "user.role_changed", actor, raw.username,
                    detail={"from": raw.role, "to": role, "reason": reason})  # fmt: skip
        self.writer.write(item)

    def set_disabled(self, username: str, disabled: bool, actor: str, reason: str,
                     now: datetime | None = None) -> None:  # fmt: skip
        now, raw = now or utcnow(), self._require(username)
        item = self._update(raw, actor, now, {"disabled": disabled})
        self._audit(item, "user.disabled" if disabled else "user.enabled", actor, raw.username,
                    detail={"reason": reason})  # the reason is free text: sealed, never the clear purpose
        self.writer.write(item)

    def unlock(self, username: str, actor: str, now: datetime | None = None) -> None:
        now, raw = now or utcnow(), self._require(username)
        item = self._update(raw, actor, now, {"failed_logins": 0, "locked_until": None})
        self._audit(item, "user.unlocked", actor, raw.username,
                    detail={"was_locked_until": raw.locked_until, "failed_logins": raw.failed_logins})
        self.writer.write(item)

    def enroll_totp(self, username: str, actor: str, now: datetime | None = None) -> tuple[str, str]:
        """An administrator's enrolment: a new TOTP secret, active at once. Returns (secret, otpauth
        URI): the only time either is shown (people can enrol their own instead: `start_own_totp`)."""
        now, raw = now or utcnow(), self._require(username)
        secret = totp.new_secret()
        self._activate_totp(raw, secret, actor, now, counter=None, detail={})
        return secret, totp.provisioning_uri(secret, raw.username)

    def _activate_totp(self, raw: Any, secret: str, actor: str, now: datetime, *, counter: int | None,
                       detail: dict[str, Any]) -> None:  # fmt: skip
        """Make `secret` the user's TOTP secret: sealed under a fresh data key, the old data key deleted
        (crypto-shredding the old secret), `counter` the last step used (None: no code used yet).
        Guarded on the row's version (StaleWrite when it changed since `raw` was read); audited
        `user.totp_enrolled`."""
        _no_service(raw)
        record_id = new_id()
        data_key = self.vault.new_data_key(record_id)
        w = data_key.wrapped
        item = self._update(raw, actor, now, {"totp_record": record_id, "totp_counter": counter,
                                              "totp_sealed": self.vault.seal(data_key, _TOTP_PART, secret.encode())})
        item.inserts.append((_keys, {"record_id": record_id, "kek_id": w.kek_id, "kek_version": w.kek_version,
                                     "wrapped": w.wrapped, "created_at": now}))  # fmt: skip
        if raw.totp_record:
            item.statements.append((_DELETE_KEY, {"k_record": raw.totp_record}))
        self._audit(item, "user.totp_enrolled", actor, raw.username,
                    detail={"replaced": raw.totp_record is not None, **detail})  # fmt: skip
        self.writer.write(item)

    # self-service enrolment (engine/web/account.py): re-authenticate, then prove the new authenticator works

    def start_own_totp(self, username: str, current: str, code: str | None, now: datetime | None = None,
                       peer: str | None = None) -> Refusal | PendingTotp:  # fmt: skip
        """A signed-in user asks to set up (or replace) their own authenticator: the password first (a
        wrong one counts toward the lockout, as at sign-in), then, when one is enrolled, its current
        code (checked and used up like a sign-in's). Returns a new secret that is NOT stored: it becomes
        active through `confirm_own_totp` with a code it makes. Refusals are audited `auth.totp_enrol`."""
        now, raw = now or utcnow(), self._require(username)
        _no_service(raw)
        refuse = functools.partial(self.refuse, raw, now=now, peer=peer, action=_SELF_ENROL,
                                   detail={"step": "start"})  # fmt: skip
        locked = raw.locked_until
        if locked is not None and now < locked:
            self.passwords.dummy_verify(current)
            return refuse("locked")
        if raw.password_hash is None or not self.passwords.verify(raw.password_hash, current):
            return refuse("bad_password", count=True)
        item = WriteItem()
        if raw.totp_sealed is not None:
            reason, item = self.check_totp(raw, code, now)
            if reason is not None:
                return refuse(reason, count=reason in ("bad_totp", "totp_replayed"))
        item.audit.append(self.event(_SELF_ENROL, actor=f"user:{raw.username}", peer=peer,
                                     record_ids=[f"user:{raw.username}"],
                                     detail={"step": "start", "enrolled": raw.totp_sealed is not None}))  # fmt: skip
        try:
            self.writer.write(item)
        except StaleWrite:  # a racing request used the same step
            return refuse("totp_replayed", count=True)
        return PendingTotp(totp.new_secret(), raw.version)

    def confirm_own_totp(self, username: str, pending: PendingTotp, code: str | None, now: datetime | None = None,
                         peer: str | None = None) -> Refusal | None:  # fmt: skip
        """Make the pending secret the user's own once `code` (from the new authenticator) verifies: as
        `enroll_totp` does, with the code's step recorded as used so it cannot sign in again. Refused
        (`pending_stale`) when the account changed since the start, e.g. an administrator enrolled
        a secret meanwhile or this one was already confirmed. A wrong code does not count toward the
        lockout: it guesses nothing (the secret is on the page). None when done."""
        now, raw = now or utcnow(), self._require(username)
        _no_service(raw)
        refuse = functools.partial(self.refuse, raw, now=now, peer=peer, action=_SELF_ENROL,
                                   detail={"step": "confirm"})  # fmt: skip
        if raw.version != pending.version:
            return refuse("pending_stale")
        check = totp.verify(pending.secret, code, now, None)
        if not check.ok:
            return refuse("bad_totp")
        try:
            self._activate_totp(raw, pending.secret, f"user:{raw.username}", now, counter=check.counter,
                                detail={"self": True})  # fmt: skip
        except StaleWrite:
            return refuse("pending_stale")
        return None

    # sign-in

    def _secret(self, raw: Any) -> str | None:
        with self.db.connect() as conn:
            key = conn.execute(select(_keys).where(_keys.c.record_id == raw.totp_record)).first()
        if key is None:
            return None
        data_key = self.vault.unwrap(WrappedKey(key.kek_id, key.kek_version, key.wrapped), raw.totp_record)
        return self.vault.open(data_key, _TOTP_PART, raw.totp_sealed).decode()

    def refuse(self, raw: Any, reason: str, now: datetime, peer: str | None, *, action: str = "auth.login",
               count: bool = False, purpose: str | None = None,
               detail: dict[str, Any] | None = None) -> Refusal:  # fmt: skip
        """Audit a refusal (the reason code and `detail`); with `count`, it is a guess: count it and lock
        out at the threshold."""
        item, locked = WriteItem(), None
        actor = f"user:{raw.username}" if raw is not None else "anonymous"
        if raw is not None and count:
            item.statements.append((_FAILED, {"k_user": raw.username}))
            if raw.failed_logins + 1 >= self.policy.lockout_threshold:
                locked = now + timedelta(minutes=self.policy.lockout_minutes)
                item.statements.append((_LOCK, {"k_user": raw.username, "p_until": locked}))
                item.audit.append(self.event("auth.lockout", actor=actor, outcome="failure", peer=peer,
                                             record_ids=[f"user:{raw.username}"],
                                             detail={"failures": raw.failed_logins + 1, "until": locked}))
        elif raw is not None and reason == "locked":
            locked = raw.locked_until
        outcome = "failure" if action == "auth.login" else "denied"
        item.audit.insert(0, self.event(action, actor=actor, outcome=outcome, peer=peer, purpose=purpose,
                                        detail={"reason": reason, **(detail or {})}))
        self.writer.write(item)
        return Refusal(reason, locked)

    def check_totp(self, raw: Any, code: str | None, now: datetime) -> tuple[str | None, WriteItem]:
        """(refusal reason or None, the item that records the step used); commit the item with the
        action it unlocks: it fails with StaleWrite when a racing request used the same step."""
        if raw.totp_sealed is None:
            return "totp_not_enrolled", WriteItem()
        if not code:
            return "totp_required", WriteItem()
        secret = self._secret(raw)
        if secret is None:
            return "totp_not_enrolled", WriteItem()
        check = totp.verify(secret, code, now, raw.totp_counter)
        if not check.ok:
            return ("totp_replayed" if check.outcome == "replayed" else "bad_totp"), WriteItem()
        params = {"k_user": raw.username, "k_counter": check.counter, "p_counter": check.counter}
        return None, WriteItem(guards=[(_TOTP_USED, params)])

    def authenticate(self, username: str, password: str, totp_code: str | None, now: datetime | None = None,
                     peer: str | None = None) -> Principal | Refusal:  # fmt: skip
        """Password (and TOTP where the role or the user has one) sign-in. Wrong passwords and codes
        count toward the lockout; a missing code does not (the form asks for it in a second step)."""
        now = now or utcnow()
        name = username.strip().lower()
        raw = self._raw(name) if name else None
        if raw is None or raw.disabled or raw.password_hash is None or raw.role == "service":
            self.passwords.dummy_verify(password)
            reason = "unknown_user" if raw is None else "disabled" if raw.disabled else "no_password"
            return self.refuse(raw, reason, now, peer)
        locked = raw.locked_until
        if locked is not None and now < locked:
            self.passwords.dummy_verify(password)
            return self.refuse(raw, "locked", now, peer)
        if not self.passwords.verify(raw.password_hash, password):
            return self.refuse(raw, "bad_password", now, peer, count=True)
        item = WriteItem()
        if raw.role in self.policy.totp_roles or raw.totp_sealed is not None:
            reason, item = self.check_totp(raw, totp_code, now)
            if reason is not None:
                return self.refuse(raw, reason, now, peer, count=reason in ("bad_totp", "totp_replayed"))
        item.statements.append((_SIGNED_IN, {"k_user": raw.username, "p_at": now}))
        if self.passwords.needs_rehash(raw.password_hash):  # parameters raised since it was set
            item.statements.append((_REHASH, {"k_user": raw.username, "p_hash": self.passwords.hash(password)}))
        item.audit.append(self.event("auth.login", actor=f"user:{raw.username}", peer=peer,
                                     detail={"via": "password", "totp": bool(item.guards)}))  # fmt: skip
        try:
            self.writer.write(item)
        except StaleWrite:
            return self.refuse(raw, "totp_replayed", now, peer, count=True)
        with self.db.connect() as conn:
            grant = grant_in_force(conn, raw.username, now)
        return Principal(raw.username, raw.role, "password", break_glass_until=grant[1] if grant else None,
                         break_glass_id=grant[0] if grant else None)  # fmt: skip

    # single sign-on (engine/web/oidc.py verifies the provider's ID token; the local account decides)

    def sso_refused(self, username: str | None, reason: str, now: datetime, peer: str | None,
                    detail: dict[str, Any]) -> Refusal:  # fmt: skip
        """Audit a refused single sign-on (`auth.login`, failure, the reason code and `detail`). Never
        counts toward the lockout: no password was guessed."""
        raw = self._raw(username.strip().lower()) if username and username.strip() else None
        actor = f"user:{raw.username}" if raw is not None else "anonymous"
        self.writer.write(WriteItem(audit=[self.event("auth.login", actor=actor, outcome="failure", peer=peer,
                                                      detail={"reason": reason, **detail})]))  # fmt: skip
        return Refusal(reason, raw.locked_until if raw is not None and reason == "locked" else None)

    def sso_signed_in(self, username: str, now: datetime, peer: str | None, *, second_factor: bool,
                      detail: dict[str, Any]) -> Principal | Refusal:  # fmt: skip
        """A user the identity provider vouched for: they must exist here, be enabled, not locked out and
        not a service account; a role that needs TOTP (or a user who enrolled one) needs the provider's
        second factor. Records the sign-in with `detail` (via, issuer, amr) in the audit."""
        name = username.strip().lower()
        raw = self._raw(name) if name else None
        reason = (
            "unknown_user" if raw is None
            else "disabled" if raw.disabled
            else "service_account" if raw.role == "service"
            else "locked" if raw.locked_until is not None and now < raw.locked_until
            else "sso_mfa_required"
            if (raw.role in self.policy.totp_roles or raw.totp_sealed is not None) and not second_factor
            else None
        )  # fmt: skip
        if reason is not None:
            return self.sso_refused(name if raw is not None else None, reason, now, peer, detail)
        item = WriteItem(statements=[(_SIGNED_IN, {"k_user": raw.username, "p_at": now})])
        item.audit.append(self.event("auth.login", actor=f"user:{raw.username}", peer=peer, detail=detail))
        self.writer.write(item)
        with self.db.connect() as conn:
            grant = grant_in_force(conn, raw.username, now)
        # "password": a session starts only from an interactive sign-in; the audit entry says it was SSO.
        return Principal(raw.username, raw.role, "password", break_glass_until=grant[1] if grant else None,
                         break_glass_id=grant[0] if grant else None)  # fmt: skip
