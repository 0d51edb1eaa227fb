"""Who is asking, and may they: the one dependency every route but a few open ones declares.

`Need("messages.view")` resolves the principal — a bearer token (`Authorization: Bearer rb_...`) or a
session cookie — and asks the access matrix (engine/security/access.py). Deny by default: no
credentials is 401, a refused permission is 403 and audited (`auth.denied`, with the route's path
template, never the URL's values). A session-authenticated request that changes anything must carry
the session's CSRF token (header `X-CSRF-Token` or form field `csrf_token`) and, when the browser
sends one, an Origin of this site; token requests need neither (no ambient credentials to ride on).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from engine.security.access import PERMISSIONS, Principal, allowed
from engine.security.sessions import csrf_matches
from engine.security.users import Refusal
from engine.store.credentials import ActiveSession
from engine.web.site import Site

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE_TLS = "__Host-radbridge-session"  # __Host-: Secure, Path=/, no Domain: no subdomain can set it
COOKIE_PLAIN = "radbridge-session"  # plain-HTTP development listener only (the compliance report flags it)


class NotSignedIn(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class Forbidden(Exception):
    def __init__(self, message: str, permission: str | None = None) -> None:
        super().__init__(message)
        self.permission = permission


def site_of(request: Request) -> Site:
    return request.app.state.site  # type: ignore[no-any-return]


def peer(request: Request) -> str | None:
    return f"{request.client.host}:{request.client.port}" if request.client else None


def cookie_name(request: Request) -> str:
    return COOKIE_TLS if request.url.scheme == "https" else COOKIE_PLAIN


def same_origin(request: Request) -> bool:
    """True when the browser sent no Origin, or this site's own."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null" and request.method in SAFE_METHODS:
        return True
    own = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
    return origin == own


async def _csrf_token_given(request: Request) -> str | None:
    given = request.headers.get("x-csrf-token")
    if given is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()  # Starlette keeps the parsed form for the endpoint
        value = form.get("csrf_token")
        given = value if isinstance(value, str) else None
    return given


async def principal(request: Request) -> Principal:
    """The caller, once per request (kept on request.state), or NotSignedIn."""
    if hasattr(request.state, "principal"):
        return request.state.principal  # type: ignore[no-any-return]
    site = site_of(request)
    now = site.clock()
    authorization = request.headers.get("authorization", "")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotSignedIn("malformed")
        found = site.tokens.authenticate(token.strip(), now, peer(request))
        if isinstance(found, Refusal):
            raise NotSignedIn(found.reason)
        request.state.principal, request.state.csrf_token = found, None
        return found
    session_id = request.cookies.get(cookie_name(request))
    if not session_id:
        raise NotSignedIn("no_credentials")
    automatic = request.headers.get("x-radbridge-refresh") == "1" or "text/event-stream" in request.headers.get(
        "accept", ""
    )  # a live region refreshing itself, or its event stream: not a person's use of the session
    active = site.sessions.validate(session_id, now, peer(request), touch=not automatic)
    if isinstance(active, Refusal):
        raise NotSignedIn(active.reason)
    if request.method not in SAFE_METHODS:
        if not same_origin(request):
            raise Forbidden("cross-origin request refused")
        if not csrf_matches(active.csrf_token, await _csrf_token_given(request)):
            raise Forbidden("CSRF token missing or wrong: reload the page and try again")
    request.state.principal, request.state.csrf_token = active.principal, active.csrf_token
    request.state.session = active
    return active.principal


class Need:
    """Dependency: the caller, who must hold `permission` (None: any signed-in caller)."""

    def __init__(self, permission: str | None) -> None:
        if permission is not None and permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}")
        self.permission = permission

    async def __call__(self, request: Request) -> Principal:
        who = await principal(request)
        site = site_of(request)
        if self.permission is None or allowed(who, self.permission, site.clock()):
            return who
        route = request.scope.get("route")
        site.ctx.audit.record(
            "auth.denied", actor=who.actor, outcome="denied", peer=peer(request),
            detail={"permission": self.permission, "route": getattr(route, "path", "?"), "method": request.method},
        )  # fmt: skip
        raise Forbidden(f"your role ({who.role}) may not do this: {self.permission} is not permitted", self.permission)

    def __repr__(self) -> str:
        return f"Need({self.permission!r})"


def api_routes(app: Any) -> list[Any]:
    """Every endpoint route of the app (FastAPI >= 0.16x keeps included routers nested; no prefixes
    are used here, so the inner paths are the full ones)."""
    found = []
    for route in app.routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += api_routes(inner)
        elif hasattr(route, "dependant"):
            found.append(route)
    return found


def needs_of(route: Any) -> list[Need]:
    """The Need dependencies of a route (the access tests read them)."""
    found: list[Need] = []
    stack = list(getattr(getattr(route, "dependant", None), "dependencies", []))
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Need):
            found.append(dep.call)
        stack.extend(dep.dependencies)
    return found


def still_signed_in(request: Request) -> bool:
    """For a long-lived response (an event stream): does the caller's session or token still hold?
    Checked without counting as use; a session that idled out, ended or a revoked token ends the stream."""
    site, who = site_of(request), getattr(request.state, "principal", None)
    if who is None:
        return False
    if who.via == "token":
        row = site.tokens.get(who.token_id or "")
        return row is not None and row.state(site.clock()) == "active"
    session_id = request.cookies.get(cookie_name(request))
    found = site.sessions.validate(session_id, site.clock(), peer(request), touch=False) if session_id else None
    return isinstance(found, ActiveSession)
