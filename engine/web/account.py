"""The caller's own account: what they may do, their password, and break-glass (ask for it, end it early).

Break-glass needs a stated reason, a TOTP code and a duration of at most 60 minutes; the grant is
audited and expires by itself (every permission check looks at its end time)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from engine.core.errors import PermanentError
from engine.security.access import PERMISSIONS, AccessDenied, Principal, permissions
from engine.web.auth import Need, peer, site_of
from engine.web.pages import render

router = APIRouter()
SIGNED_IN = Need(None)


def _me(request: Request, who: Principal, message: str | None = None, status_code: int = 200,
        changed: bool = False) -> Response:  # fmt: skip
    site = site_of(request)
    grant = site.grants.active(who.username, site.clock()) if who.via == "session" else None
    mine = sorted(permissions(who, site.clock()))
    return render(request, "me.html", status_code=status_code, grant=grant, message=message, changed=changed,
                  mine=[(p, PERMISSIONS[p]) for p in mine])  # fmt: skip


@router.get("/me", include_in_schema=False)
def me(request: Request, who: Principal = Depends(SIGNED_IN)) -> Response:
    return _me(request, who)


@router.get("/api/session", tags=["session"])
def session_info(request: Request, who: Principal = Depends(SIGNED_IN)) -> dict[str, Any]:
    """Who is signed in, what they may do now, and the CSRF token for changes made with this session."""
    site = site_of(request)
    return {
        "username": who.username,
        "role": who.role,
        "via": who.via,
        "permissions": sorted(permissions(who, site.clock())),
        "break_glass_until": who.break_glass_until.isoformat() if who.elevated(site.clock()) else None,
        "csrf_token": getattr(request.state, "csrf_token", None),
    }


@router.post("/me/password", include_in_schema=False)
def change_password(
    request: Request,
    current: Annotated[str, Form(max_length=1024)],
    new: Annotated[str, Form(max_length=1024)],
    who: Principal = Depends(SIGNED_IN),
) -> Response:
    site = site_of(request)
    if who.via != "session":
        return _me(request, who, "Tokens have no password.", 403)
    try:
        refused = site.users.change_own_password(who.username, current, new, site.clock(), peer(request))
    except PermanentError as exc:  # the policy: names the problem, never the password
        return _me(request, who, f"Not changed: {exc}.", 422)
    if refused is not None:
        return _me(request, who, "Not changed: the current password is wrong.", 403)
    return _me(request, who, None, 200, changed=True)


@router.post("/break-glass", include_in_schema=False)
def break_glass(
    request: Request,
    reason: Annotated[str, Form(max_length=500)],
    minutes: Annotated[int, Form()],
    totp: Annotated[str, Form(max_length=8)] = "",
    who: Principal = Depends(SIGNED_IN),
) -> Response:
    site = site_of(request)
    if who.via != "session":
        return _me(request, who, "Break-glass is for people signed in, not tokens.", 403)
    try:
        site.grants.grant(who.username, reason, minutes, totp.strip() or None, site.clock(), peer(request))
    except AccessDenied as exc:
        return _me(request, who, f"Break-glass refused: {exc.reason.replace('_', ' ')}.", 403)
    return RedirectResponse("/me", status_code=303)


@router.post("/break-glass/end", include_in_schema=False)
def end_break_glass(request: Request, who: Principal = Depends(SIGNED_IN)) -> Response:
    site = site_of(request)
    grant = site.grants.active(who.username, site.clock())
    if grant is not None:
        site.grants.end(grant.id, who.actor, site.clock())
    return RedirectResponse("/me", status_code=303)
