"""Credentials for model servers: a static bearer token, or OAuth2 client credentials (RFC 6749 §4.4).

OAuth2: the client authenticates to the token endpoint with `client_id` and `client_secret` in the
form body (RFC 6749 §2.3.1 "client_secret_post"; HTTP Basic is not offered — the spec allows one
method per request and the common identity providers accept the form). The access token is cached
until `expires_in` minus a margin (5 minutes assumed when the endpoint names no lifetime), and
dropped when a model server answers 401 to it, so the next request fetches a fresh one. Concurrent
jobs share one fetch (asyncio.Lock). The token endpoint is reached through the model's own HTTP
client, so with the model's TLS settings.

Tokens and secrets never appear in an exception or a log line: errors say the status only, and
parse failures are raised `from None` so the token endpoint's answer is not chained along.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from engine.core.errors import PermanentError
from engine.inference.http.errors import refusal, transport_error
from engine.inference.models import ModelAuth

DEFAULT_LIFETIME_S = 300.0  # when the token endpoint names no expires_in


class TokenSource:
    """The `Authorization` header value for a model's requests, per its `auth` settings."""

    def __init__(
        self,
        auth: ModelAuth,
        client: httpx.AsyncClient,
        what: str,
        *,
        margin_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auth = auth
        self._client = client
        self._what = what
        self._margin_s = margin_s
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.issued = 0  # tokens fetched so far (for metrics and tests)

    @property
    def refreshes(self) -> bool:
        """Whether a 401 is worth one retry with a fresh token (static bearer tokens do not change)."""
        return self._auth.oauth2 is not None

    async def authorization(self) -> str:
        if self._auth.bearer is not None:
            return f"Bearer {self._auth.bearer.get_secret_value()}"
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._token, lifetime = await self._fetch()
                self.issued += 1
                self._expires_at = self._clock() + lifetime - min(self._margin_s, lifetime / 2)
            return f"Bearer {self._token}"

    async def rejected(self, authorization: str) -> None:
        """A server answered 401 to `authorization`: forget that token (unless a concurrent job
        already replaced it), so the next authorization() fetches a fresh one."""
        async with self._lock:
            if self._token is not None and authorization == f"Bearer {self._token}":
                self._token = None

    async def _fetch(self) -> tuple[str, float]:
        oauth2 = self._auth.oauth2
        assert oauth2 is not None
        what = f"{self._what}: token endpoint"
        form = {
            "grant_type": "client_credentials",
            "client_id": oauth2.client_id,
            "client_secret": oauth2.client_secret.get_secret_value(),
        }
        if oauth2.scope:
            form["scope"] = oauth2.scope
        try:
            response = await self._client.post(oauth2.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise transport_error(exc, what) from exc
        if response.status_code != 200:
            error = refusal(response.status_code, response.headers, what)
            if isinstance(error, PermanentError):
                raise PermanentError(f"{self._what}: token endpoint refused: {response.status_code}")
            raise error
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
