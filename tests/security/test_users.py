"""Users: password policy, argon2id hashing, sign-in with lockout and TOTP, account changes; all audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from engine.config.auth import AuthPolicy, PasswordPolicy
from engine.core.errors import PermanentError
from engine.security import passwords, totp
from engine.security.access import Principal
from engine.security.passwords import PasswordRejected, Passwords
from engine.security.users import Refusal, check_username
from engine.store.tables import DataKeyRow, User
from engine.store.users import Users

NOW = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)  # fixed: TOTP codes and timeouts are computed against it
PASSWORD = "Vessel-Lantern-42"


@pytest.mark.parametrize(
    ("candidate", "username", "expected"),
    [
        ("Sh0rt!pw", "alice", ["too_short"]),
        ("lowercase123", "alice", ["too_few_classes"]),  # 12 characters but two kinds
        ("Tr0ub4dor&3x", "alice", []),  # 12 characters, four kinds
        ("correct horse battery staple", "alice", []),  # a passphrase: length instead of kinds
        ("onlylowercaseletters", "alice", []),  # 20 characters of one kind is a passphrase
        ("Password123!", "alice", ["common"]),  # a common word with digits and a symbol appended
        ("Qwertyuiop", "alice", ["too_short", "common", "too_few_classes"]),
        ("Alice-Secure-77", "alice", ["contains_username"]),
        ("x" * 1025 + "A1!", "alice", ["too_long"]),
    ],
)
def test_password_policy(candidate: str, username: str, expected: list[str]) -> None:
    assert passwords.problems(candidate, username) == expected


def test_policy_rejection_names_problems_never_the_password() -> None:
    with pytest.raises(PasswordRejected) as caught:
        passwords.check("Password123!", "alice")
    assert caught.value.problems == ["common"]
    assert "Password123" not in str(caught.value) and "commonly used" in str(caught.value)
    stricter = PasswordPolicy(min_length=14, passphrase_length=20, min_classes=4)
    assert passwords.problems("Tr0ub4dor&3xyz", "alice", stricter) == []
    assert passwords.problems("Tr0ub4dor3xyzw", "alice", stricter) == ["too_few_classes"]


def test_argon2id_with_default_parameters() -> None:
    hashed = Passwords().hash(PASSWORD)
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert PASSWORD not in hashed
    p = Passwords()
    assert p.verify(hashed, PASSWORD) is True
    assert p.verify(hashed, PASSWORD + "x") is False
    assert p.verify("not-a-hash", PASSWORD) is False
    assert p.needs_rehash(hashed) is False
    assert Passwords(PasswordHasher(time_cost=4)).needs_rehash(hashed) is True


def test_usernames() -> None:
    assert check_username(" alice.m ") == "alice.m"
    for bad in ("Alice", "a", "1alice", "al ice", "alice@example.org", "x" * 65):
        with pytest.raises(PermanentError):
            check_username(bad)


def test_add_stores_only_the_hash_and_reads_never_return_it(ctx, repos, audit) -> None:  # type: ignore[no-untyped-def]
    row = repos.users.add("alice", "Alice Analyst", "integration_analyst", PASSWORD, "user:root", NOW)
    assert (row.username, row.role, row.has_password, row.totp_enrolled, row.disabled) == (
        "alice", "integration_analyst", True, False, False)  # fmt: skip
    assert not hasattr(row, "password_hash")
    with ctx.db.connect() as conn:
        stored = conn.execute(select(User.password_hash).where(User.username == "alice")).scalar()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert audit("user.created") == [{"actor": "user:root", "outcome": "success", "purpose": None, "peer": None,
                                      "record_ids": ["user:alice"],
                                      "detail": {"role": "integration_analyst", "password": True}}]  # fmt: skip
    with pytest.raises(PasswordRejected):
        repos.users.add("bob", "Bob", "radiologist", "bob-Password1", "user:root", NOW)
    with pytest.raises(PermanentError, match="taken"):
        repos.users.add("alice", "Alice again", "radiologist", PASSWORD, "user:root", NOW)
    with pytest.raises(PermanentError, match="unknown role"):
        repos.users.add("carol", "Carol", "superuser", PASSWORD, "user:root", NOW)
    assert [u.username for u in repos.users.all()] == ["alice"]


def test_sign_in_and_wrong_password(repos, audit, all_audit_text) -> None:  # type: ignore[no-untyped-def]
    repos.users.add("alice", "Alice", "radiologist", PASSWORD, "user:root", NOW)
    principal = repos.users.authenticate("Alice", PASSWORD, None, NOW, peer="10.0.0.7")
    assert principal == Principal("alice", "radiologist", "password")
    assert repos.users.authenticate("alice", PASSWORD + "!", None, NOW) == Refusal("bad_password")
    assert repos.users.get("alice").failed_logins == 1
    assert repos.users.get("alice").last_login_at == NOW
    logins = audit("auth.login")
    assert [(e["actor"], e["outcome"], e["detail"]) for e in logins] == [
        ("user:alice", "success", {"via": "password", "totp": False}),
        ("user:alice", "failure", {"reason": "bad_password"}),
    ]
    assert logins[0]["peer"] == "10.0.0.7"
    assert PASSWORD not in all_audit_text()


def test_lockout_after_five_failures_and_expiry(repos, audit) -> None:  # type: ignore[no-untyped-def]
    repos.users.add("alice", "Alice", "technologist", PASSWORD, "user:root", NOW)
    for n in range(4):
        assert repos.users.authenticate("alice", f"wrong-{n}", None, NOW) == Refusal("bad_password")
    locked_until = NOW + timedelta(minutes=15)
    assert repos.users.authenticate("alice", "wrong-4", None, NOW) == Refusal("bad_password", locked_until)
    assert repos.users.get("alice").locked(NOW + timedelta(minutes=1))
    # even the right password is refused while locked, and does not extend the lockout
    later = NOW + timedelta(minutes=14, seconds=59)
    assert repos.users.authenticate("alice", PASSWORD, None, later) == Refusal("locked", locked_until)
    assert repos.users.get("alice").locked_until == locked_until
    assert [e["detail"] for e in audit("auth.lockout")] == [{"failures": 5, "until": str(locked_until)}]
    # the lockout ends by itself
    assert isinstance(repos.users.authenticate("alice", PASSWORD, None, locked_until), Principal)
    row = repos.users.get("alice")
    assert (row.failed_logins, row.locked_until) == (0, None)
    reasons = [e["detail"]["reason"] for e in audit("auth.login") if e["outcome"] == "failure"]
    assert reasons == ["bad_password"] * 5 + ["locked"]


def test_configurable_lockout_and_unlock(ctx, fast_passwords, audit) -> None:  # type: ignore[no-untyped-def]
    users = Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, AuthPolicy(lockout_threshold=2, lockout_minutes=60),
                  fast_passwords)  # fmt: skip
    users.add("alice", "Alice", "technologist", PASSWORD, "user:root", NOW)
    users.authenticate("alice", "wrong", None, NOW)
    assert users.authenticate("alice", "wrong", None, NOW).locked_until == NOW + timedelta(minutes=60)
    assert users.authenticate("alice", PASSWORD, None, NOW + timedelta(minutes=59)).reason == "locked"
    users.unlock("alice", "user:root", NOW + timedelta(minutes=1))
    assert isinstance(users.authenticate("alice", PASSWORD, None, NOW + timedelta(minutes=2)), Principal)
    [unlocked] = audit("user.unlocked")
    assert unlocked["actor"] == "user:root" and unlocked["detail"]["failed_logins"] == 0


def test_unknown_disabled_and_service_users_cost_a_verify(repos, audit) -> None:  # type: ignore[no-untyped-def]
    calls = []
    real = repos.users.passwords.dummy_verify
    repos.users.passwords.dummy_verify = lambda pw: (calls.append(1), real(pw))
    repos.users.add("bob", "Bob", "radiologist", PASSWORD, "user:root", NOW)
    repos.users.add("pacs", "PACS bridge", "service", None, "user:root", NOW)
    assert repos.users.authenticate("nobody", PASSWORD, None, NOW) == Refusal("unknown_user")
    assert repos.users.authenticate("pacs", PASSWORD, None, NOW) == Refusal("no_password")
    repos.users.set_disabled("bob", True, "user:root", "left the hospital", NOW)
    assert repos.users.authenticate("bob", PASSWORD, None, NOW) == Refusal("disabled")
    assert len(calls) == 3
    assert repos.users.get("bob").failed_logins == 0  # refusals that are not guesses do not count
    actors = [(e["actor"], e["detail"]["reason"]) for e in audit("auth.login")]
    assert actors == [("anonymous", "unknown_user"), ("user:pacs", "no_password"), ("user:bob", "disabled")]
    repos.users.set_disabled("bob", False, "user:root", "came back", NOW)
    assert isinstance(repos.users.authenticate("bob", PASSWORD, None, NOW), Principal)
    assert [e["detail"]["reason"] for e in audit("user.disabled")] == ["left the hospital"]
    assert [(e["purpose"], e["detail"]["reason"]) for e in audit("user.enabled")] == [(None, "came back")]


def test_totp_required_for_admin(ctx, repos, audit, all_audit_text) -> None:  # type: ignore[no-untyped-def]
    repos.users.add("root.admin", "Admin", "admin", PASSWORD, "user:root", NOW)
    assert repos.users.authenticate("root.admin", PASSWORD, None, NOW) == Refusal("totp_not_enrolled")
    secret, uri = repos.users.enroll_totp("root.admin", "user:root", NOW)
    assert uri == f"otpauth://totp/radbridge:root.admin?secret={secret}&issuer=radbridge"
    code = pyotp.TOTP(secret).at(NOW)
    assert repos.users.authenticate("root.admin", PASSWORD, None, NOW) == Refusal("totp_required")
    assert repos.users.get("root.admin").failed_logins == 0  # a missing code is the form's second step
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert repos.users.authenticate("root.admin", PASSWORD, wrong, NOW) == Refusal("bad_totp")
    assert repos.users.authenticate("root.admin", PASSWORD, "12345", NOW) == Refusal("bad_totp")
    assert repos.users.get("root.admin").failed_logins == 2  # wrong codes are guesses
    assert repos.users.authenticate("root.admin", PASSWORD, code, NOW) == Principal("root.admin", "admin", "password")
    assert repos.users.authenticate("root.admin", PASSWORD, code, NOW) == Refusal("totp_replayed")
    # one step of clock drift either way, never two; an earlier step than the last used is a replay
    previous = pyotp.TOTP(secret).at(NOW - timedelta(seconds=30))
    assert repos.users.authenticate("root.admin", PASSWORD, previous, NOW) == Refusal("totp_replayed")
    ahead = pyotp.TOTP(secret).at(NOW + timedelta(seconds=30))
    assert isinstance(repos.users.authenticate("root.admin", PASSWORD, ahead, NOW), Principal)
    far = pyotp.TOTP(secret).at(NOW + timedelta(seconds=120))
    assert repos.users.authenticate("root.admin", PASSWORD, far, NOW) == Refusal("bad_totp")
    reasons = [e["detail"].get("reason") for e in audit("auth.login")]
    assert reasons == ["totp_not_enrolled", "totp_required", "bad_totp", "bad_totp", None, "totp_replayed",
                       "totp_replayed", None, "bad_totp"]  # fmt: skip
    assert secret not in all_audit_text() and code not in all_audit_text()


def test_totp_secret_is_sealed_and_reenrollment_shreds_the_old_key(ctx, repos) -> None:  # type: ignore[no-untyped-def]
    repos.users.add("carol", "Carol", "radiologist", PASSWORD, "user:root", NOW)
    first, _ = repos.users.enroll_totp("carol", "user:root", NOW)
    with ctx.db.connect() as conn:
        row = conn.execute(select(User).where(User.username == "carol")).first()
        assert first.encode() not in row.totp_sealed and row.totp_record is not None
        assert conn.execute(select(DataKeyRow).where(DataKeyRow.record_id == row.totp_record)).first() is not None
    # a user who enrolled needs the code even though the role does not require one
    assert repos.users.authenticate("carol", PASSWORD, None, NOW) == Refusal("totp_required")
    second, _ = repos.users.enroll_totp("carol", "user:root", NOW)
    assert second != first
    with ctx.db.connect() as conn:
        assert conn.execute(select(DataKeyRow).where(DataKeyRow.record_id == row.totp_record)).first() is None
    assert repos.users.authenticate("carol", PASSWORD, pyotp.TOTP(first).at(NOW), NOW) == Refusal("bad_totp")
    assert isinstance(repos.users.authenticate("carol", PASSWORD, pyotp.TOTP(second).at(NOW), NOW), Principal)


def test_totp_verify_window_and_replay() -> None:
    secret = totp.new_secret()
    assert len(secret) == 32
    step = totp.counter(NOW)
    assert totp.verify(secret, pyotp.TOTP(secret).at(NOW), NOW, None) == totp.TotpCheck("ok", step)
    assert totp.verify(secret, pyotp.TOTP(secret).at(NOW), NOW, step).outcome == "replayed"
    assert totp.verify(secret, pyotp.TOTP(secret).at(NOW), NOW, step - 1).ok
    assert totp.verify(secret, None, NOW, None).outcome == "wrong"
    assert totp.verify(secret, "abcdef", NOW, None).outcome == "wrong"


def test_password_rehashed_when_parameters_change(ctx, fast_passwords) -> None:  # type: ignore[no-untyped-def]
    old = Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, hasher=fast_passwords)
    old.add("dave", "Dave", "technologist", PASSWORD, "user:root", NOW)
    stronger = Passwords(PasswordHasher(time_cost=2, memory_cost=8192, parallelism=1))
    new = Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, hasher=stronger)
    assert new.authenticate("dave", "wrong-password", None, NOW) == Refusal("bad_password")
    with ctx.db.connect() as conn:
        assert ",t=1," in conn.execute(select(User.password_hash)).scalar()  # not on a failure
    assert isinstance(new.authenticate("dave", PASSWORD, None, NOW), Principal)
    with ctx.db.connect() as conn:
        rehashed = conn.execute(select(User.password_hash)).scalar()
    assert "$m=8192,t=2,p=1$" in rehashed and stronger.verify(rehashed, PASSWORD)


def test_role_and_password_changes_are_audited(repos, audit) -> None:  # type: ignore[no-untyped-def]
    repos.users.add("erin", "Erin", "technologist", PASSWORD, "user:root", NOW)
    repos.users.set_role("erin", "radiologist", "user:root", "finished residency", NOW)
    assert repos.users.get("erin").role == "radiologist" and repos.users.get("erin").version == 1
    [changed] = audit("user.role_changed")
    assert changed["detail"] == {"from": "technologist", "to": "radiologist", "reason": "finished residency"}
    with pytest.raises(PermanentError, match="service account"):
        repos.users.set_role("erin", "service", "user:root", "why not", NOW)
    with pytest.raises(PermanentError, match="unknown role"):
        repos.users.set_role("erin", "god", "user:root", "why not", NOW)
    with pytest.raises(LookupError):
        repos.users.set_role("nobody", "admin", "user:root", "x", NOW)
    with pytest.raises(PasswordRejected):
        repos.users.set_password("erin", "short", "user:root", NOW)
    repos.users.set_password("erin", "Another-Lantern-77", "user:root", NOW)
    assert repos.users.authenticate("erin", PASSWORD, None, NOW) == Refusal("bad_password")
    assert isinstance(repos.users.authenticate("erin", "Another-Lantern-77", None, NOW), Principal)
    assert [e["actor"] for e in audit("user.password_changed")] == ["user:root"]
