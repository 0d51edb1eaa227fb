"""Every route as every role, over HTTP: the access matrix (engine/security/access.py) is what the API
enforces, route by route, and nothing is open that is not meant to be.

Each route declares its permission with `Need`; the test reads it from the route, calls the route as
each role (a session for people, a token with every scope its ceiling allows for the service role)
and expects 403 exactly where the matrix denies it. An allowed call may still fail for its own
reasons (404 for the placeholder id, 422 for an empty body) but never with 401 or 403."""

from __future__ import annotations

import re

import httpx
import pytest

from engine.security.access import MATRIX, ROLES
from engine.web.app import OPEN
from engine.web.auth import api_routes, needs_of
from tests.web.conftest import SERVICE_SCOPES, Web

PLACEHOLDER = "00000000-0000-7000-8000-000000000000"


def routes(app: object) -> list[tuple[str, str, str | None]]:
    """(method, path, permission or None for any signed-in caller) of every route with a Need."""
    found = []
    for route in api_routes(app):
        for method in sorted(route.methods - {"HEAD"}):
            needs = needs_of(route)
            if (method, route.path) in OPEN:
                assert not needs, f"{method} {route.path} is open and also declares a Need"
                continue
            assert len(needs) == 1, f"{method} {route.path} declares {len(needs)} Need(s); every route needs one"
            found.append((method, route.path, needs[0].permission))
    return found


def call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    url = re.sub(r"\{[^}]+\}", PLACEHOLDER, path)
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        return client.request(method, url, json={})
    if path.endswith("/events"):  # a server-sent event stream: only its status line matters
        with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
            return response
    return client.get(url)


def test_every_route_is_open_on_purpose_or_declares_its_permission(web: Web) -> None:
    app_routes = routes(web.site_app)
    assert app_routes, "no routes with a Need found"
    for method, path in OPEN:
        assert method in ("GET", "POST") and path.startswith("/")


def test_unauthenticated_calls_are_refused_everywhere(web: Web) -> None:
    anonymous = web.client()
    for method, path, _permission in routes(web.site_app):
        response = call(anonymous, method, path)
        assert response.status_code == 401, f"{method} {path} answered {response.status_code} without credentials"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_what_the_matrix_allows(web: Web, role: str) -> None:
    client = web.token("service", SERVICE_SCOPES) if role == "service" else web.session(role)
    granted = MATRIX[role] & set(SERVICE_SCOPES) if role == "service" else MATRIX[role]
    checked = 0
    for method, path, permission in routes(web.site_app):
        if path == "/logout":  # would end the very session the rest of the calls use (test_login.py)
            checked += 1
            continue
        response = call(client, method, path)
        if permission is None or permission in granted:
            assert response.status_code not in (401, 403), (
                f"{role} was refused {method} {path} ({permission}): {response.status_code} {response.text[:200]}"
            )
        else:
            assert response.status_code == 403, f"{role} reached {method} {path} ({permission}): {response.status_code}"
        checked += 1
    assert checked == len(routes(web.site_app))
