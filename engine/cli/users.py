"""`radbridge users` and `radbridge break-glass`: local accounts, roles, TOTP, API tokens, break-glass grants.

Output never carries a password hash, a token digest or a TOTP secret; a new token and a new TOTP
secret are printed once, at creation, and cannot be shown again. Break-glass reasons are free text that
may name a patient: listed only with --reasons, and that listing is audited. Every change is audited
with the operating-system user running the command as the actor.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from engine.cli.common import ROOT, actor, app, context, fail, guard

users_app = typer.Typer(help="Users, roles, TOTP, API tokens and break-glass review.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(users_app, name="users")
users_app.add_typer(token_app, name="token")
REASON = typer.Option(..., "--reason", help="Why: recorded with who in the audit entry.")
PASSWORD_ENV = typer.Option(None, "--password-env", help="Read the password from this environment variable.")


def _repos(ctx: Any) -> dict[str, Any]:
    from engine.store.breakglass import BreakGlass
    from engine.store.credentials import Tokens
    from engine.store.users import Users

    policy = ctx.project.engine.auth  # the site's lockout, TOTP, password and token rules
    users = Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, policy)
    return {"users": users, "tokens": Tokens(ctx.db, ctx.writer, ctx.audit.event, policy),
            "grants": BreakGlass(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, users)}  # fmt: skip


def _run(root: Path, name: str, action: Any) -> Any:
    """Open the store, run `action` on one repository with one-line errors, close."""
    ctx = context(root)
    try:
        return guard(lambda: action(_repos(ctx)[name]))
    finally:
        ctx.close()


def _password(env: str | None) -> str:
    if env:
        value = os.environ.get(env)
        if not value:
            fail(f"environment variable {env} holding the password is not set")
        return value
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


def _when(ts: datetime | None) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else "-"


@users_app.command("add")
def users_add(
    username: str, role: str = typer.Option(..., help="admin, integration_analyst, radiologist, technologist, "
                                                      "auditor or service."),
    display_name: str = typer.Option("", "--display-name", help="Shown in the web pages; the username if empty."),
    password_env: str | None = PASSWORD_ENV, root: Path = ROOT,
) -> None:  # fmt: skip
    """Add a user. Prompts for the password (checked against the policy); service accounts have none."""
    from engine.security.users import check_role, check_username

    guard(lambda: (check_username(username), check_role(role)))  # before asking for a password
    password = None if role == "service" else _password(password_env)
    row = _run(root, "users", lambda u: u.add(username, display_name, role, password, actor()))
    typer.echo(f"added {row.username} ({row.role})")
    if role == "admin":
        typer.echo(f"{row.role} signs in with a TOTP code: run `radbridge users totp-enroll {row.username}`")


@users_app.command("list")
def users_list(root: Path = ROOT) -> None:
    """Every user: role, TOTP enrolled, locked, disabled, last sign-in (never a hash or secret)."""
    now = datetime.now(UTC)
    for r in _run(root, "users", lambda u: u.all()):
        typer.echo(f"{r.username} {r.role} totp={'yes' if r.totp_enrolled else 'no'} "
                   f"locked={'until ' + _when(r.locked_until) if r.locked(now) else 'no'} "
                   f"disabled={'yes' if r.disabled else 'no'} last_login={_when(r.last_login_at)} "
                   f"name={r.display_name}")  # fmt: skip


@users_app.command("set-role")
def users_set_role(username: str, role: str, reason: str = REASON, root: Path = ROOT) -> None:
    """Change a user's role (audited with the roles before and after)."""
    _run(root, "users", lambda u: u.set_role(username, role, actor(), reason))
    typer.echo(f"{username} is now {role}")


@users_app.command("set-password")
def users_set_password(username: str, password_env: str | None = PASSWORD_ENV, root: Path = ROOT) -> None:
    """Set a new password (checked against the policy)."""
    password = _password(password_env)
    _run(root, "users", lambda u: u.set_password(username, password, actor()))
    typer.echo(f"password changed for {username}")


@users_app.command("disable")
def users_disable(username: str, reason: str = REASON, root: Path = ROOT) -> None:
    """Disable a user: sign-in, sessions and the user's tokens stop working at once."""
    _run(root, "users", lambda u: u.set_disabled(username, True, actor(), reason))
    typer.echo(f"{username} disabled")


@users_app.command("enable")
def users_enable(username: str, reason: str = REASON, root: Path = ROOT) -> None:
    """Enable a disabled user again."""
    _run(root, "users", lambda u: u.set_disabled(username, False, actor(), reason))
    typer.echo(f"{username} enabled")


@users_app.command("unlock")
def users_unlock(username: str, root: Path = ROOT) -> None:
    """End a lockout before it expires and reset the failure count."""
    _run(root, "users", lambda u: u.unlock(username, actor()))
    typer.echo(f"{username} unlocked")


@users_app.command("totp-enroll")
def users_totp_enroll(username: str, root: Path = ROOT) -> None:
    """Give a user a new TOTP secret (replacing any old one). Shown once: add it to an authenticator app."""
    secret, uri = _run(root, "users", lambda u: u.enroll_totp(username, actor()))
    typer.echo(f"TOTP secret for {username} (shown once; it cannot be shown again):")
    typer.echo(f"  secret: {secret}")
    typer.echo(f"  uri:    {uri}")


@token_app.command("create")
def token_create(
    username: str,
    scope: list[str] = typer.Option(..., "--scope", help="A permission the token carries (repeat for more)."),
    expires_days: int = typer.Option(90, "--expires-days", help="Lifetime in days."),
    label: str = typer.Option("", help="What the token is for (e.g. the calling system)."),
    root: Path = ROOT,
) -> None:
    """Create an API token for a user, scoped within the user's role. Printed once; stored hashed."""
    issued = _run(root, "tokens", lambda t: t.create(username, scope, expires_days, label or username, actor()))
    typer.echo(f"token {issued.token_id} for {username}, expires {_when(issued.expires_at)} (shown once):")
    typer.echo(issued.token)


@token_app.command("list")
def token_list(user: str | None = typer.Option(None, "--user", help="Only this user's tokens."),
               root: Path = ROOT) -> None:  # fmt: skip
    """Tokens: id, owner, state, scopes, expiry, last use (never the token or its digest)."""
    now = datetime.now(UTC)
    for t in _run(root, "tokens", lambda repo: repo.list(user)):
        typer.echo(f"{t.id} {t.username} {t.state(now)} scopes={','.join(t.scopes)} expires={_when(t.expires_at)} "
                   f"last_used={_when(t.last_used_at)} label={t.label}")  # fmt: skip


@token_app.command("revoke")
def token_revoke(token_id: str, reason: str = REASON, root: Path = ROOT) -> None:
    """Revoke a token: refused from its next use on."""
    _run(root, "tokens", lambda t: t.revoke(token_id, actor(), reason))
    typer.echo(f"token {token_id} revoked")


@users_app.command("grants")
def users_grants(
    in_force: bool = typer.Option(False, "--in-force", help="Only grants in force now."),
    unreviewed: bool = typer.Option(False, "--unreviewed", help="Only grants nobody has reviewed yet."),
    reasons: bool = typer.Option(False, "--reasons", help="Show the stated reasons and review notes (audited)."),
    root: Path = ROOT,
) -> None:
    """Break-glass grants, newest first: who, when, how long, in force or expired, reviewed by whom."""
    now = datetime.now(UTC)
    ctx = context(root)
    try:
        grants = guard(lambda: _repos(ctx)["grants"].list(now, in_force=in_force, unreviewed=unreviewed))
        if reasons and grants:
            ctx.audit.record("auth.break_glass_listed", actor=actor(), record_ids=[g.id for g in grants])
    finally:
        ctx.close()
    for g in grants:
        state = "IN-FORCE" if g.in_force(now) else "ended" if g.ended_at else "expired"
        typer.echo(f"{g.id} {g.username} {state} granted={_when(g.granted_at)} minutes={g.minutes} "
                   f"expires={_when(g.expires_at)} reviewed={g.reviewed_by or 'NO'}")  # fmt: skip
        if reasons:
            typer.echo(f"  reason: {g.reason}")
            if g.review_note:
                typer.echo(f"  review: {g.review_note}")


@users_app.command("review")
def users_review(grant_id: str, note: str = typer.Option(..., "--note", help="What the review found."),
                 root: Path = ROOT) -> None:  # fmt: skip
    """Record the review of a break-glass grant (by someone other than its holder)."""
    _run(root, "grants", lambda g: g.review(grant_id, actor(), note))
    typer.echo(f"grant {grant_id} reviewed")


@app.command("break-glass")
def break_glass(
    user: str = typer.Option(..., "--user", help="Who elevates."),
    reason: str = typer.Option(..., "--reason", help="Why (kept sealed; shown to reviewers)."),
    minutes: int = typer.Option(30, "--minutes", help="How long, 1 to 60 minutes."),
    totp_code: str | None = typer.Option(None, "--totp", help="The user's current TOTP code (prompted if absent)."),
    root: Path = ROOT,
) -> None:
    """Elevate a user to reveal PHI for a fixed time, with a stated reason and a fresh TOTP code.
    Audited, shown on the dashboard and in the compliance report; expires by itself."""
    code = totp_code or str(typer.prompt("TOTP code"))
    grant = _run(root, "grants", lambda g: g.grant(user, reason, minutes, code))
    typer.echo(f"break-glass grant {grant.id} for {grant.username} until {_when(grant.expires_at)}")
