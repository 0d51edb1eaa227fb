"""Single sign-on through an OpenID Connect provider: authorization code flow with PKCE (S256).

GET /login/oidc sends the browser to the provider with a fresh state, nonce and code verifier, kept
in a short-lived cookie sealed with AES-GCM under a key derived from the keyring (nobody can forge
or read it). GET /login/oidc/callback checks the state, exchanges the code at the token endpoint
(client_secret_basic when a secret is configured, else a public client with PKCE only) and verifies
the ID token: signature against the provider's JWKS, an asymmetric algorithm the provider
advertises, issuer, audience (and azp), times, nonce. The provider proves who someone is; the local
account decides the rest (engine/store/users.py `sso_signed_in`): it must exist and be enabled, its
role applies, and roles that need TOTP need the provider to report a second factor (`amr`).

Every refusal says the same to the browser and keeps its reason code in the audit. Nothing secret
is logged: not the client secret, the code, the tokens or the state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import os
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import jwt
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from engine.config.auth import OidcConfig
from engine.config.tls import ClientTls
from engine.core.errors import ConfigError
from engine.security.tls import client_context_for
from engine.security.users import Refusal
from engine.security.vault import StateRefused, open_state, seal_state
from engine.web.auth import peer, site_of
from engine.web.login import safe_next, set_session_cookie
from engine.web.pages import render
from engine.web.site import Site

router = APIRouter()
log = logging.getLogger("radbridge.web.oidc")

STATE_COOKIE_TLS = "__Host-radbridge-oidc"  # Secure, Path=/, no Domain
STATE_COOKIE_PLAIN = "radbridge-oidc"
STATE_SECONDS = 600
DISCOVERY_SECONDS = 3600
JWKS_SECONDS = 3600
LEEWAY_SECONDS = 60
MAX_DOCUMENT = 512 * 1024
# Signed with the provider's private key only: "none" and the HMAC algorithms (whose key would be the
# client secret, or a public key misused as one) are never accepted, whatever the provider advertises.
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
_AAD = b"radbridge-oidc-state/1"
_EXTRAS = "oidc.provider"
_lock = threading.Lock()

# Failures that are the provider's or the configuration's, not the person's: "try later", 503.
UNAVAILABLE_REASONS = frozenset({"provider_unreachable", "provider_http_error", "provider_bad_json",
                                 "provider_document_too_large", "provider_bad_jwks", "discovery_issuer_mismatch",
                                 "discovery_incomplete", "client_secret_missing"})  # fmt: skip
REFUSED = "Single sign-on did not sign you in. Try again, or sign in with your username and password."
UNAVAILABLE = "Single sign-on is not available right now: sign in with your username and password, or try later."
NEED_MFA = ("Your role needs a second factor: the identity provider did not report one. Ask for your account "
            "there to require a second factor (or sign in with your password and TOTP code).")  # fmt: skip


class OidcFailure(Exception):
    """The flow cannot go on; `reason` is the audit code (never shown, never holding a secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Provider:
    """The configured provider: its TLS context, and its discovery document and keys, cached."""

    config: OidcConfig
    tls: ssl.SSLContext
    discovery: tuple[float, dict[str, Any]] | None = None
    jwks: tuple[float, list[dict[str, Any]]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            with httpx.Client(verify=self.tls, timeout=10) as client, client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise OidcFailure("provider_http_error")
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT:
                        raise OidcFailure("provider_document_too_large")
        except httpx.HTTPError as exc:
            raise OidcFailure("provider_unreachable") from exc
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise OidcFailure("provider_bad_json") from exc
        if not isinstance(document, dict):
            raise OidcFailure("provider_bad_json")
        return document

    def metadata(self) -> dict[str, Any]:
        """The discovery document, checked: its issuer is ours, its endpoints are HTTPS."""
        with self.lock:
            if self.discovery is not None and time.monotonic() - self.discovery[0] < DISCOVERY_SECONDS:
                return self.discovery[1]
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._get_json(url)
        if document.get("issuer") != self.config.issuer:
            raise OidcFailure("discovery_issuer_mismatch")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            if not isinstance(value, str) or not value.startswith("https://"):
                raise OidcFailure("discovery_incomplete")
        with self.lock:
            self.discovery = (time.monotonic(), document)
        return document

    def _keys(self, refresh: bool) -> list[dict[str, Any]]:
        with self.lock:
            cached = self.jwks
        if not refresh and cached is not None and time.monotonic() - cached[0] < JWKS_SECONDS:
            return cached[1]
        keys = self._get_json(self.metadata()["jwks_uri"]).get("keys")
        if not isinstance(keys, list):
            raise OidcFailure("provider_bad_jwks")
        keys = [k for k in keys if isinstance(k, dict)]
        with self.lock:
            self.jwks = (time.monotonic(), keys)
        return keys

    def key(self, kid: str | None, alg: str) -> Any:
        """The verification key for a token's header; the JWKS is fetched again once for an unknown kid
        (the provider rotated its keys)."""
        for refresh in (False, True):
            candidates = [k for k in self._keys(refresh) if k.get("use", "sig") == "sig"
                          and k.get("alg", alg) == alg and (kid is None or k.get("kid") == kid)]  # fmt: skip
            usable = []
            for jwk in candidates:
                try:
                    usable.append(jwt.PyJWK(jwk, algorithm=alg).key)
                except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                    continue  # another key type, or one this build cannot use
            if len(usable) == 1:
                return usable[0]
            if len(usable) > 1:
                raise OidcFailure("ambiguous_key")
        raise OidcFailure("unknown_key")


def provider_of(site: Site) -> Provider | None:
    """The provider for the site's current configuration (None: single sign-on is not configured).
    ConfigError when its CA file is unusable."""
    config = site.ctx.project.engine.auth.oidc
    if config is None:
        return None
    with _lock:
        found = site.extras.get(_EXTRAS)
        if found is None or found.config is not config:  # first use, or the configuration was reloaded
            tls = client_context_for(ClientTls(ca=config.ca), site.ctx.project.root, "auth.oidc")
            found = Provider(config, tls)
            site.extras[_EXTRAS] = found
    return found  # type: ignore[no-any-return]


# -- the state cookie ---------------------------------------------------------------------------


def _state_cookie(request: Request) -> str:
    return STATE_COOKIE_TLS if request.url.scheme == "https" else STATE_COOKIE_PLAIN


def _seal(site: Site, payload: dict[str, Any]) -> str:
    return seal_state(site.ctx.keyring.derived_key("web:oidc"), payload, _AAD)


def _unseal(site: Site, value: str | None) -> dict[str, Any]:
    try:
        return open_state(site.ctx.keyring.derived_key("web:oidc"), value, _AAD, time.time())
    except StateRefused as exc:  # state_missing, state_forged, state_expired
        raise OidcFailure(f"state_{exc.reason}") from None


def _forget_state(request: Request, response: Response) -> None:
    name = _state_cookie(request)
    response.delete_cookie(name, path="/", secure=name == STATE_COOKIE_TLS, httponly=True, samesite="lax")


# -- the flow -----------------------------------------------------------------------------------


def _redirect_uri(request: Request) -> str:
    host = request.headers.get("host", request.url.netloc)
    return f"{request.url.scheme}://{host}/login/oidc/callback"


def _client_secret(config: OidcConfig) -> str | None:
    if config.client_secret_env is None:
        return None
    secret = os.environ.get(config.client_secret_env)
    if not secret:
        log.error("single sign-on: environment variable %s (the client secret) is not set", config.client_secret_env)
        raise OidcFailure("client_secret_missing")
    return secret


def _refused_page(request: Request, message: str, status_code: int) -> Response:
    response = render(request, "login.html", status_code=status_code, next="/", username="", message=message,
                      oidc_label=None)  # fmt: skip
    _forget_state(request, response)
    return response


def _provider_or_answer(request: Request) -> Provider | Response:
    """The configured provider, or the answer to give when there is none or it cannot be used."""
    try:
        provider = provider_of(site_of(request))
    except ConfigError as exc:
        log.error("single sign-on unavailable: %s", exc)
        return _refused_page(request, UNAVAILABLE, 503)
    if provider is None:
        return JSONResponse({"error": "single sign-on is not configured"}, status_code=404)
    return provider


@router.get("/login/oidc", include_in_schema=False)
def oidc_start(request: Request, next: str = "/") -> Response:
    site = site_of(request)
    provider = _provider_or_answer(request)
    if isinstance(provider, Response):
        return provider
    try:
        _client_secret(provider.config)
        endpoint = provider.metadata()["authorization_endpoint"]
    except OidcFailure as failure:
        log.warning("single sign-on unavailable: %s", failure.reason)
        return _refused_page(request, UNAVAILABLE, 503)
    state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    params = {
        "response_type": "code",
        "client_id": provider.config.client_id,
        "redirect_uri": _redirect_uri(request),
        "scope": " ".join(provider.config.scopes),
        "state": state,
        "nonce": nonce,
        "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
    }
    response = RedirectResponse(endpoint + ("&" if "?" in endpoint else "?") + urlencode(params), status_code=303)
    next_path = safe_next(next) if len(next) <= 1000 else "/"  # the cookie must stay well under 4 KB
    sealed = _seal(site, {"state": state, "nonce": nonce, "verifier": verifier, "next": next_path,
                          "exp": int(time.time()) + STATE_SECONDS})  # fmt: skip
    name = _state_cookie(request)
    # Lax, not Strict: the provider's redirect back is a cross-site navigation and must carry it.
    response.set_cookie(name, sealed, max_age=STATE_SECONDS, path="/", httponly=True, samesite="lax",
                        secure=name == STATE_COOKIE_TLS)  # fmt: skip
    return response


def _exchange(provider: Provider, request: Request, code: str, verifier: str) -> str:
    """The ID token for `code`, from the token endpoint."""
    config = provider.config
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": _redirect_uri(request),
            "code_verifier": verifier}  # fmt: skip
    headers = {"Accept": "application/json"}
    secret = _client_secret(config)
    if secret is None:
        form["client_id"] = config.client_id  # a public client: PKCE is its proof
    else:  # client_secret_basic: both parts form-encoded first (RFC 6749 section 2.3.1)
        pair = f"{quote(config.client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    try:
        with httpx.Client(verify=provider.tls, timeout=10) as client:
            response = client.post(provider.metadata()["token_endpoint"], data=form, headers=headers)
    except httpx.HTTPError as exc:
        raise OidcFailure("provider_unreachable") from exc
    if response.status_code != 200 or len(response.content) > MAX_DOCUMENT:
        raise OidcFailure("token_exchange_refused")
    try:
        answer = response.json()
    except ValueError as exc:
        raise OidcFailure("token_exchange_refused") from exc
    token = answer.get("id_token") if isinstance(answer, dict) else None
    if not isinstance(token, str):
        raise OidcFailure("no_id_token")
    return token


_JWT_REASONS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "token_expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
]


def verify_id_token(provider: Provider, token: str, nonce: str) -> dict[str, Any]:
    """The ID token's claims, once every check has passed (OidcFailure with the reason otherwise)."""
    config = provider.config
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise OidcFailure("malformed_token") from exc
    alg = header.get("alg")
    advertised = provider.metadata().get("id_token_signing_alg_values_supported") or ["RS256"]
    if not isinstance(alg, str) or alg not in ASYMMETRIC or alg not in advertised:
        raise OidcFailure("bad_alg")
    kid = header.get("kid")
    key = provider.key(kid if isinstance(kid, str) else None, alg)
    try:
        claims = jwt.decode(
            token, key, algorithms=[alg], audience=config.client_id, issuer=config.issuer, leeway=LEEWAY_SECONDS,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "nonce"]},
        )  # fmt: skip
    except jwt.InvalidTokenError as exc:
        reason = next((r for kind, r in _JWT_REASONS if isinstance(exc, kind)), "invalid_token")
        raise OidcFailure(reason) from exc
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if (azp is not None or len(audiences) > 1) and azp != config.client_id:
        raise OidcFailure("wrong_azp")
    if not isinstance(claims["nonce"], str) or not hmac.compare_digest(claims["nonce"].encode(), nonce.encode()):
        raise OidcFailure("nonce_mismatch")
    return claims


def _amr(claims: dict[str, Any]) -> list[str]:
    value = claims.get("amr")
    if not isinstance(value, list):
        return []
    return [v[:32] for v in value if isinstance(v, str)][:10]


def _continue_page(next_path: str) -> HTMLResponse:
    """The session cookie is SameSite=Strict, so the browser would not send it on the cross-site
    redirect chain from the provider: a same-site refresh (no script: the CSP forbids inline code)
    makes the next navigation carry it."""
    target = html.escape(quote(next_path, safe="/:%#?=@[]!$&'()*+,;~-._"), quote=True)
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="0;url={target}"><title>Signed in · radbridge</title>'
        '<link rel="stylesheet" href="/static/app.css"></head>'
        f'<body><main><p>Signed in. <a href="{target}">Continue</a></p></main></body></html>'
    )
    return HTMLResponse(body)


@router.get("/login/oidc/callback", include_in_schema=False)
def oidc_callback(request: Request) -> Response:
    site = site_of(request)
    provider = _provider_or_answer(request)
    if isinstance(provider, Response):
        return provider
    now, who = site.clock(), peer(request)
    detail: dict[str, Any] = {"via": "oidc", "issuer": provider.config.issuer}
    query = request.query_params
    username: str | None = None
    try:
        saved = _unseal(site, request.cookies.get(_state_cookie(request)))
        given = query.get("state", "")
        if not hmac.compare_digest(given.encode(), str(saved.get("state", "")).encode()):
            raise OidcFailure("state_mismatch")
        if "error" in query:
            code = query["error"]
            detail["provider_error"] = code[:40] if code.replace("_", "").isalnum() else "other"
            raise OidcFailure("provider_error")
        code = query.get("code", "")
        if not code or len(code) > 2048:
            raise OidcFailure("no_code")
        claims = verify_id_token(provider, _exchange(provider, request, code, saved["verifier"]), saved["nonce"])
        detail["amr"] = _amr(claims)
        value = claims.get(provider.config.username_claim)
        if not isinstance(value, str) or not value.strip():
            raise OidcFailure("no_username_claim")
        username = value
    except OidcFailure as failure:
        log.warning("single sign-on refused: %s", failure.reason)
        site.users.sso_refused(None, failure.reason, now, who, detail)
        unavailable = failure.reason in UNAVAILABLE_REASONS
        return _refused_page(request, UNAVAILABLE if unavailable else REFUSED, 503 if unavailable else 401)
    second_factor = bool(set(detail["amr"]) & set(provider.config.mfa_amr))
    found = site.users.sso_signed_in(username, now, who, second_factor=second_factor, detail=detail)
    if isinstance(found, Refusal):
        log.warning("single sign-on refused: %s", found.reason)
        return _refused_page(request, NEED_MFA if found.reason == "sso_mfa_required" else REFUSED, 401)
    new = site.sessions.start(found, now, peer=who)
    response = _continue_page(safe_next(saved.get("next")))
    set_session_cookie(request, response, new.session_id)
    _forget_state(request, response)
    return response
