"""A minimal, real OpenID Connect provider for the single sign-on tests, served over HTTPS on loopback.

Discovery, /authorize (auto-approves `user`: redirects straight back with a code and the state,
remembering the nonce, the PKCE challenge and the redirect URI), /token (checks the client's
authentication, the redirect URI and the code verifier against the challenge; a code works once),
and /jwks (RS256 keys made with cryptography). Knobs to misbehave, set between requests:
`claims` (override or add ID token claims; a value of None removes the claim), `sign_with`
("good", "other": a key not in the JWKS under the good key's kid, "unknown": a key with a kid not
in the JWKS, "none": `alg: none`, "hs256": HMAC with the public key as the secret), `algs` (what
discovery advertises)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    nonce: str | None
    challenge: str
    method: str
    claims: dict[str, Any]


@dataclass
class Provider:
    client_id: str
    client_secret: str | None  # None: a public client (PKCE only)
    user: dict[str, Any] = field(default_factory=lambda: {"preferred_username": "radiologist", "amr": ["pwd"]})
    issuer: str = ""  # set once the server listens
    claims: dict[str, Any] = field(default_factory=dict)
    sign_with: str = "good"
    algs: list[str] = field(default_factory=lambda: ["RS256"])
    key: rsa.RSAPrivateKey = field(default_factory=_rsa)
    other: rsa.RSAPrivateKey = field(default_factory=_rsa)
    kid: str = "key-1"
    grants: dict[str, Grant] = field(default_factory=dict)
    token_requests: list[dict[str, Any]] = field(default_factory=list)  # {"form": ..., "authorization": ...}
    refused: list[str] = field(default_factory=list)  # why /token refused, in order
    issued: list[str] = field(default_factory=list)  # ID tokens handed out
    discovery_fetches: int = 0
    jwks_fetches: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/.well-known/openid-configuration", self._discovery, methods=["GET"]),
            Route("/authorize", self._authorize, methods=["GET"]),
            Route("/token", self._token, methods=["POST"]),
            Route("/jwks", self._jwks, methods=["GET"]),
        ])  # fmt: skip

    def rotate(self) -> None:
        """A new signing key under a new kid (the JWKS serves only the new one)."""
        self.key, self.kid = _rsa(), f"key-{secrets.token_hex(4)}"

    async def _discovery(self, request: Request) -> Response:
        self.discovery_fetches += 1
        return JSONResponse({
            "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": self.algs, "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
        })  # fmt: skip

    async def _jwks(self, request: Request) -> Response:
        self.jwks_fetches += 1
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return JSONResponse({"keys": [jwk]})

    async def _authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("response_type") != "code" or q.get("client_id") != self.client_id:
            return JSONResponse({"error": "unauthorized_client"}, 400)
        if "openid" not in q.get("scope", "").split() or q.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request"}, 400)
        if not q.get("code_challenge") or not q.get("state") or not q.get("redirect_uri"):
            return JSONResponse({"error": "invalid_request"}, 400)
        code = secrets.token_urlsafe(24)
        self.grants[code] = Grant(q["client_id"], q["redirect_uri"], q.get("nonce"), q["code_challenge"],
                                  q["code_challenge_method"], dict(self.user))  # fmt: skip
        back = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"
        return RedirectResponse(back, status_code=302)

    def _refuse(self, reason: str, status: int = 400) -> Response:
        self.refused.append(reason)
        return JSONResponse({"error": reason}, status)

    async def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        authorization = request.headers.get("authorization")
        self.token_requests.append({"form": form, "authorization": authorization})
        if self.client_secret is not None:  # client_secret_basic
            if not authorization or not authorization.startswith("Basic "):
                return self._refuse("invalid_client", 401)
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if unquote(user) != self.client_id or unquote(password) != self.client_secret:
                return self._refuse("invalid_client", 401)
        elif authorization or form.get("client_id") != self.client_id or "client_secret" in form:
            return self._refuse("invalid_client", 401)
        if form.get("grant_type") != "authorization_code":
            return self._refuse("unsupported_grant_type")
        grant = self.grants.pop(form.get("code", ""), None)  # a code works once
        if grant is None or grant.client_id != self.client_id:
            return self._refuse("invalid_grant")
        if form.get("redirect_uri") != grant.redirect_uri:
            return self._refuse("invalid_grant")
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or challenge != grant.challenge:
            return self._refuse("invalid_grant")
        self.issued.append(self.id_token(grant))
        return JSONResponse({"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 300,
                             "id_token": self.issued[-1]}, headers={"Cache-Control": "no-store"})  # fmt: skip

    def id_token(self, grant: Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": f"sub-{grant.claims.get('preferred_username')}",
                                  "aud": self.client_id, "iat": now, "exp": now + 300, "auth_time": now,
                                  **grant.claims}  # fmt: skip
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        for name, value in self.claims.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        if self.sign_with == "none":
            return jwt.encode(claims, None, algorithm="none")
        if self.sign_with == "hs256":
            public = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
            return _hs256(claims, public, self.kid)
        key, kid = {"good": (self.key, self.kid), "other": (self.other, self.kid),
                    "unknown": (self.other, "key-unknown")}[self.sign_with]  # fmt: skip
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """HS256 signed with the provider's public key as the secret (the classic key-confusion attack);
    built by hand because PyJWT refuses to use a PEM key as an HMAC secret."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"
