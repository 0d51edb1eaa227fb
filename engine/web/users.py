"""Users, roles and API tokens in the browser and the API (the web side of `radbridge users`).

Everything goes through engine/store/users.py and credentials.py, which audit each change with who
made it and why. Reads never carry a password hash, a TOTP secret or a token digest; a new token is
in the one response that creates it and never again. A password the policy refuses gets 422 with the
policy's problems, never the password. Administrators may not disable themselves or change their own
role: an engine with no administrator left needs the command line to recover.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from engine.core.errors import PermanentError
from engine.security.access import MATRIX, PERMISSIONS, ROLES, Principal
from engine.store.credentials import TokenRow
from engine.store.session_counts import active_sessions
from engine.store.users import UserRow
from engine.store.writer import StaleWrite
from engine.web.auth import Need, site_of
from engine.web.pages import render

router = APIRouter()
VIEW, MANAGE = Need("users.view"), Need("users.manage")


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(max_length=64)
    display_name: str = Field("", max_length=200)
    role: str = Field(max_length=32)
    password: str | None = Field(None, max_length=1024, description="Required for every role but service.")


class RoleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(max_length=32)
    reason: str = Field(min_length=1, max_length=500, description="Why: recorded in the audit entry.")


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500, description="Why: recorded in the audit entry.")


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scopes: list[str] = Field(min_length=1, max_length=len(PERMISSIONS))
    expires_days: int = Field(90, ge=1, le=3650)
    label: str = Field("", max_length=120)


class NewPassword(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=1, max_length=1024, description="checked against the password policy")


class Refused(Exception):
    """A change the store (or this module) refused: HTTP status and a message naming no secret."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def attempt(change: Callable[[], Any]) -> Any:
    """Run a store change, turning its refusals into Refused (404, 409 or 422)."""
    try:
        return change()
    except LookupError as exc:
        raise Refused(404, str(exc) or "not found") from None
    except StaleWrite:
        raise Refused(409, "it was changed meanwhile: reload and try again") from None
    except PermanentError as exc:  # policy problems (PasswordRejected lists codes, never the password)
        raise Refused(409 if "taken" in str(exc) else 422, str(exc)) from None


def _not_self(who: Principal, username: str, what: str) -> None:
    if username.strip().lower() == who.username:
        raise Refused(422, f"you may not {what} your own account: ask another administrator")


def _user(u: UserRow, now: datetime, tokens: int, sessions: int) -> dict[str, Any]:
    return {"username": u.username, "display_name": u.display_name, "role": u.role, "disabled": u.disabled,
            "locked": u.locked(now), "locked_until": u.locked_until if u.locked(now) else None,
            "totp_enrolled": u.totp_enrolled, "has_password": u.has_password, "last_login_at": u.last_login_at,
            "created_at": u.created_at, "changed_at": u.changed_at, "changed_by": u.changed_by,
            "tokens": tokens, "sessions_active": sessions}  # fmt: skip


def _token(t: TokenRow, now: datetime) -> dict[str, Any]:
    return {"id": t.id, "username": t.username, "label": t.label, "scopes": t.scopes, "created_at": t.created_at,
            "created_by": t.created_by, "expires_at": t.expires_at, "last_used_at": t.last_used_at,
            "revoked_at": t.revoked_at, "state": t.state(now)}  # fmt: skip


def list_users(request: Request) -> list[dict[str, Any]]:
    site = site_of(request)
    now = site.clock()
    tokens: dict[str, int] = {}
    for t in site.tokens.list():
        if t.state(now) == "active":
            tokens[t.username] = tokens.get(t.username, 0) + 1
    sessions = active_sessions(site.ctx.db, now, site.sessions.policy)
    return [_user(u, now, tokens.get(u.username, 0), sessions.get(u.username, 0)) for u in site.users.all()]


def one_user(request: Request, username: str) -> dict[str, Any]:
    site = site_of(request)
    now = site.clock()
    found = site.users.get(username)
    if found is None:
        raise Refused(404, "no such user")
    tokens = [_token(t, now) for t in site.tokens.list(found.username)]
    sessions = active_sessions(site.ctx.db, now, site.sessions.policy, found.username).get(found.username, 0)
    shown = _user(found, now, sum(1 for t in tokens if t["state"] == "active"), sessions)
    grant = site.grants.active(found.username, now)
    shown["break_glass"] = {"id": grant.id, "until": grant.expires_at} if grant else None
    shown["token_list"] = tokens
    return shown


# -- the changes, shared by the API and the forms ------------------------------------------------


def add_user(request: Request, who: Principal, body: NewUser) -> dict[str, Any]:
    site = site_of(request)
    password = body.password or None
    attempt(lambda: site.users.add(body.username, body.display_name, body.role, password, who.actor, site.clock()))
    return one_user(request, body.username)


def change_role(request: Request, who: Principal, username: str, body: RoleChange) -> None:
    site = site_of(request)
    _not_self(who, username, "change the role of")
    attempt(lambda: site.users.set_role(username, body.role, who.actor, body.reason, site.clock()))


def set_disabled(request: Request, who: Principal, username: str, disabled: bool, reason: str) -> None:
    site = site_of(request)
    if disabled:
        _not_self(who, username, "disable")
    attempt(lambda: site.users.set_disabled(username, disabled, who.actor, reason, site.clock()))


def unlock(request: Request, who: Principal, username: str) -> None:
    site = site_of(request)
    attempt(lambda: site.users.unlock(username, who.actor, site.clock()))


def issue_token(request: Request, who: Principal, username: str, body: NewToken) -> dict[str, Any]:
    site = site_of(request)
    issued = attempt(lambda: site.tokens.create(username, body.scopes, body.expires_days,
                                                body.label or username, who.actor, site.clock()))  # fmt: skip
    return {"token_id": issued.token_id, "token": issued.token, "expires_at": issued.expires_at,
            "note": "shown once: store it now, it cannot be shown again"}  # fmt: skip


def reset_password(request: Request, who: Principal, username: str, password: str) -> None:
    """An administrator sets a user's password (the policy applies; audited user.password_changed)."""
    site = site_of(request)
    attempt(lambda: site.users.set_password(username, password, who.actor, site.clock()))


def enroll_totp(request: Request, who: Principal, username: str) -> dict[str, Any]:
    """A new TOTP secret for the user (any earlier one stops working): shown in this answer only."""
    site = site_of(request)
    secret, uri = attempt(lambda: site.users.enroll_totp(username, who.actor, site.clock()))
    return {"username": username, "secret": secret, "otpauth_uri": uri,
            "note": "shown once: enter it in the user's authenticator app now"}  # fmt: skip


def revoke_token(request: Request, who: Principal, token_id: str, reason: str) -> str:
    """Revoke; returns the owner's username."""
    site = site_of(request)
    found = site.tokens.get(token_id)
    if found is None:
        raise Refused(404, "no such token")
    attempt(lambda: site.tokens.revoke(token_id, who.actor, reason, site.clock()))
    return found.username


def _json(call: Callable[[], Any], status: int = 200) -> Response:
    try:
        return JSONResponse(_jsonable(call()), status_code=status)
    except Refused as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value.isoformat() if isinstance(value, datetime) else value


# -- API -----------------------------------------------------------------------------------------


@router.get("/api/users", tags=["users"])
def users_api(request: Request, who: Principal = Depends(VIEW)) -> Response:
    """Every user: role, disabled, locked until, TOTP enrolled, last sign-in, active tokens and sessions."""
    return _json(lambda: {"users": list_users(request)})


@router.get("/api/users/{username}", tags=["users"])
def user_api(username: str, request: Request, who: Principal = Depends(VIEW)) -> Response:
    """One user, with their tokens (id, label, scopes, expiry, state; never the token) and active sessions."""
    return _json(lambda: one_user(request, username))


@router.post("/api/users", tags=["users"], status_code=201)
def add_user_api(body: NewUser, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Add a user; every role but service needs a password meeting the policy (422 lists what is wrong)."""
    return _json(lambda: add_user(request, who, body), 201)


@router.post("/api/users/{username}/role", tags=["users"])
def role_api(username: str, body: RoleChange, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Change a user's role (audited with the roles before and after, and the reason)."""
    return _json(lambda: (change_role(request, who, username, body), one_user(request, username))[1])


@router.post("/api/users/{username}/disable", tags=["users"])
def disable_api(username: str, body: Reason, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Disable a user: sign-in, sessions and the user's tokens stop working at once."""
    return _json(lambda: (set_disabled(request, who, username, True, body.reason), one_user(request, username))[1])


@router.post("/api/users/{username}/enable", tags=["users"])
def enable_api(username: str, body: Reason, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Enable a disabled user again."""
    return _json(lambda: (set_disabled(request, who, username, False, body.reason), one_user(request, username))[1])


@router.post("/api/users/{username}/unlock", tags=["users"])
def unlock_api(username: str, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """End a lockout before it expires and reset the failure count."""
    return _json(lambda: (unlock(request, who, username), one_user(request, username))[1])


@router.post("/api/users/{username}/tokens", tags=["users"], status_code=201)
def token_api(username: str, body: NewToken, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Create an API token scoped within the user's role. The token is in this response only."""
    return _json(lambda: issue_token(request, who, username, body), 201)


@router.post("/api/users/{username}/password", tags=["users"])
def password_api(username: str, body: NewPassword, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Set a new password (checked against the policy; a refusal names the problem, never the password)."""

    def change() -> dict[str, str]:
        reset_password(request, who, username, body.password)
        return {"username": username}

    return _json(change)


@router.post("/api/users/{username}/totp", tags=["users"], status_code=201)
def totp_api(username: str, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Enrol a new TOTP secret (replacing any earlier one); the secret and otpauth URI are in this answer only."""
    return _json(lambda: enroll_totp(request, who, username), 201)


@router.post("/api/tokens/{token_id}/revoke", tags=["users"])
def revoke_api(token_id: str, body: Reason, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Revoke a token: refused from its next use on."""
    return _json(lambda: {"token_id": token_id, "revoked": True,
                          "username": revoke_token(request, who, token_id, body.reason)})  # fmt: skip


# -- pages ---------------------------------------------------------------------------------------


def _users_page(request: Request, message: str | None = None, status_code: int = 200, **form: Any) -> Response:
    everyone = list_users(request)
    per_role = [(role, [u for u in everyone if u.get("role") == role]) for role in ROLES]
    return render(request, "users.html", status_code=status_code, per_role=per_role, roles=ROLES,
                  message=message, form=form)  # fmt: skip


def _user_page(request: Request, username: str, message: str | None = None, status_code: int = 200,
               issued: dict[str, Any] | None = None, totp: dict[str, Any] | None = None) -> Response:  # fmt: skip
    try:
        shown = one_user(request, username)
    except Refused as exc:
        return render(request, "user.html", status_code=exc.status, user=None, message=str(exc))
    scopes = sorted(MATRIX.get(shown["role"], frozenset()))
    return render(request, "user.html", status_code=status_code, user=shown, roles=ROLES, message=message,
                  issued=issued, totp=totp, scopes=[(s, PERMISSIONS[s]) for s in scopes])  # fmt: skip


@router.get("/users", include_in_schema=False)
def users_page(request: Request, who: Principal = Depends(VIEW)) -> Response:
    return _users_page(request)


@router.post("/users", include_in_schema=False)
def add_user_form(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    role: Annotated[str, Form(max_length=32)],
    display_name: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    who: Principal = Depends(MANAGE),
) -> Response:
    body = NewUser(username=username, display_name=display_name, role=role, password=password or None)
    try:
        add_user(request, who, body)
    except Refused as exc:  # the form comes back filled in, except the password
        return _users_page(request, str(exc), exc.status, username=username, display_name=display_name, role=role)
    return RedirectResponse(f"/users/{body.username.strip().lower()}", status_code=303)


@router.get("/users/{username}", include_in_schema=False)
def user_page(username: str, request: Request, who: Principal = Depends(VIEW)) -> Response:
    return _user_page(request, username)


def _form_change(request: Request, username: str, change: Callable[[], Any]) -> Response:
    try:
        change()
    except Refused as exc:
        return _user_page(request, username, str(exc), exc.status)
    return RedirectResponse(f"/users/{username}", status_code=303)


@router.post("/users/{username}/role", include_in_schema=False)
def role_form(
    username: str,
    request: Request,
    role: Annotated[str, Form(max_length=32)],
    reason: Annotated[str, Form(min_length=1, max_length=500)],
    who: Principal = Depends(MANAGE),
) -> Response:
    return _form_change(
        request, username, lambda: change_role(request, who, username, RoleChange(role=role, reason=reason))
    )


@router.post("/users/{username}/disable", include_in_schema=False)
def disable_form(username: str, request: Request, reason: Annotated[str, Form(min_length=1, max_length=500)],
                 who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    return _form_change(request, username, lambda: set_disabled(request, who, username, True, reason))


@router.post("/users/{username}/enable", include_in_schema=False)
def enable_form(username: str, request: Request, reason: Annotated[str, Form(min_length=1, max_length=500)],
                who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    return _form_change(request, username, lambda: set_disabled(request, who, username, False, reason))


@router.post("/users/{username}/unlock", include_in_schema=False)
def unlock_form(username: str, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    return _form_change(request, username, lambda: unlock(request, who, username))


@router.post("/users/{username}/tokens", include_in_schema=False)
def token_form(
    username: str,
    request: Request,
    scopes: Annotated[list[str], Form()],
    expires_days: Annotated[int, Form(ge=1, le=3650)] = 90,
    label: Annotated[str, Form(max_length=120)] = "",
    who: Principal = Depends(MANAGE),
) -> Response:
    try:
        issued = issue_token(request, who, username, NewToken(scopes=scopes, expires_days=expires_days, label=label))
    except Refused as exc:
        return _user_page(request, username, str(exc), exc.status)
    # Not a redirect: the token is shown in this response only, never in a URL.
    return _user_page(request, username, issued=issued, status_code=201)


@router.post("/tokens/{token_id}/revoke", include_in_schema=False)
def revoke_form(token_id: str, request: Request, reason: Annotated[str, Form(min_length=1, max_length=500)],
                who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    try:
        owner = revoke_token(request, who, token_id, reason)
    except Refused as exc:
        return _users_page(request, str(exc), exc.status)
    return RedirectResponse(f"/users/{owner}", status_code=303)


@router.post("/users/{username}/password", include_in_schema=False)
def password_form(username: str, request: Request, password: Annotated[str, Form(min_length=1, max_length=1024)],
                  who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    return _form_change(request, username, lambda: reset_password(request, who, username, password))


@router.post("/users/{username}/totp", include_in_schema=False)
def totp_form(username: str, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    try:
        enrolled = enroll_totp(request, who, username)
    except Refused as exc:
        return _user_page(request, username, str(exc), exc.status)
    # Not a redirect: the secret is shown in this response only, never in a URL.
    return _user_page(request, username, totp=enrolled, status_code=201)
