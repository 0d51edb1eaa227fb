"""The HTTP client every HTTP model client uses: one construction, one way to authenticate, one
mapping of answers to errors (engine.inference.http.errors).

- TLS: `verify` is the context engine.security.tls builds from the model's `tls` (the system CA
  store without one); HTTP/1.1 only.
- Timeouts: connect within min(10 s, timeout_s); each read, write and pool wait within timeout_s.
  The clients bound a whole inference by timeout_s on top of that.
- The environment is not consulted (trust_env=False): no proxy, .netrc or CA bundle from variables
  can redirect or re-authenticate traffic that carries studies; everything comes from models.yaml.
- Redirects are not followed: a credential must not travel to a host the configuration never named.
- Answers are read up to MAX_ANSWER bytes: a model's result is small, a runaway answer is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import httpx

from engine.core.errors import ConfigError
from engine.inference.http.auth import TokenSource
from engine.inference.http.errors import refusal, transport_error
from engine.inference.models import OipModel, UploadModel
from engine.security.oauth2 import read_capped
from engine.security.tls import client_context_for

MAX_ANSWER = 64 * 1024 * 1024
_CONNECT_S = 10.0

HttpModel = OipModel | UploadModel
Body = Callable[[], bytes | AsyncIterator[bytes]]  # called once per attempt: a stream is not replayable


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL


def what(config: HttpModel) -> str:
    """How errors name a model: its name and version (ids only)."""
    return f"model {config.name} {config.version}"


def http_client(config: HttpModel, root: Path) -> httpx.AsyncClient:
    """The httpx client for one model. `root` is the project root TLS file paths are relative to."""
    timeout = httpx.Timeout(config.timeout_s, connect=min(_CONNECT_S, config.timeout_s))
    return httpx.AsyncClient(
        verify=client_context_for(config.tls, root, what(config)),
        timeout=timeout,
        http1=True,
        http2=False,
        trust_env=False,
        follow_redirects=False,
    )


class ModelHttp:
    """Requests to one model server, authenticated, with errors already mapped."""

    def __init__(self, config: HttpModel, root: Path) -> None:
        self.what = what(config)
        oauth2 = config.auth.oauth2 if config.auth else None
        if config.external and oauth2 is not None and not oauth2.token_url.startswith("https://"):
            raise ConfigError(f"{self.what}: an external model's token endpoint is reached over https only")
        self.client = http_client(config, root)
        self.tokens = TokenSource(config.auth, self.client, self.what) if config.auth else None

    async def request(
        self,
        method: str,
        url: str,
        *,
        step: str,
        body: Body | None = None,
        headers: dict[str, str] | None = None,
        also: Collection[int] = (),
    ) -> Answer:
        """Send, and return the answer when its status is 2xx or in `also`; otherwise raise the mapped
        error. A 401 to an OAuth2 token is retried once with a fresh token. `step` names the request
        in errors ("infer", "metadata", ...)."""
        where = f"{self.what}: {step}"
        for attempt in (1, 2):
            sent = dict(headers or {})
            if self.tokens is not None:
                sent["Authorization"] = await self.tokens.authorization()
            try:
                async with self.client.stream(method, url, content=body() if body else None, headers=sent) as response:
                    if response.status_code == 401 and self.tokens is not None and self.tokens.refreshes:
                        await self.tokens.rejected(sent["Authorization"])
                        if attempt == 1:
                            continue
                    if not (response.is_success or response.status_code in also):
                        raise refusal(response.status_code, response.headers, where)
                    data = await read_capped(response, MAX_ANSWER, where)
                    return Answer(response.status_code, response.headers, data, response.url)
            except httpx.TransportError as exc:
                raise transport_error(exc, where) from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def close(self) -> None:
        await self.client.aclose()
