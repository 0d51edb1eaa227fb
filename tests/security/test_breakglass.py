"""Break-glass: a stated reason, a fresh TOTP code, at most an hour; elevates to reveal PHI until it
expires by itself; audited, listed for the dashboard and compliance report, reviewed by someone else.
The reason is free text that may name a patient: it is sealed, and never in the clear in the store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from sqlalchemy import select

from engine.core.errors import PermanentError
from engine.security.access import AccessDenied, Principal, allowed
from engine.store.credentials import ActiveSession
from engine.store.tables import BreakGlassGrant
from tests import phi

NOW = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
PASSWORD = "Vessel-Lantern-42"
REASON = f"ED trauma, unlabelled CT of {phi.NAME_FAMILY} needs matching"


def _tech(repos) -> str:  # type: ignore[no-untyped-def]
    """A technologist with TOTP enrolled; returns the TOTP secret."""
    repos.users.add("tina", "Tina Tech", "technologist", PASSWORD, "user:root", NOW)
    secret, _ = repos.users.enroll_totp("tina", "user:root", NOW)
    return secret


def _code(secret: str, at: datetime) -> str:
    return pyotp.TOTP(secret).at(at)


def test_grant_needs_a_fresh_totp_a_reason_and_a_short_time(repos, audit) -> None:  # type: ignore[no-untyped-def]
    secret = _tech(repos)
    cases = [
        (REASON, 30, None, "totp_required"),
        (REASON, 30, "000000" if _code(secret, NOW) != "000000" else "111111", "bad_totp"),
        ("because", 30, _code(secret, NOW), "reason_required"),
        ("          emergency ", 30, _code(secret, NOW), "reason_required"),
        (REASON, 61, _code(secret, NOW), "bad_duration"),
        (REASON, 0, _code(secret, NOW), "bad_duration"),
    ]
    for reason, minutes, code, expected in cases:
        with pytest.raises(AccessDenied) as denied:
            repos.grants.grant("tina", reason, minutes, code, NOW)
        assert denied.value.reason == expected
    assert repos.users.get("tina").failed_logins == 1  # the wrong code was a guess; the rest were not
    assert repos.grants.list(NOW) == []
    refusals = audit("auth.break_glass")
    assert [(e["outcome"], e["purpose"], e["detail"]["reason"]) for e in refusals] == [
        ("denied", "BTG", r) for r in ("totp_required", "bad_totp", "reason_required", "reason_required",
                                       "bad_duration", "bad_duration")
    ]  # fmt: skip
    grant = repos.grants.grant("tina", REASON, 30, _code(secret, NOW), NOW, peer="10.0.0.5")
    assert (grant.username, grant.reason, grant.minutes, grant.expires_at) == (
        "tina", REASON, 30, NOW + timedelta(minutes=30))  # fmt: skip
    with pytest.raises(AccessDenied) as replay:  # the same code cannot open a second grant
        repos.grants.grant("tina", REASON, 30, _code(secret, NOW), NOW)
    assert replay.value.reason == "totp_replayed"
    granted = [e for e in audit("auth.break_glass") if e["outcome"] == "success"]
    assert granted == [{"actor": "user:tina", "outcome": "success", "purpose": "BTG", "peer": "10.0.0.5",
                        "record_ids": [grant.id],
                        "detail": {"reason": REASON, "minutes": 30, "expires_at": str(grant.expires_at)}}]  # fmt: skip


def test_roles_that_may_not_and_users_without_totp(repos) -> None:  # type: ignore[no-untyped-def]
    repos.users.add("audrey", "Audrey", "auditor", PASSWORD, "user:root", NOW)
    secret, _ = repos.users.enroll_totp("audrey", "user:root", NOW)
    with pytest.raises(AccessDenied) as denied:
        repos.grants.grant("audrey", REASON, 10, _code(secret, NOW), NOW)
    assert denied.value.reason == "role_may_not_break_glass"
    repos.users.add("rob", "Rob", "radiologist", PASSWORD, "user:root", NOW)
    with pytest.raises(AccessDenied) as no_totp:
        repos.grants.grant("rob", REASON, 10, "123456", NOW)
    assert no_totp.value.reason == "totp_not_enrolled"
    with pytest.raises(AccessDenied) as unknown:
        repos.grants.grant("ghost", REASON, 10, "123456", NOW)
    assert unknown.value.reason == "unknown_user"


def test_grant_elevates_a_session_until_it_expires(repos) -> None:  # type: ignore[no-untyped-def]
    secret = _tech(repos)
    principal = repos.users.authenticate("tina", PASSWORD, _code(secret, NOW), NOW)
    session = repos.sessions.start(principal, NOW)
    before = repos.sessions.validate(session.session_id, NOW)
    assert not allowed(before.principal, "phi.reveal", NOW)
    at = NOW + timedelta(seconds=30)
    grant = repos.grants.grant("tina", REASON, 10, _code(secret, at), at)
    during = repos.sessions.validate(session.session_id, at + timedelta(minutes=1))
    assert isinstance(during, ActiveSession)
    assert during.principal.break_glass_until == grant.expires_at and during.principal.break_glass_id == grant.id
    assert allowed(during.principal, "phi.reveal", at + timedelta(minutes=1))
    assert not allowed(during.principal, "phi.reveal", grant.expires_at)  # expires by itself, at use
    assert [g.id for g in repos.grants.list(at + timedelta(minutes=9), in_force=True)] == [grant.id]
    assert repos.grants.active("tina", at + timedelta(minutes=9)).id == grant.id
    assert repos.grants.list(grant.expires_at, in_force=True) == []
    assert repos.grants.active("tina", grant.expires_at) is None
    after = repos.sessions.validate(session.session_id, grant.expires_at)
    assert after.principal.break_glass_until is None and not allowed(after.principal, "phi.reveal", grant.expires_at)
    # a password sign-in during the grant carries it too
    signed = repos.users.authenticate("tina", PASSWORD, _code(secret, at + timedelta(seconds=30)),
                                      at + timedelta(seconds=30))  # fmt: skip
    assert signed.break_glass_id == grant.id


def test_end_early(repos, audit) -> None:  # type: ignore[no-untyped-def]
    secret = _tech(repos)
    grant = repos.grants.grant("tina", REASON, 60, _code(secret, NOW), NOW)
    repos.grants.end(grant.id, "user:tina", NOW + timedelta(minutes=5))
    assert repos.grants.active("tina", NOW + timedelta(minutes=6)) is None
    assert repos.grants.get(grant.id).ended_at == NOW + timedelta(minutes=5)
    assert [e["record_ids"] for e in audit("auth.break_glass_ended")] == [[grant.id]]


def test_reveal_is_audited_with_its_grant(repos, audit) -> None:  # type: ignore[no-untyped-def]
    secret = _tech(repos)
    tech = Principal("tina", "technologist", "session")
    with pytest.raises(AccessDenied):
        repos.grants.reveal(tech, "phi.reveal", ["study-1"], NOW)
    grant = repos.grants.grant("tina", REASON, 15, _code(secret, NOW), NOW)
    elevated = Principal("tina", "technologist", "session", break_glass_until=grant.expires_at,
                         break_glass_id=grant.id)  # fmt: skip
    repos.grants.reveal(elevated, "phi.reveal", ["study-1"], NOW + timedelta(minutes=1))
    radiologist = Principal("rita", "radiologist", "session")
    repos.grants.reveal(radiologist, "phi.reveal", ["study-2"], NOW, purpose="TREAT")
    with pytest.raises(AccessDenied):
        repos.grants.reveal(elevated, "phi.reveal", ["study-1"], grant.expires_at)
    with pytest.raises(ValueError):
        repos.grants.reveal(radiologist, "worklist.view", ["study-2"], NOW)
    reveals = [(e["actor"], e["outcome"], e["purpose"], e["record_ids"], e["detail"]) for e in audit("phi.reveal")]
    assert reveals == [
        ("user:tina", "denied", None, ["study-1"], {"permission": "phi.reveal", "via": "none"}),
        ("user:tina", "success", "BTG", ["study-1"], {"permission": "phi.reveal", "via": "break_glass",
                                                      "grant": grant.id}),
        ("user:rita", "success", "TREAT", ["study-2"], {"permission": "phi.reveal", "via": "role"}),
        ("user:tina", "denied", None, ["study-1"], {"permission": "phi.reveal", "via": "none"}),
    ]  # fmt: skip


def test_review_by_someone_else_once(ctx, repos, audit) -> None:  # type: ignore[no-untyped-def]
    secret = _tech(repos)
    grant = repos.grants.grant("tina", REASON, 15, _code(secret, NOW), NOW)
    assert [g.id for g in repos.grants.list(NOW, unreviewed=True)] == [grant.id]
    with pytest.raises(PermanentError, match="other than its holder"):
        repos.grants.review(grant.id, "user:tina", "fine", NOW)
    with pytest.raises(PermanentError, match="needs a note"):
        repos.grants.review(grant.id, "user:audrey", "  ", NOW)
    note = f"confirmed with ED; {phi.MRN} matched"
    repos.grants.review(grant.id, "user:audrey", note, NOW + timedelta(hours=2))
    with pytest.raises(PermanentError, match="already reviewed"):
        repos.grants.review(grant.id, "user:admin", "again", NOW)
    reviewed = repos.grants.get(grant.id)
    assert (reviewed.reviewed_by, reviewed.reviewed_at, reviewed.review_note) == (
        "user:audrey", NOW + timedelta(hours=2), note)  # fmt: skip
    assert repos.grants.list(NOW, unreviewed=True) == []
    assert [g.id for g in repos.grants.list(NOW, since=NOW - timedelta(days=1))] == [grant.id]
    assert repos.grants.list(NOW, since=NOW + timedelta(seconds=1)) == []
    [review] = audit("auth.break_glass_review")
    assert review["actor"] == "user:audrey" and review["detail"] == {"user": "tina", "note": note}
    with pytest.raises(LookupError):
        repos.grants.review("no-such-grant", "user:audrey", "x", NOW)
    # the reason and the note are sealed: not in the clear in the row
    with ctx.db.connect() as conn:
        row = conn.execute(select(BreakGlassGrant)).one()
    raw = json.dumps({k: (v.hex() if isinstance(v, bytes) else str(v)) for k, v in row._asdict().items()})
    for value in (phi.NAME_FAMILY, phi.MRN):
        for variant in phi.variants(value):
            assert variant.hex() not in raw and variant.decode("latin-1") not in raw
