"""API tokens: shown once, stored as a digest, scoped within the owner's role, expiring, revocable,
every use audited. Web sessions: hashed ids, idle and absolute timeouts, CSRF compared in constant time."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from engine.config.auth import SessionPolicy
from engine.core.errors import PermanentError
from engine.security import sessions, tokens
from engine.security.access import Principal, allowed
from engine.security.users import Refusal
from engine.store.credentials import ActiveSession
from engine.store.tables import ApiToken, UserSession

NOW = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
PASSWORD = "Vessel-Lantern-42"


def test_token_format_and_digest() -> None:
    new = tokens.issue()
    assert re.fullmatch(r"rb_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", new.token)
    token_id, secret = tokens.parse(new.token)  # type: ignore[misc]
    assert token_id == new.token_id and len(secret) == 43
    assert new.digest == tokens.digest(token_id, secret) and secret not in new.digest
    assert tokens.matches(new.digest, token_id, secret)
    assert not tokens.matches(new.digest, token_id, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert not tokens.matches(new.digest, "0" * 16, secret)  # the digest binds the id
    assert tokens.parse("Bearer abc") is None and tokens.parse(new.token + "x") is None
    assert tokens.issue().token != new.token
    assert tokens.scope_problems("service", ["studies.view", "users.manage", "made.up"]) == ["made.up", "users.manage"]


def test_create_and_use_a_scoped_token(ctx, repos, audit, all_audit_text) -> None:  # type: ignore[no-untyped-def]
    repos.users.add("pacs", "PACS bridge", "service", None, "user:root", NOW)
    issued = repos.tokens.create("pacs", ["studies.view", "jobs.view"], 30, "pacs", "user:root", NOW)
    assert issued.expires_at == NOW + timedelta(days=30)
    principal = repos.tokens.authenticate(issued.token, NOW + timedelta(days=1), peer="10.1.1.1")
    assert principal == Principal("pacs", "service", "token", scopes=frozenset({"studies.view", "jobs.view"}),
                                  token_id=issued.token_id)  # fmt: skip
    assert allowed(principal, "studies.view", NOW) and not allowed(principal, "worklist.view", NOW)
    [row] = repos.tokens.list()
    assert (row.id, row.username, row.scopes, row.last_used_at) == (
        issued.token_id, "pacs", ["jobs.view", "studies.view"], NOW + timedelta(days=1))  # fmt: skip
    assert not hasattr(row, "digest")
    secret = issued.token.split("_", 2)[2]
    with ctx.db.connect() as conn:
        stored = conn.execute(select(ApiToken)).one()
    assert secret not in json.dumps(stored._asdict(), default=str)
    assert stored.digest == tokens.digest(issued.token_id, secret)
    [created] = audit("token.created")
    assert created["record_ids"] == sorted([issued.token_id, "user:pacs"])
    assert created["detail"]["scopes"] == ["jobs.view", "studies.view"]
    [used] = audit("auth.token")
    assert (used["actor"], used["outcome"], used["peer"]) == (f"token:{issued.token_id}", "success", "10.1.1.1")
    assert secret not in all_audit_text()


def test_scopes_must_be_within_the_role(repos) -> None:  # type: ignore[no-untyped-def]
    repos.users.add("pacs", "PACS bridge", "service", None, "user:root", NOW)
    with pytest.raises(PermanentError, match="not allowed for role service: users.manage"):
        repos.tokens.create("pacs", ["studies.view", "users.manage"], 30, "x", "user:root", NOW)
    with pytest.raises(PermanentError, match="not allowed for role service: nope.nope"):
        repos.tokens.create("pacs", ["nope.nope"], 30, "x", "user:root", NOW)
    with pytest.raises(PermanentError, match="at least one scope"):
        repos.tokens.create("pacs", [], 30, "x", "user:root", NOW)
    for days in (0, 366):
        with pytest.raises(PermanentError, match="1 to 365 days"):
            repos.tokens.create("pacs", ["studies.view"], days, "x", "user:root", NOW)
    with pytest.raises(LookupError):
        repos.tokens.create("ghost", ["studies.view"], 30, "x", "user:root", NOW)
    assert repos.tokens.list() == []


def test_expired_revoked_forged_and_malformed_tokens_are_refused(repos, audit) -> None:  # type: ignore[no-untyped-def]
    repos.users.add("pacs", "PACS bridge", "service", None, "user:root", NOW)
    issued = repos.tokens.create("pacs", ["studies.view"], 7, "pacs", "user:root", NOW)
    expires = NOW + timedelta(days=7)
    assert isinstance(repos.tokens.authenticate(issued.token, expires - timedelta(seconds=1)), Principal)
    assert repos.tokens.authenticate(issued.token, expires) == Refusal("expired")
    forged = issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")
    assert repos.tokens.authenticate(forged, NOW) == Refusal("unknown_token")
    assert repos.tokens.authenticate("rb_0123456789abcdef_" + "A" * 43, NOW) == Refusal("unknown_token")
    assert repos.tokens.authenticate("not a token", NOW) == Refusal("malformed")
    repos.tokens.revoke(issued.token_id, "user:root", "PACS replaced", NOW)
    assert repos.tokens.authenticate(issued.token, NOW) == Refusal("revoked")
    assert repos.tokens.list()[0].state(NOW) == "revoked"
    with pytest.raises(PermanentError, match="already revoked"):
        repos.tokens.revoke(issued.token_id, "user:root", "again", NOW)
    uses = [(e["outcome"], (e["detail"] or {}).get("reason")) for e in audit("auth.token")]
    assert uses == [("success", None), ("failure", "expired"), ("failure", "unknown_token"),
                    ("failure", "unknown_token"), ("failure", "malformed"), ("failure", "revoked")]  # fmt: skip
    assert audit("auth.token")[4]["actor"] == "anonymous"
    assert [e["detail"]["reason"] for e in audit("token.revoked")] == ["PACS replaced"]


def test_owner_changes_apply_to_tokens_at_once(repos) -> None:  # type: ignore[no-untyped-def]
    repos.users.add("ana", "Ana", "integration_analyst", PASSWORD, "user:root", NOW)
    issued = repos.tokens.create("ana", ["channels.view", "messages.reveal_phi"], 30, "script", "user:root", NOW)
    repos.users.set_role("ana", "admin", "user:root", "promoted", NOW)
    narrowed = repos.tokens.authenticate(issued.token, NOW)
    assert narrowed.scopes == frozenset({"channels.view"})  # admins may not reveal message content
    repos.users.set_role("ana", "technologist", "user:root", "moved", NOW)
    assert repos.tokens.authenticate(issued.token, NOW) == Refusal("role_changed")
    repos.users.set_role("ana", "integration_analyst", "user:root", "back", NOW)
    for n in range(5):
        repos.users.authenticate("ana", f"wrong-{n}", None, NOW)
    assert repos.tokens.authenticate(issued.token, NOW) == Refusal("locked")
    repos.users.unlock("ana", "user:root", NOW)
    repos.users.set_disabled("ana", True, "user:root", "left", NOW)
    assert repos.tokens.authenticate(issued.token, NOW) == Refusal("disabled")
    with pytest.raises(PermanentError, match="disabled"):
        repos.tokens.create("ana", ["channels.view"], 30, "x", "user:root", NOW)


def _signed_in(repos) -> Principal:  # type: ignore[no-untyped-def]
    repos.users.add("rita", "Rita", "radiologist", PASSWORD, "user:root", NOW)
    principal = repos.users.authenticate("rita", PASSWORD, None, NOW)
    assert isinstance(principal, Principal)
    return principal


def test_session_start_validate_and_logout(ctx, repos, audit) -> None:  # type: ignore[no-untyped-def]
    new = repos.sessions.start(_signed_in(repos), NOW, peer="10.0.0.9")
    with ctx.db.connect() as conn:
        row = conn.execute(select(UserSession)).one()
    assert row.id_hash == sessions.hash_id(new.session_id) and new.session_id not in json.dumps(row._asdict(),
                                                                                                default=str)
    active = repos.sessions.validate(new.session_id, NOW + timedelta(minutes=5))
    assert isinstance(active, ActiveSession)
    assert active.principal == Principal("rita", "radiologist", "session") and active.csrf_token == new.csrf_token
    assert active.last_seen_at == NOW + timedelta(minutes=5)
    assert repos.sessions.validate("not-a-session", NOW) == Refusal("unknown_session")
    assert repos.sessions.end(new.session_id, NOW + timedelta(minutes=6)) is True
    assert repos.sessions.end(new.session_id, NOW + timedelta(minutes=7)) is False
    assert repos.sessions.validate(new.session_id, NOW + timedelta(minutes=6)) == Refusal("logout")
    assert [e["detail"]["event"] for e in audit("auth.session")] == ["started", "logout"]
    token_principal = Principal("rita", "radiologist", "token", scopes=frozenset({"worklist.view"}))
    with pytest.raises(PermanentError, match="password sign-in"):
        repos.sessions.start(token_principal, NOW)


def test_session_idle_timeout(repos, audit) -> None:  # type: ignore[no-untyped-def]
    new = repos.sessions.start(_signed_in(repos), NOW)
    assert isinstance(repos.sessions.validate(new.session_id, NOW + timedelta(minutes=14, seconds=59)), ActiveSession)
    # the use just now was recorded, so idleness counts from there
    last = NOW + timedelta(minutes=14, seconds=59)
    assert isinstance(repos.sessions.validate(new.session_id, last + timedelta(minutes=14)), ActiveSession)
    idle_at = last + timedelta(minutes=14) + timedelta(minutes=15)
    assert repos.sessions.validate(new.session_id, idle_at) == Refusal("idle_timeout")
    assert repos.sessions.validate(new.session_id, idle_at) == Refusal("idle_timeout")  # stays ended
    assert [e["detail"]["event"] for e in audit("auth.session")] == ["started", "idle_timeout"]


def test_session_absolute_timeout_however_busy(repos) -> None:  # type: ignore[no-untyped-def]
    new = repos.sessions.start(_signed_in(repos), NOW)
    at = NOW
    while at < NOW + timedelta(hours=7, minutes=50):
        at += timedelta(minutes=10)
        assert isinstance(repos.sessions.validate(new.session_id, at), ActiveSession)
    assert repos.sessions.validate(new.session_id, NOW + timedelta(hours=8)) == Refusal("absolute_timeout")


def test_session_ends_when_the_user_is_disabled_and_sees_role_changes(repos) -> None:  # type: ignore[no-untyped-def]
    new = repos.sessions.start(_signed_in(repos), NOW)
    repos.users.set_role("rita", "technologist", "user:root", "reassigned", NOW)
    assert repos.sessions.validate(new.session_id, NOW).principal.role == "technologist"
    repos.users.set_disabled("rita", True, "user:root", "left", NOW)
    assert repos.sessions.validate(new.session_id, NOW) == Refusal("disabled")


def test_session_policy_and_csrf() -> None:
    policy = SessionPolicy()
    assert (policy.idle_minutes, policy.absolute_hours) == (15, 8)
    assert sessions.state(NOW, NOW, NOW + timedelta(minutes=14), policy) == "active"
    assert sessions.state(NOW, NOW, NOW + timedelta(minutes=15), policy) == "idle_timeout"
    assert sessions.state(NOW, NOW + timedelta(hours=8), NOW + timedelta(hours=8), policy) == "absolute_timeout"
    a, b = sessions.new_session(), sessions.new_session()
    assert a.session_id != b.session_id and a.csrf_token != b.csrf_token and len(a.csrf_token) == 43
    assert sessions.csrf_matches(a.csrf_token, a.csrf_token)
    assert not sessions.csrf_matches(a.csrf_token, b.csrf_token)
    assert not sessions.csrf_matches(a.csrf_token, a.csrf_token[:-1])
    assert not sessions.csrf_matches(a.csrf_token, None) and not sessions.csrf_matches(a.csrf_token, "")
    assert not sessions.csrf_matches("", "")
    assert not sessions.csrf_matches(a.csrf_token, "é" * 43)  # non-ASCII input is a mismatch, not an error
