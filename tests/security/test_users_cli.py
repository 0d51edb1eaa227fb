"""`radbridge users ...` and `radbridge break-glass` through typer's runner: every change audited, and
no hash, token digest or TOTP secret printed except the token and secret once, when they are made."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyotp
from sqlalchemy import select
from typer.testing import CliRunner

from engine.cli import app
from engine.core.clock import utcnow
from engine.runtime.context import open_context
from engine.store.tables import ApiToken, AuditRow, User
from tests import phi

PASSWORD = "Vessel-Lantern-42"
runner = CliRunner()


def cli(root: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> str:
    result = runner.invoke(app, [*args, "--root", str(root)], env=env, input=input)
    assert result.exit_code == 0, (args, result.output)
    return result.output


def fails(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = runner.invoke(app, [*args, "--root", str(root)], env=env)
    assert result.exit_code == 1, (args, result.output)
    return result.output


def actions(root: Path) -> list[tuple[str, str, str]]:
    ctx = open_context(root)
    try:
        with ctx.db.connect() as conn:
            return [(r.action, r.actor, r.outcome) for r in conn.execute(select(AuditRow).order_by(AuditRow.seq))]
    finally:
        ctx.close()


def stored(root: Path) -> tuple[list[dict], list[dict]]:
    ctx = open_context(root)
    try:
        with ctx.db.connect() as conn:
            users = [r._asdict() for r in conn.execute(select(User)).all()]
            tokens = [r._asdict() for r in conn.execute(select(ApiToken)).all()]
        return users, tokens
    finally:
        ctx.close()


def test_user_lifecycle(project: Path) -> None:
    env = {"NEW_PW": PASSWORD}
    assert "added alice (radiologist)" in cli(project, "users", "add", "alice", "--role", "radiologist",
                                              "--display-name", "Alice Reader", "--password-env", "NEW_PW", env=env)
    # prompted, with confirmation, when no variable is named
    out = cli(project, "users", "add", "root.admin", "--role", "admin", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert "added root.admin (admin)" in out and "totp-enroll root.admin" in out
    weak = fails(project, "users", "add", "bob", "--role", "technologist", "--password-env", "WEAK",
                 env={"WEAK": "password1"})  # fmt: skip
    assert "password rejected" in weak and "password1" not in weak
    assert "unknown role" in fails(project, "users", "add", "bob", "--role", "root")
    assert "NOPE" in fails(project, "users", "add", "bob", "--role", "technologist", "--password-env", "NOPE")
    cli(project, "users", "set-role", "alice", "technologist", "--reason", "reassigned")
    cli(project, "users", "disable", "alice", "--reason", "on leave")
    cli(project, "users", "enable", "alice", "--reason", "back")
    cli(project, "users", "unlock", "alice")
    cli(project, "users", "set-password", "alice", "--password-env", "NEW_PW2", env={"NEW_PW2": "Another-Lantern-77"})
    assert "no such user" in fails(project, "users", "disable", "ghost", "--reason", "x")
    listing = cli(project, "users", "list").splitlines()
    assert listing[0].startswith("alice technologist totp=no locked=no disabled=no last_login=- name=Alice Reader")
    assert listing[1].startswith("root.admin admin totp=no")
    users, _ = stored(project)
    hashes = [u["password_hash"] for u in users]
    assert all(h.startswith("$argon2id$") for h in hashes)
    assert not any(h in "\n".join(listing) or h[-20:] in "\n".join(listing) for h in hashes)
    assert [a for a, _, _ in actions(project) if a.startswith("user.")] == [
        "user.created", "user.created", "user.role_changed", "user.disabled", "user.enabled", "user.unlocked",
        "user.password_changed",
    ]  # fmt: skip
    assert all(actor.startswith("user:") for a, actor, _ in actions(project) if a.startswith("user."))


def test_totp_enrollment_prints_the_secret_once(project: Path) -> None:
    cli(project, "users", "add", "root.admin", "--role", "admin", "--password-env", "PW", env={"PW": PASSWORD})
    out = cli(project, "users", "totp-enroll", "root.admin")
    secret = re.search(r"secret: ([A-Z2-7]{32})", out).group(1)  # type: ignore[union-attr]
    assert f"otpauth://totp/radbridge:root.admin?secret={secret}&issuer=radbridge" in out
    assert "shown once" in out
    assert "root.admin admin totp=yes" in cli(project, "users", "list")
    assert secret not in cli(project, "users", "list")
    users, _ = stored(project)
    assert secret not in json.dumps(users, default=lambda v: v.hex() if isinstance(v, bytes) else str(v))
    assert secret.encode() not in users[0]["totp_sealed"]
    # the secret works for the sign-in the admin role requires
    from engine.store.users import Users

    ctx = open_context(project)
    try:
        repo = Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event)
        now = utcnow()
        assert repo.authenticate("root.admin", PASSWORD, pyotp.TOTP(secret).at(now), now).role == "admin"
    finally:
        ctx.close()


def test_tokens_printed_once_listed_without_secret_and_revoked(project: Path) -> None:
    cli(project, "users", "add", "pacs", "--role", "service", "--display-name", "PACS bridge")
    out = cli(project, "users", "token", "create", "pacs", "--scope", "studies.view", "--scope", "jobs.view",
              "--expires-days", "30", "--label", "pacs-east")  # fmt: skip
    token = re.search(r"^(rb_[0-9a-f]{16}_\S{43})$", out, re.M).group(1)  # type: ignore[union-attr]
    token_id, secret = token.split("_", 2)[1:]
    assert f"token {token_id} for pacs" in out
    bad = fails(project, "users", "token", "create", "pacs", "--scope", "users.manage")
    assert "not allowed for role service: users.manage" in bad
    listing = cli(project, "users", "token", "list")
    assert listing.startswith(f"{token_id} pacs active scopes=jobs.view,studies.view expires=")
    assert "label=pacs-east" in listing
    _, tokens = stored(project)
    assert secret not in listing and tokens[0]["digest"] not in listing and secret not in json.dumps(tokens,
                                                                                                     default=str)
    assert cli(project, "users", "token", "list", "--user", "nobody") == ""
    cli(project, "users", "token", "revoke", token_id, "--reason", "rotated")
    assert f"{token_id} pacs revoked" in cli(project, "users", "token", "list")
    assert "already revoked" in fails(project, "users", "token", "revoke", token_id, "--reason", "again")
    assert [a for a, _, _ in actions(project) if a.startswith("token.")] == ["token.created", "token.revoked"]


def test_break_glass_command_and_grants_listing(project: Path) -> None:
    cli(project, "users", "add", "tina", "--role", "technologist", "--password-env", "PW", env={"PW": PASSWORD})
    secret = re.search(r"secret: (\S+)", cli(project, "users", "totp-enroll", "tina")).group(1)  # type: ignore[union-attr]
    reason = f"ED trauma, match CT for {phi.NAME_FAMILY}"
    refused = fails(project, "break-glass", "--user", "tina", "--reason", "help", "--minutes", "10", "--totp", "1")
    assert "stated reason" in refused
    out = cli(project, "break-glass", "--user", "tina", "--reason", reason, "--minutes", "10",
              "--totp", pyotp.TOTP(secret).now())  # fmt: skip
    grant_id = re.search(r"break-glass grant (\S+) for tina until", out).group(1)  # type: ignore[union-attr]
    listing = cli(project, "users", "grants", "--in-force")
    assert listing.startswith(f"{grant_id} tina IN-FORCE granted=") and "minutes=10" in listing
    assert "reviewed=NO" in listing and phi.NAME_FAMILY not in listing
    revealed = cli(project, "users", "grants", "--reasons")
    assert f"  reason: {reason}" in revealed
    cli(project, "users", "review", grant_id, "--note", "checked with the ED")
    assert cli(project, "users", "grants", "--unreviewed") == ""
    assert "reviewed=user:" in cli(project, "users", "grants")
    done = [(a, o) for a, _, o in actions(project) if a.startswith("auth.break_glass")]
    assert done == [("auth.break_glass", "denied"), ("auth.break_glass", "success"),
                    ("auth.break_glass_listed", "success"), ("auth.break_glass_review", "success")]  # fmt: skip


def test_help() -> None:
    for args in (["users"], ["users", "token"], ["break-glass"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
