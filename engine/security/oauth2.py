"""Credentials for the engine's HTTP clients (model servers, FHIR servers): a static bearer token, or
OAuth2 client credentials (RFC 6749 §4.4) with the access token cached and refreshed.

The client authenticates to the token endpoint in one of three ways (`token_endpoint_auth_method`):
- client_secret_post: `client_id` and `client_secret` in the form body (RFC 6749 §2.3.1);
- client_secret_basic: HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1);
- private_key_jwt: a JWT assertion signed with the client's private key (RFC 7523 §2.2), as SMART
  Backend Services asks (http://hl7.org/fhir/smart-app-launch/backend-services.html): header
  alg RS384 or ES384, kid (and jku when configured), typ JWT; claims iss = sub = client_id,
  aud = the token URL, exp five minutes ahead at most, and a fresh random jti on every request.

The access token is cached until `expires_in` minus a margin (5 minutes assumed when the endpoint
names no lifetime), and dropped when a server answers 401 to it, so the next request fetches a fresh
one. Concurrent requests share one fetch (asyncio.Lock). The token endpoint is reached through the
caller's own HTTP client, so with its TLS settings (and client certificate).

Tokens, secrets and assertions never appear in an exception or a log line: errors say the status only,
and parse failures are raised `from None` so the token endpoint's answer is not chained along.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import json
import secrets
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from engine.core.errors import ConfigError, PermanentError, RadbridgeError, RetryableError

__all__ = [
    "ASSERTION_TYPE", "AuthSettings", "OAuth2Client", "SigningKey", "TokenSource", "TokenUnavailable",
    "client_assertion", "retry_after", "transport_error",
]  # fmt: skip

DEFAULT_LIFETIME_S = 300.0  # when the token endpoint names no expires_in
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300  # SMART Backend Services: exp no more than five minutes in the future
_TRANSIENT = {408, 429}


class OAuth2Client(BaseModel):
    """OAuth2 client credentials: where to get a token and how the engine proves who it is."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    token_url: str = Field(description="OAuth2 token endpoint (client credentials grant).")
    client_id: str = Field(min_length=1, description="The engine's client id at that endpoint.")
    token_endpoint_auth_method: Literal["client_secret_post", "client_secret_basic", "private_key_jwt"] = Field(
        "client_secret_post",
        description="How the engine authenticates to the token endpoint: the secret in the form body, the secret "
        "as HTTP Basic, or a JWT signed with `private_key` (SMART Backend Services).",
    )
    client_secret: SecretStr | None = Field(
        None, description="For client_secret_post/basic. Write `${SECRET}`, never the value."
    )
    private_key: str | None = Field(
        None,
        description="For private_key_jwt: the client's private key (unencrypted PEM, RSA 2048+ bits or EC P-384), "
        "relative to the project root; keep it 0600. Its public key is registered with the authorization server.",
    )
    kid: str | None = Field(None, description="For private_key_jwt: the key id the server registered the key under.")
    alg: Literal["RS384", "ES384"] | None = Field(
        None, description="For private_key_jwt: the signing algorithm; by default RS384 for RSA keys, ES384 for EC."
    )
    jku: str | None = Field(None, description="For private_key_jwt: the client's JWKS URL, sent in the JWT header.")
    scope: str | None = Field(None, description="Scopes to ask for, e.g. `system/DiagnosticReport.write`.")

    @model_validator(mode="after")
    def _method(self) -> OAuth2Client:
        if self.token_endpoint_auth_method == "private_key_jwt":
            if self.private_key is None or self.kid is None:
                raise ValueError("private_key_jwt needs private_key and kid")
            if self.client_secret is not None:
                raise ValueError("private_key_jwt takes no client_secret")
        else:
            if self.client_secret is None:
                raise ValueError(f"{self.token_endpoint_auth_method} needs client_secret")
            if self.private_key is not None or self.kid is not None or self.alg is not None or self.jku is not None:
                raise ValueError("private_key, kid, alg and jku go with private_key_jwt only")
        return self


class AuthSettings(Protocol):
    """What TokenSource reads from a component's `auth` settings: exactly one of the two is set. `oauth2`
    is an OAuth2Client or any model with a subset of its fields (e.g. a model server's older `oauth2`)."""

    @property
    def bearer(self) -> SecretStr | None: ...

    @property
    def oauth2(self) -> BaseModel | None: ...


class TokenUnavailable(RetryableError):
    """The token endpoint answered 408, 429 or 5xx. `retry_after`: seconds it asked to wait, or None."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date, RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def _untrusted(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def transport_error(exc: httpx.TransportError, what: str) -> RadbridgeError:
    """A connection that failed: a certificate the configured CA did not sign will not become trusted by
    retrying (permanent); timeouts and refused or dropped connections are transient."""
    if _untrusted(exc):
        return PermanentError(f"{what}: TLS certificate of the server not trusted")
    if isinstance(exc, httpx.TimeoutException):
        return RetryableError(f"{what}: timed out ({type(exc).__name__})")
    return RetryableError(f"{what}: connection failed ({type(exc).__name__})")


async def read_capped(
    response: httpx.Response, limit: int, where: str, error: type[PermanentError] = PermanentError
) -> bytes:
    """The answer's body, refused (`error`) as soon as it is declared or turns out larger than `limit`."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise error(f"{where}: answer larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise error(f"{where}: answer larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SigningKey:
    """A private key that signs JWS (RS384: RSASSA-PKCS1-v1_5 with SHA-384; ES384: ECDSA P-384 with SHA-384,
    the signature as r || s, RFC 7518 §3.4). Written with `cryptography` directly: PyJWT is not a dependency,
    and a compact JWS is three base64url parts, so a library would add nothing but surface."""

    def __init__(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, alg: Literal["RS384", "ES384"]) -> None:
        self.key, self.alg = key, alg

    @classmethod
    def load(cls, path: Path, alg: Literal["RS384", "ES384"] | None, what: str) -> SigningKey:
        """Read a PEM private key; ConfigError (naming `what`, never the file's content) when unusable."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{what}: unusable private key file ({type(exc).__name__})") from None
        if isinstance(key, rsa.RSAPrivateKey):
            if alg not in (None, "RS384") or key.key_size < 2048:
                raise ConfigError(f"{what}: an RSA private key signs RS384 only, with 2048 bits or more")
            return cls(key, "RS384")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if alg not in (None, "ES384") or not isinstance(key.curve, ec.SECP384R1):
                raise ConfigError(f"{what}: an EC private key signs ES384 only, on curve P-384")
            return cls(key, "ES384")
        raise ConfigError(f"{what}: the private key is neither RSA nor EC ({type(key).__name__})")

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA384())
        r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(hashes.SHA384())))
        return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def client_assertion(
    key: SigningKey, client_id: str, token_url: str, kid: str, *, now: float, jku: str | None = None
) -> str:
    """A signed JWT client assertion (compact JWS) for the token endpoint at `token_url`."""
    header = {"alg": key.alg, "kid": kid, "typ": "JWT"}
    if jku:
        header["jku"] = jku
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": int(now) + ASSERTION_LIFETIME_S,
              "jti": secrets.token_urlsafe(24)}  # fmt: skip
    signing_input = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    return f"{signing_input}.{_b64url(key.sign(signing_input.encode('ascii')))}"


class TokenSource:
    """The `Authorization` header value for a component's requests, per its `auth` settings."""

    def __init__(
        self,
        auth: AuthSettings,
        client: httpx.AsyncClient,
        what: str,
        *,
        root: Path | None = None,
        margin_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`root`: the project root a private_key path is relative to; the key is read now, so an unusable
        one fails at startup (ConfigError), not at the first delivery."""
        self._bearer = auth.bearer
        self._oauth2: OAuth2Client | None = None
        self._key: SigningKey | None = None
        if auth.oauth2 is not None:
            given = auth.oauth2
            self._oauth2 = given if isinstance(given, OAuth2Client) else OAuth2Client.model_validate(given.model_dump())
            if self._oauth2.private_key is not None:
                path = Path(self._oauth2.private_key)
                self._key = SigningKey.load(path if root is None else root / path, self._oauth2.alg, what)
        self._client = client
        self._what = what
        self._margin_s = margin_s
        self._clock = clock
        self._wall = wall
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.issued = 0  # tokens fetched so far (for metrics and tests)

    @property
    def refreshes(self) -> bool:
        """Whether a 401 is worth one retry with a fresh token (static bearer tokens do not change)."""
        return self._oauth2 is not None

    async def authorization(self) -> str:
        if self._oauth2 is None:
            assert self._bearer is not None, "auth needs bearer or oauth2"
            return f"Bearer {self._bearer.get_secret_value()}"
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._token, lifetime = await self._fetch(self._oauth2)
                self.issued += 1
                self._expires_at = self._clock() + lifetime - min(self._margin_s, lifetime / 2)
            return f"Bearer {self._token}"

    async def rejected(self, authorization: str) -> None:
        """A server answered 401 to `authorization`: forget that token (unless a concurrent request already
        replaced it), so the next authorization() fetches a fresh one."""
        async with self._lock:
            if self._token is not None and authorization == f"Bearer {self._token}":
                self._token = None

    def _credentials(self, oauth2: OAuth2Client) -> tuple[dict[str, str], dict[str, str]]:
        """The form fields and headers that authenticate the engine to the token endpoint."""
        form = {"grant_type": "client_credentials"}
        headers = {"Accept": "application/json"}
        method = oauth2.token_endpoint_auth_method
        if method == "private_key_jwt":
            assert self._key is not None and oauth2.kid is not None
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = client_assertion(self._key, oauth2.client_id, oauth2.token_url, oauth2.kid,
                                                        now=self._wall(), jku=oauth2.jku)  # fmt: skip
            return form, headers
        assert oauth2.client_secret is not None
        secret = oauth2.client_secret.get_secret_value()
        if method == "client_secret_basic":  # RFC 6749 §2.3.1: both form-urlencoded before Basic encoding
            pair = f"{quote(oauth2.client_id, safe='')}:{quote(secret, safe='')}".encode()
            headers["Authorization"] = f"Basic {base64.b64encode(pair).decode('ascii')}"
        else:
            form["client_id"] = oauth2.client_id
            form["client_secret"] = secret
        return form, headers

    async def _fetch(self, oauth2: OAuth2Client) -> tuple[str, float]:
        what = f"{self._what}: token endpoint"
        form, headers = self._credentials(oauth2)
        if oauth2.scope:
            form["scope"] = oauth2.scope
        try:
            response = await self._client.post(oauth2.token_url, data=form, headers=headers)
        except httpx.TransportError as exc:
            raise transport_error(exc, what) from None
        status = response.status_code
        if status != 200:
            if status in _TRANSIENT or status >= 500:
                wait = retry_after(response.headers.get("retry-after"))
                raise TokenUnavailable(f"{what}: server answered {status}", wait)
            raise PermanentError(f"{self._what}: token endpoint refused: {status}")
        try:
            answer = response.json()
            token = answer["access_token"]
            kind = answer.get("token_type", "Bearer")
            lifetime = float(answer.get("expires_in", DEFAULT_LIFETIME_S))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PermanentError(f"{what}: answer without a usable access_token") from None
        if not isinstance(token, str) or not token or not isinstance(kind, str) or kind.lower() != "bearer":
            raise PermanentError(f"{what}: answer without a usable bearer access_token")
        if not lifetime > 0:
            raise PermanentError(f"{what}: answer with a non-positive expires_in")
        return token, lifetime
