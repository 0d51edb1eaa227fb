"""Single sign-on over real HTTP(S): radbridge against a minimal OpenID Connect provider (tests/web/idp.py)
on loopback HTTPS, verified with the project's CA setting. The browser is an httpx client that
follows the redirects by hand, so each hop can be checked and tampered with."""

from __future__ import annotations

import contextlib
import logging
import re
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from argon2 import PasswordHasher

from engine.runtime.context import open_context
from engine.security import keyring
from engine.security.access import ROLES
from engine.security.passwords import Passwords
from engine.security.tls import client_context, server_context
from engine.store.tables import AuditRow
from engine.store.users import Users
from engine.web.app import create_app
from engine.web.auth import COOKIE_PLAIN, COOKIE_TLS
from engine.web.oidc import NEED_MFA, REFUSED, STATE_COOKIE_PLAIN, STATE_COOKIE_TLS, UNAVAILABLE, _seal, _unseal
from engine.web.site import Site
from tests.conftest import write_project
from tests.inference.http.servers import serve
from tests.tlscerts import Certs, make_certs
from tests.web.conftest import PASSWORD, Web
from tests.web.idp import Provider

SECRET = "idp-client-secret-Q7f3a9c2d1"  # noqa: S105 - a test value, searched for in logs and audit
SECRET_ENV = "RB_TEST_OIDC_SECRET"
CLIENT_ID = "radbridge-web"


@dataclass
class Sso:
    web: Web
    idp: Provider
    certs: Certs
    tls_url: str  # the same application over HTTPS

    def browser(self, *, tls: bool = False) -> httpx.Client:
        if not tls:
            return self.web.client()
        client = httpx.Client(base_url=self.tls_url, timeout=10, follow_redirects=False,
                              verify=client_context(str(self.certs.ca)))  # fmt: skip
        self.web.clients.append(client)
        return client

    def at_provider(self) -> httpx.Client:
        """The browser's visits to the provider (a separate client: its cookies are not ours)."""
        client = httpx.Client(timeout=10, follow_redirects=False, verify=client_context(str(self.certs.ca)))
        self.web.clients.append(client)
        return client

    def audit(self) -> list[tuple[str, str, dict]]:
        with self.web.ctx.db.connect() as conn:
            rows = conn.execute(AuditRow.__table__.select().where(AuditRow.action == "auth.login")).all()
        return [(r.actor, r.outcome, self.web.ctx.audit.open_detail(r.id, r.detail) or {}) for r in rows]

    def refusals(self) -> list[str]:
        return [d.get("reason", "") for _actor, outcome, d in self.audit() if outcome == "failure"]


@contextlib.contextmanager
def sso_world(root: Path, monkeypatch: pytest.MonkeyPatch, *, secret: bool = True) -> Iterator[Sso]:
    certs = make_certs(root / "tls")
    idp = Provider(CLIENT_ID, SECRET if secret else None)
    with serve(idp.app(), server_context(str(certs.server_cert), str(certs.server_key))) as issuer:
        idp.issuer = issuer
        if secret:
            monkeypatch.setenv(SECRET_ENV, SECRET)
        secret_line = f", client_secret_env: {SECRET_ENV}" if secret else ""
        write_project(root, engine_yaml=textwrap.dedent(f"""\
            node: {{id: test-node}}
            keys: {{source: file, file: keys/keyring.json}}
            listeners: [{{name: api, kind: http, host: 127.0.0.1, port: 18480}}]
            auth:
              oidc: {{issuer: '{issuer}', client_id: {CLIENT_ID}, ca: tls/ca.crt, label: Hospital SSO{secret_line}}}
            """))  # fmt: skip
        keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
        ctx = open_context(root)
        fast = Passwords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
        users = Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, ctx.project.engine.auth, hasher=fast)
        for role in ROLES:
            users.add(role.replace("_", "-"), f"Test {role}", role, None if role == "service" else PASSWORD, "user:t")
        users.add("former", "Former radiologist", "radiologist", PASSWORD, "user:t")
        users.set_disabled("former", True, "user:t", "left the hospital")
        site = Site.open(ctx, lambda: (True, {"store": "ok"}), users=users)
        app = create_app(site)
        tls = server_context(str(certs.server_cert), str(certs.server_key))
        with serve(app) as url, serve(app, tls) as tls_url:
            world = Sso(Web(ctx, site, url, site_app=app), idp, certs, tls_url)
            try:
                yield world
            finally:
                for client in world.web.clients:
                    client.close()
        ctx.close()


@pytest.fixture
def sso(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sso]:
    with sso_world(tmp_path / "project", monkeypatch) as world:
        yield world


def start(sso: Sso, browser: httpx.Client, next: str = "/") -> str:
    """Ask radbridge to sign in with the provider; the provider approves: the callback URL it sends back to."""
    response = browser.get("/login/oidc", params={"next": next})
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(f"{sso.idp.issuer}/authorize?")
    back = sso.at_provider().get(location)
    assert back.status_code == 302, back.text
    return back.headers["location"]


def sign_in(sso: Sso, browser: httpx.Client, next: str = "/") -> httpx.Response:
    return browser.get(start(sso, browser, next))


def refresh_target(page: httpx.Response) -> str:
    found = re.search(r'<meta http-equiv="refresh" content="0;url=([^"]*)">', page.text)
    assert found, page.text
    return found.group(1)


def test_single_sign_on_starts_a_session_with_the_local_role(sso: Sso) -> None:
    browser = sso.browser()
    first = browser.get("/login/oidc", params={"next": "/me"})
    assert first.status_code == 303
    asked = parse_qs(urlsplit(first.headers["location"]).query)
    assert asked["response_type"] == ["code"] and asked["client_id"] == [CLIENT_ID]
    assert asked["code_challenge_method"] == ["S256"] and len(asked["code_challenge"][0]) == 43
    assert asked["redirect_uri"] == [f"{sso.web.url}/login/oidc/callback"]
    assert asked["scope"] == ["openid profile email"] and asked["state"][0] and asked["nonce"][0]
    state_cookie = first.headers["set-cookie"]
    assert state_cookie.startswith(f"{STATE_COOKIE_PLAIN}=") and "HttpOnly" in state_cookie
    assert "SameSite=lax" in state_cookie and "Max-Age=600" in state_cookie
    back = sso.at_provider().get(first.headers["location"])

    page = browser.get(back.headers["location"])
    assert page.status_code == 200
    assert refresh_target(page) == "/me" and '<a href="/me">' in page.text and "<script" not in page.text
    cookies = page.headers.get_list("set-cookie")
    assert any(c.startswith(f"{COOKIE_PLAIN}=") and "SameSite=strict" in c and "HttpOnly" in c for c in cookies)
    assert any(c.startswith(f"{STATE_COOKIE_PLAIN}=") and "Max-Age=0" in c for c in cookies)  # used once
    me = browser.get("/api/session").json()
    assert me["username"] == "radiologist" and me["role"] == "radiologist"
    assert "worklist.view" in me["permissions"] and "users.manage" not in me["permissions"]
    assert ("user:radiologist", "success", {"via": "oidc", "issuer": sso.idp.issuer, "amr": ["pwd"]}) in sso.audit()
    # a confidential client: client_secret_basic, the PKCE verifier, never the secret in the form
    sent = sso.idp.token_requests[-1]
    assert sent["authorization"].startswith("Basic ") and "client_secret" not in sent["form"]
    assert len(sent["form"]["code_verifier"]) >= 43 and sso.idp.refused == []


def test_the_login_page_offers_the_provider(sso: Sso) -> None:
    page = sso.browser().get("/login", params={"next": "/worklist"})
    assert "Hospital SSO" in page.text and 'href="/login/oidc?next=/worklist"' in page.text


def test_a_public_client_proves_itself_with_pkce_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with sso_world(tmp_path / "project", monkeypatch, secret=False) as sso:
        browser = sso.browser()
        page = sign_in(sso, browser)
        assert page.status_code == 200 and refresh_target(page) == "/"
        assert browser.get("/api/session").json()["role"] == "radiologist"
        sent = sso.idp.token_requests[-1]
        assert sent["authorization"] is None and sent["form"]["client_id"] == CLIENT_ID


def test_over_https_the_cookies_are_host_prefixed_and_secure(sso: Sso) -> None:
    browser = sso.browser(tls=True)
    first = browser.get("/login/oidc")
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{STATE_COOKIE_TLS}=") and "Secure" in cookie and "Path=/" in cookie
    asked = parse_qs(urlsplit(first.headers["location"]).query)
    assert asked["redirect_uri"] == [f"{sso.tls_url}/login/oidc/callback"]
    page = browser.get(sso.at_provider().get(first.headers["location"]).headers["location"])
    assert page.status_code == 200
    session = next(c for c in page.headers.get_list("set-cookie") if c.startswith(f"{COOKIE_TLS}="))
    assert "Secure" in session and "SameSite=strict" in session
    assert browser.get("/api/session").json()["username"] == "radiologist"


def _refused(sso: Sso, page: httpx.Response, reason: str, message: str = REFUSED) -> None:
    assert page.status_code == 401, page.text
    assert message in page.text
    assert not any(c.startswith(f"{COOKIE_PLAIN}=") for c in page.headers.get_list("set-cookie"))
    assert sso.refusals()[-1] == reason


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"nonce": "not-the-nonce"}, "nonce_mismatch"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 3900}, "token_expired"),
        ({"aud": "someone-else"}, "wrong_audience"),
        ({"aud": [CLIENT_ID, "someone-else"]}, "wrong_azp"),  # several audiences and no azp
        ({"aud": [CLIENT_ID, "someone-else"], "azp": "someone-else"}, "wrong_azp"),
        ({"iss": "https://impostor.example"}, "wrong_issuer"),
        ({"nbf": int(time.time()) + 3600}, "token_not_yet_valid"),
        ({"nonce": None}, "missing_claim"),
        ({"preferred_username": "nobody-here"}, "unknown_user"),
        ({"preferred_username": None}, "no_username_claim"),
        ({"preferred_username": "former"}, "disabled"),
        ({"preferred_username": "service"}, "service_account"),
    ],
)
def test_a_token_that_fails_any_check_is_refused_and_audited(sso: Sso, claims: dict, reason: str) -> None:
    sso.idp.claims = claims
    browser = sso.browser()
    _refused(sso, sign_in(sso, browser), reason)
    assert browser.get("/api/session").status_code == 401


def test_an_azp_naming_us_with_several_audiences_is_accepted(sso: Sso) -> None:
    sso.idp.claims = {"aud": [CLIENT_ID, "someone-else"], "azp": CLIENT_ID}
    assert sign_in(sso, sso.browser()).status_code == 200


@pytest.mark.parametrize(
    ("sign_with", "reason"),
    [("other", "bad_signature"), ("unknown", "unknown_key"), ("none", "bad_alg"), ("hs256", "bad_alg")],
)
def test_a_token_not_signed_by_the_providers_key_is_refused(sso: Sso, sign_with: str, reason: str) -> None:
    sso.idp.sign_with = sign_with
    _refused(sso, sign_in(sso, sso.browser()), reason)


def test_an_unknown_kid_fetches_the_keys_again_once(sso: Sso) -> None:
    assert sign_in(sso, sso.browser()).status_code == 200
    assert sso.idp.jwks_fetches == 1
    assert sign_in(sso, sso.browser()).status_code == 200
    assert sso.idp.jwks_fetches == 1  # cached
    sso.idp.rotate()  # a new key under a new kid
    assert sign_in(sso, sso.browser()).status_code == 200
    assert sso.idp.jwks_fetches == 2
    sso.idp.sign_with = "unknown"
    _refused(sso, sign_in(sso, sso.browser()), "unknown_key")
    assert sso.idp.jwks_fetches == 3  # once more, then refused


def test_an_algorithm_the_provider_does_not_advertise_is_refused(sso: Sso) -> None:
    sso.idp.algs = ["ES256"]  # it still signs with RS256
    _refused(sso, sign_in(sso, sso.browser()), "bad_alg")


def test_state_must_match_the_cookie_that_started_the_flow(sso: Sso) -> None:
    browser = sso.browser()
    callback = start(sso, browser)
    parts = urlsplit(callback)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    wrong = f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode({**query, 'state': 'forged-state'})}"
    _refused(sso, browser.get(wrong), "state_mismatch")
    # the same callback in another browser (no state cookie): a login CSRF attempt
    _refused(sso, sso.browser().get(callback), "state_missing")
    # a cookie made up by hand
    forger = sso.browser()
    forger.cookies.set(STATE_COOKIE_PLAIN, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", domain="127.0.0.1")
    _refused(sso, forger.get(callback), "state_forged")
    assert sso.idp.token_requests == []  # nothing was exchanged


def test_a_flow_left_for_more_than_ten_minutes_is_refused(sso: Sso) -> None:
    browser = sso.browser()
    callback = start(sso, browser)
    state = parse_qs(urlsplit(callback).query)["state"][0]
    sealed = browser.cookies[STATE_COOKIE_PLAIN]
    saved = _unseal(sso.web.site, sealed)
    browser.cookies.set(STATE_COOKIE_PLAIN, _seal(sso.web.site, {**saved, "exp": int(time.time()) - 1}),
                        domain="127.0.0.1")  # fmt: skip
    assert saved["state"] == state
    _refused(sso, browser.get(callback), "state_expired")


def test_a_callback_works_once(sso: Sso) -> None:
    browser = sso.browser()
    callback = start(sso, browser)
    assert browser.get(callback).status_code == 200
    _refused(sso, browser.get(callback), "state_missing")  # the state cookie was spent


def test_the_providers_error_is_refused(sso: Sso) -> None:
    browser = sso.browser()
    callback = start(sso, browser)
    query = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
    page = browser.get("/login/oidc/callback", params={"error": "access_denied", "state": query["state"]})
    _refused(sso, page, "provider_error")
    assert sso.audit()[-1][2]["provider_error"] == "access_denied"


def test_roles_that_need_totp_need_the_providers_second_factor(sso: Sso) -> None:
    sso.idp.user = {"preferred_username": "admin", "amr": ["pwd"]}
    page = sign_in(sso, sso.browser())
    _refused(sso, page, "sso_mfa_required", NEED_MFA)
    assert "second factor" in page.text
    assert sso.audit()[-1][0] == "user:admin"
    sso.idp.user = {"preferred_username": "admin", "amr": ["pwd", "otp"]}
    browser = sso.browser()
    assert sign_in(sso, browser).status_code == 200
    assert browser.get("/api/session").json()["role"] == "admin"


def test_refusals_all_read_the_same(sso: Sso) -> None:
    """Unknown, disabled and bad-token refusals cannot be told apart from the page."""
    pages = []
    for claims in ({"preferred_username": "nobody-here"}, {"preferred_username": "former"}, {"aud": "x"}):
        sso.idp.claims = claims
        pages.append(sign_in(sso, sso.browser()))
    bodies = {re.sub(r'name="csrf-token" content="[^"]*"', "", p.text) for p in pages}
    assert len(bodies) == 1 and "nobody-here" not in pages[0].text and "former" not in pages[1].text


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"])
def test_next_never_leaves_the_site(sso: Sso, target: str) -> None:
    page = sign_in(sso, sso.browser(), next=target)
    assert page.status_code == 200 and refresh_target(page) == "/"


def test_an_unusable_provider_is_reported_not_followed(sso: Sso) -> None:
    real = sso.idp.issuer
    sso.idp.issuer = "https://impostor.example"  # discovery names another issuer
    page = sso.browser().get("/login/oidc")
    assert page.status_code == 503 and UNAVAILABLE in page.text
    sso.idp.issuer = real
    assert sso.browser().get("/login/oidc").status_code == 303  # nothing bad was cached


def test_the_client_secret_and_tokens_never_reach_logs_or_audit(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert sign_in(sso, sso.browser()).status_code == 200
    sso.idp.claims = {"aud": "someone-else"}
    sign_in(sso, sso.browser())
    sso.idp.claims = {}
    sso.idp.client_secret = "a-different-secret"  # the provider refuses our secret
    page = sign_in(sso, sso.browser())
    assert page.status_code == 401 and sso.refusals()[-1] == "token_exchange_refused"
    assert len(sso.idp.issued) == 2
    audit = repr(sso.audit())
    for secret in [SECRET, *sso.idp.issued]:
        assert secret not in caplog.text and secret not in audit
    # The code travels in the callback URL (the test's browser and the test servers' access logs show
    # it; `radbridge run` serves with access logs off); the engine's own logs never hold it.
    engine_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("radbridge"))
    for code in [r["form"]["code"] for r in sso.idp.token_requests]:
        assert code not in engine_logs and code not in audit
    assert "single sign-on refused: wrong_audience" in engine_logs
