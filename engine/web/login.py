"""Sign-in, sign-out and the home redirect.

A refused sign-in says only "wrong username or password" whatever the reason (an attacker learns
nothing about which names exist); the audit entry keeps the real reason. A TOTP code is asked for
when the account needs one. The session cookie is HttpOnly, SameSite=Strict and, over TLS,
`__Host-` prefixed and Secure."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from engine.security.access import Principal, permissions
from engine.security.users import Refusal
from engine.web.auth import COOKIE_TLS, Forbidden, Need, cookie_name, peer, same_origin, site_of
from engine.web.pages import NAV, render

router = APIRouter()
SIGNED_IN = Need(None)
_ASK_TOTP = {
    "totp_required": "Enter the code from your authenticator app.",
    "bad_totp": "Wrong or expired code: enter the current one.",
    "totp_replayed": "That code was already used: wait for the next one.",
    "totp_not_enrolled": "Your role requires a TOTP code and none is enrolled: ask an administrator.",
}


def safe_next(value: str | None) -> str:
    """Only a path on this site (never //host or a scheme): no open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def set_session_cookie(request: Request, response: Response, session_id: str) -> None:
    site = site_of(request)
    max_age = site.sessions.policy.absolute_hours * 3600
    response.set_cookie(
        cookie_name(request), session_id, max_age=max_age, path="/", httponly=True, samesite="strict",
        secure=cookie_name(request) == COOKIE_TLS,
    )  # fmt: skip


def start_session(request: Request, who: Principal, next_path: str) -> Response:
    """After any successful sign-in (password or single sign-on): a session, its cookie, and on."""
    new = site_of(request).sessions.start(who, peer=peer(request))
    response = RedirectResponse(safe_next(next_path), status_code=303)
    set_session_cookie(request, response, new.session_id)
    return response


def _oidc_label(request: Request) -> str | None:
    oidc = site_of(request).ctx.project.engine.auth.oidc
    return oidc.label if oidc else None


@router.get("/login", include_in_schema=False)
def login_form(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", next=safe_next(next), username="", message=None,
                  oidc_label=_oidc_label(request))  # fmt: skip


@router.post("/login", include_in_schema=False)
def login(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    totp: Annotated[str, Form(max_length=8)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    if not same_origin(request):
        raise Forbidden("cross-origin sign-in refused")
    site = site_of(request)
    found = site.users.authenticate(username, password, totp.strip() or None, site.clock(), peer(request))
    if isinstance(found, Refusal):
        message = _ASK_TOTP.get(found.reason, "Wrong username or password.")
        return render(request, "login.html", status_code=401, next=safe_next(next), username=username.strip(),
                      message=message, oidc_label=_oidc_label(request))  # fmt: skip
    return start_session(request, found, next)


@router.post("/logout", include_in_schema=False)
def logout(request: Request, who: Principal = Depends(SIGNED_IN)) -> Response:
    site = site_of(request)
    session_id = request.cookies.get(cookie_name(request))
    if session_id:
        site.sessions.end(session_id, site.clock(), peer=peer(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(cookie_name(request), path="/", secure=cookie_name(request) == COOKIE_TLS,
                           httponly=True, samesite="strict")  # fmt: skip
    return response


@router.get("/", include_in_schema=False)
def home(request: Request, who: Principal = Depends(SIGNED_IN)) -> Response:
    """The first page the caller may see: radiologists land on the worklist, analysts on channels."""
    perms = permissions(who, site_of(request).clock())
    for path, _label, perm in NAV:
        if perm in perms:
            return RedirectResponse(path, status_code=303)
    return RedirectResponse("/me", status_code=303)
