"""The caller's own account: what they may do, their password, their authenticator app (TOTP), and
break-glass (ask for it, end it early).

Break-glass needs a stated reason, a TOTP code and a duration of at most 60 minutes; the grant is
audited and expires by itself (every permission check looks at its end time).

People set up or replace their own TOTP authenticator in two steps, so nobody else ever sees the
secret. POST /me/totp/start re-authenticates (the password, and the current code when one is
enrolled; wrong ones count toward the lockout) and shows a new secret, not yet active and not stored:
the confirm form carries it sealed (AES-GCM, engine/security/vault.py `seal_state`) under a key of its
own, bound to this user and this session, for 10 minutes. POST /me/totp/confirm opens it and, given a
code the new authenticator makes, makes it the active secret (engine/store/users.py). The secret and
the codes are never logged, and the pages showing the secret are not cached."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from engine.core.errors import PermanentError
from engine.security import totp
from engine.security.access import PERMISSIONS, AccessDenied, Principal, permissions
from engine.security.sessions import hash_id
from engine.security.users import Refusal
from engine.security.vault import StateRefused, open_state, seal_state
from engine.store.users import PendingTotp
from engine.web.auth import Need, cookie_name, peer, site_of
from engine.web.pages import render

router = APIRouter()
SIGNED_IN = Need(None)
PENDING_SECONDS = 600  # how long a new secret may wait for its confirming code
_PENDING_KEY = "web:totp-pending"  # the keyring-derived key that seals it (its own: not OIDC's)

# Why a start was refused, for the person (the audit keeps the reason code).
_NOT_STARTED = {
    "bad_password": "Not started: the current password is wrong.",
    "locked": "Not started: your account is locked for now.",
    "totp_required": "Enter the code your current authenticator app shows, with your password.",
    "bad_totp": "Not started: wrong or expired code from your current authenticator app.",
    "totp_replayed": "Not started: that code was already used; wait for the next one.",
}
_START_AGAIN = ("That setup is no longer valid (it expired, was started in another session, or your account "
               "changed since): start again.")  # fmt: skip


def _me(request: Request, who: Principal, message: str | None = None, status_code: int = 200,
        changed: bool = False, pending: dict[str, str] | None = None, totp_done: bool = False) -> Response:  # fmt: skip
    site = site_of(request)
    grant = site.grants.active(who.username, site.clock()) if who.via == "session" else None
    mine = sorted(permissions(who, site.clock()))
    row = site.users.get(who.username) if who.via == "session" else None
    response = render(request, "me.html", status_code=status_code, grant=grant, message=message, changed=changed,
                      mine=[(p, PERMISSIONS[p]) for p in mine], totp_enrolled=row is not None and row.totp_enrolled,
                      pending=pending, totp_done=totp_done)  # fmt: skip
    if pending is not None:
        response.headers["Cache-Control"] = "no-store"  # the page shows a secret
    return response


def _pending_aad(request: Request, who: Principal) -> bytes:
    """What a pending secret is bound to: this user and this session (its id's hash, as stored)."""
    session = hash_id(request.cookies.get(cookie_name(request)) or "")
    return f"radbridge/totp-pending/v1|{who.username}|{session}".encode()


def _seal_pending(request: Request, who: Principal, pending: PendingTotp) -> str:
    site = site_of(request)
    payload = {"secret": pending.secret, "version": pending.version,
               "exp": site.clock().timestamp() + PENDING_SECONDS}  # fmt: skip
    return seal_state(site.ctx.keyring.derived_key(_PENDING_KEY), payload, _pending_aad(request, who))


def _open_pending(request: Request, who: Principal, sealed: str) -> PendingTotp:
    """The pending secret, or StateRefused: missing, forged (or another user's or session's), expired."""
    site = site_of(request)
    key = site.ctx.keyring.derived_key(_PENDING_KEY)
    payload = open_state(key, sealed, _pending_aad(request, who), site.clock().timestamp())
    secret, version = payload.get("secret"), payload.get("version")
    if not isinstance(secret, str) or not isinstance(version, int):
        raise StateRefused("forged")
    return PendingTotp(secret, version)


def _people_only(request: Request, who: Principal) -> Response | None:
    """A second factor is a person's: tokens (and service accounts, which never hold a session) get 403."""
    if who.via != "session" or who.role == "service":
        return _me(request, who, "Tokens have no second factor.", 403)
    return None


def _pending_page(who: Principal, pending: PendingTotp, sealed: str) -> dict[str, str]:
    return {"secret": pending.secret, "uri": totp.provisioning_uri(pending.secret, who.username), "sealed": sealed}


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


@router.post("/me/totp/start", include_in_schema=False)
def start_totp(
    request: Request,
    current: Annotated[str, Form(max_length=1024)],
    code: Annotated[str, Form(max_length=8)] = "",
    who: Principal = Depends(SIGNED_IN),
) -> Response:
    """Re-authenticate, then show a new secret and its otpauth:// URI with the form that confirms it."""
    site = site_of(request)
    if (refused := _people_only(request, who)) is not None:
        return refused
    found = site.users.start_own_totp(who.username, current, code.strip() or None, site.clock(), peer(request))
    if isinstance(found, Refusal):
        return _me(request, who, _NOT_STARTED.get(found.reason, "Not started."), 403)
    return _me(request, who, pending=_pending_page(who, found, _seal_pending(request, who, found)))


@router.post("/me/totp/confirm", include_in_schema=False)
def confirm_totp(
    request: Request,
    pending: Annotated[str, Form(max_length=4096)],
    code: Annotated[str, Form(max_length=8)] = "",
    who: Principal = Depends(SIGNED_IN),
) -> Response:
    """Given a code from the new authenticator, make its secret the active one (the old one stops working)."""
    site = site_of(request)
    if (refused := _people_only(request, who)) is not None:
        return refused
    try:
        opened = _open_pending(request, who, pending)
    except StateRefused as exc:
        site.ctx.audit.record("auth.totp_enrol", actor=who.actor, outcome="denied", peer=peer(request),
                              record_ids=[f"user:{who.username}"],
                              detail={"reason": f"pending_{exc.reason}", "step": "confirm"})  # fmt: skip
        return _me(request, who, _START_AGAIN, 400)
    refusal = site.users.confirm_own_totp(who.username, opened, code.strip() or None, site.clock(), peer(request))
    if refusal is not None and refusal.reason == "bad_totp":
        message = "Not confirmed: wrong code. Enter the code your new authenticator app shows now."
        return _me(request, who, message, 422, pending=_pending_page(who, opened, pending))
    if refusal is not None:
        return _me(request, who, _START_AGAIN, 409)
    return _me(request, who, totp_done=True)


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
