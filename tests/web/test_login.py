"""Signing in and out over real HTTP(S): the form, TOTP, lockout, cookie flags, CSRF and Origin checks,
security headers, tokens (expired, revoked), break-glass from the account page and its expiry."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from engine.core.clock import utcnow
from engine.security.tls import server_context
from engine.store.tables import AuditRow
from engine.web.app import create_app
from engine.web.auth import COOKIE_PLAIN, COOKIE_TLS
from tests.inference.http.servers import serve
from tests.tlscerts import make_certs
from tests.web.conftest import PASSWORD, Web, totp_now


def _actions(web: Web, action: str) -> list[tuple[str, str, dict]]:
    with web.ctx.db.connect() as conn:
        rows = conn.execute(AuditRow.__table__.select().where(AuditRow.action == action)).all()
    return [(r.actor, r.outcome, web.ctx.audit.open_detail(r.id, r.detail) or {}) for r in rows]


def sign_in(client: httpx.Client, username: str, password: str, totp: str = "", next: str = "/") -> httpx.Response:
    return client.post("/login", data={"username": username, "password": password, "totp": totp, "next": next})


def test_sign_in_sets_a_session_and_lands_on_the_roles_first_page(web: Web) -> None:
    client = web.client()
    response = sign_in(client, "radiologist", PASSWORD)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_PLAIN}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    home = client.get("/")
    assert home.status_code == 303 and home.headers["location"] == "/worklist"
    me = client.get("/api/session").json()
    assert me["username"] == "radiologist" and me["role"] == "radiologist" and me["csrf_token"]
    assert ("user:radiologist", "success", {"via": "password", "totp": False}) in _actions(web, "auth.login")


def test_a_refused_sign_in_never_says_why_but_the_audit_does(web: Web) -> None:
    client = web.client()
    unknown = sign_in(client, "nobody-here", PASSWORD)
    wrong = sign_in(client, "radiologist", "Not-The-Password-1")
    for response in (unknown, wrong):
        assert response.status_code == 401
        assert "Wrong username or password." in response.text
        assert COOKIE_PLAIN not in response.headers.get("set-cookie", "")
    reasons = [d.get("reason") for _, outcome, d in _actions(web, "auth.login") if outcome == "failure"]
    assert reasons == ["unknown_user", "bad_password"]


def test_admins_need_a_totp_code_and_the_same_code_works_once(web: Web) -> None:
    client = web.client()
    asked = sign_in(client, "admin", PASSWORD)
    assert asked.status_code == 401 and "authenticator app" in asked.text
    code = totp_now(web.totp["admin"])
    assert sign_in(client, "admin", PASSWORD, code).status_code == 303
    again = sign_in(web.client(), "admin", PASSWORD, code)
    assert again.status_code == 401 and "already used" in again.text


def test_five_wrong_passwords_lock_the_account(web: Web) -> None:
    client = web.client()
    for _ in range(5):
        assert sign_in(client, "technologist", "Wrong-Password-99").status_code == 401
    locked = sign_in(client, "technologist", PASSWORD)
    assert locked.status_code == 401 and "Wrong username or password." in locked.text
    assert [d.get("reason") for _, _, d in _actions(web, "auth.login")][-1] == "locked"


def test_next_cannot_redirect_off_site(web: Web) -> None:
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        response = sign_in(web.client(), "radiologist", PASSWORD, next=evil)
        assert response.headers["location"] == "/"
    assert sign_in(web.client(), "radiologist", PASSWORD, next="/worklist").headers["location"] == "/worklist"


def test_changes_need_the_csrf_token_and_this_sites_origin(web: Web) -> None:
    client = web.session("radiologist")
    token = client.headers.pop("X-CSRF-Token")
    refused = client.post("/logout")
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 403
    cross = client.post("/logout", data={"csrf_token": token}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert client.get("/api/session").status_code == 200  # none of that ended the session
    done = client.post("/logout", data={"csrf_token": token}, headers={"Origin": web.url})
    assert done.status_code == 303 and done.headers["location"] == "/login"
    assert client.get("/api/session").status_code == 401  # the session is over on the server too


def test_cross_site_sign_in_is_refused(web: Web) -> None:
    response = web.client().post(
        "/login", data={"username": "radiologist", "password": PASSWORD}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403


def test_every_response_carries_the_security_headers(web: Web) -> None:
    for response in (web.client().get("/login"), web.client().get("/api/session"), web.client().get("/health")):
        h = response.headers
        assert (
            "default-src 'self'" in h["content-security-policy"]
            and "frame-ancestors 'none'" in h["content-security-policy"]
        )
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "same-origin" and h["cache-control"] == "no-store"
        assert "server" not in h
    assert "strict-transport-security" not in web.client().get("/login").headers  # plain HTTP: HSTS means nothing


def test_a_browser_without_a_session_is_sent_to_sign_in_and_a_script_gets_401(web: Web) -> None:
    page = web.client(headers={"Accept": "text/html"}).get("/me")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/me"
    api = web.client().get("/api/session")
    assert api.status_code == 401 and api.headers["www-authenticate"].startswith("Bearer")


def test_a_role_without_the_permission_sees_not_permitted_and_it_is_audited(web: Web) -> None:
    for path in ("/users", "/audit", "/channels", "/dead-letters", "/keys", "/compliance"):
        page = web.session("technologist", accept_html=True).get(path)
        assert page.status_code == 403 and "Not permitted" in page.text, path
    api = web.session("technologist").get("/api/users")
    assert api.status_code == 403 and "users.view is not permitted" in api.json()["error"]
    denied = [d for actor, outcome, d in _actions(web, "auth.denied") if actor == "user:technologist"]
    assert {"permission": "users.view", "route": "/users", "method": "GET"} in denied
    assert all(outcome == "denied" for _, outcome, _ in _actions(web, "auth.denied"))


def test_expired_and_revoked_tokens_are_refused(web: Web) -> None:
    issued = web.site.tokens.create("service", ["channels.view"], 1, "short", "user:test")
    headers = {"Authorization": f"Bearer {issued.token}"}
    assert web.client(headers=headers).get("/api/session").status_code == 200
    web.site.clock = lambda: issued.expires_at + timedelta(seconds=1)
    expired = web.client(headers=headers).get("/api/session")
    assert expired.status_code == 401 and expired.json()["reason"] == "expired"
    web.site.clock = utcnow  # back to the real clock
    web.site.tokens.revoke(issued.token_id, "user:test", "rotated")
    revoked = web.client(headers=headers).get("/api/session")
    assert revoked.status_code == 401 and revoked.json()["reason"] == "revoked"
    assert web.client(headers={"Authorization": "Bearer rb_not-a-token"}).get("/api/session").status_code == 401
    assert web.client(headers={"Authorization": "Basic abc"}).get("/api/session").status_code == 401


def test_break_glass_from_the_account_page_elevates_then_expires(web: Web) -> None:
    web.site.users.enroll_totp("technologist", "user:test")
    secret = web.site.users.enroll_totp("technologist", "user:test")[0]
    client = web.session("technologist", accept_html=True)
    short = client.post("/break-glass", data={"reason": "too short", "minutes": "10", "totp": totp_now(secret)})
    assert short.status_code == 403 and "reason required" in short.text
    asked = client.post("/break-glass", data={"reason": "ED trauma patient, attending unreachable", "minutes": "10",
                                              "totp": totp_now(secret)})  # fmt: skip
    assert asked.status_code == 303
    me = client.get("/api/session").json()
    assert me["break_glass_until"] and "phi.reveal" in me["permissions"]
    page = client.get("/me")
    assert "Break-glass access in force until" in page.text
    web.site.clock = lambda: utcnow() + timedelta(minutes=11)  # the grant ends by itself
    after = client.get("/api/session").json()
    assert after["break_glass_until"] is None and "phi.reveal" not in after["permissions"]


@pytest.fixture
def tls_web(web: Web, tmp_path: Path) -> Iterator[tuple[str, str]]:
    certs = make_certs(tmp_path / "tls")
    with serve(create_app(web.site), server_context(str(certs.server_cert), str(certs.server_key))) as url:
        yield url, str(certs.ca)


def test_over_tls_the_cookie_is_host_prefixed_and_secure_and_hsts_is_sent(tls_web: tuple[str, str]) -> None:
    url, ca = tls_web
    with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=ca)) as client:
        response = sign_in(client, "radiologist", PASSWORD)
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_TLS}=")
        assert re.search(r"(?i)\bsecure\b", cookie) and "HttpOnly" in cookie and "Path=/" in cookie
        assert "domain=" not in cookie.lower()
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert client.get("/api/session").json()["username"] == "radiologist"


def test_a_page_refreshing_itself_does_not_keep_the_session_alive(web: Web) -> None:
    client = web.session("radiologist")
    start = utcnow()
    web.site.clock = lambda: start + timedelta(minutes=10)
    assert client.get("/api/session", headers={"X-Radbridge-Refresh": "1"}).status_code == 200
    web.site.clock = lambda: start + timedelta(minutes=16)  # 15 idle minutes since the person's last use
    idle = client.get("/api/session", headers={"X-Radbridge-Refresh": "1"})
    assert idle.status_code == 401 and idle.json()["reason"] == "idle_timeout"


def test_a_person_using_the_page_keeps_the_session(web: Web) -> None:
    client = web.session("radiologist")
    start = utcnow()
    web.site.clock = lambda: start + timedelta(minutes=10)
    assert client.get("/api/session").status_code == 200
    web.site.clock = lambda: start + timedelta(minutes=16)
    assert client.get("/api/session").status_code == 200


def test_people_change_their_own_password_knowing_the_current_one(web: Web) -> None:
    client = web.session("radiologist", accept_html=True)
    wrong = client.post("/me/password", data={"current": "Not-It-At-All-7", "new": "Fresh-Orbit-Lantern-42"})
    assert wrong.status_code == 403 and "current password is wrong" in wrong.text
    weak = client.post("/me/password", data={"current": PASSWORD, "new": "password123"})
    assert weak.status_code == 422 and "commonly used" in weak.text and "password123" not in weak.text
    done = client.post("/me/password", data={"current": PASSWORD, "new": "Fresh-Orbit-Lantern-42"})
    assert done.status_code == 200 and "Your password was changed." in done.text
    assert sign_in(web.client(), "radiologist", "Fresh-Orbit-Lantern-42").status_code == 303
    assert sign_in(web.client(), "radiologist", PASSWORD).status_code == 401
    [(actor, outcome, detail)] = _actions(web, "auth.password_change")
    assert (actor, outcome, detail) == ("user:radiologist", "denied", {"reason": "bad_password"})
    assert [a for a, _, _ in _actions(web, "user.password_changed")] == ["user:radiologist"]
