"""Evidence for §164.312(a)(1) and (d): who can sign in, with which role, whether the roles that
need it use a second factor, and every break-glass elevation with its review."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from engine.compliance.evidence import Evidence, Item
from engine.security.access import ROLES
from engine.store.tables import BreakGlassGrant, User

_users, _grants = User.__table__, BreakGlassGrant.__table__
REVIEW_WITHIN = timedelta(days=7)  # an ended elevation not reviewed by then needs attention


def users_and_authentication(ev: Evidence) -> Item:
    title, cite = "Users per role, second factor, lockout", "§164.312(a)(2)(i), §164.312(d)"
    policy = ev.ctx.project.engine.auth  # the site's configured rules, not the defaults
    with ev.ctx.db.connect() as conn:
        rows = conn.execute(select(_users.c.role, _users.c.disabled, _users.c.totp_sealed.is_not(None).label("totp"),
                                   _users.c.password_hash.is_not(None).label("pw"))).all()  # fmt: skip
    active = [r for r in rows if not r.disabled]
    per_role = {role: sum(1 for r in active if r.role == role) for role in ROLES}
    details: dict[str, Any] = {
        "users_per_role": per_role, "disabled": len(rows) - len(active),
        "lockout": f"{policy.lockout_threshold} failures, {policy.lockout_minutes} min",
        "totp_required_for": sorted(policy.totp_roles),
    }  # fmt: skip
    missing = [r for r in active if r.role in policy.totp_roles and not r.totp]
    if missing:
        why = f"{len(missing)} active user(s) of a role that requires TOTP have not enrolled it"
        return Item("users-authentication", "authentication", cite, title, "fail", why, details)
    if not active:
        return Item("users-authentication", "authentication", cite, title, "attention", "no users yet", details)
    why = (f"{len(active)} active user(s); TOTP enrolled for every {', '.join(sorted(policy.totp_roles))}; "
           f"lockout after {policy.lockout_threshold} failures")  # fmt: skip
    return Item("users-authentication", "authentication", cite, title, "pass", why, details)


def break_glass(ev: Evidence) -> Item:
    title, cite = "Break-glass elevations and their review", "§164.312(a)(2)(ii)"
    with ev.ctx.db.connect() as conn:
        rows = conn.execute(select(_grants.c.granted_at, _grants.c.expires_at, _grants.c.ended_at,
                                   _grants.c.reviewed_at)).all()  # fmt: skip
    now = ev.now.replace(tzinfo=None) if rows and rows[0].expires_at.tzinfo is None else ev.now
    in_force = [r for r in rows if r.expires_at > now and r.ended_at is None]
    overdue = [r for r in rows if r.reviewed_at is None and (r.ended_at or r.expires_at) + REVIEW_WITHIN < now]
    details = {"grants": len(rows), "in_force": len(in_force), "unreviewed": sum(1 for r in rows if not r.reviewed_at),
               "review_overdue": len(overdue)}  # fmt: skip
    if overdue:
        why = f"{len(overdue)} ended elevation(s) not reviewed within {REVIEW_WITHIN.days} days"
        return Item("break-glass", "access", cite, title, "attention", why, details)
    why = f"{len(rows)} elevation(s), {len(in_force)} in force; every ended one reviewed in time"
    return Item("break-glass", "access", cite, title, "pass", why, details)
