"""The HTTP client for one FHIR server: authentication, TLS, timeouts, and the one mapping of its
answers to the engine's errors.

- TLS: `verify` is the context engine.security.tls builds from the destination's `tls` (mutual TLS when it
  names a client certificate). HTTP/1.1. The environment is not consulted (no proxy or CA bundle from
  variables) and redirects are not followed: a token must not travel to a host the configuration never named.
- Every request, token fetch included, is bounded by `timeout_s` as a whole.
- 401: the OAuth2 token is dropped and the request sent once more with a fresh one; a second 401 (or a
  401 to a static token) is permanent.

Answers -> errors (messages carry the status and OperationOutcome issue codes, never diagnostics text,
which may echo the request's patient data; an OperationOutcome body rides along as `response`, which the
delivery queue keeps sealed):
- 2xx: the answer.
- 408, 429, 5xx, timeouts, refused or dropped connections: FhirUnavailable (retryable), `retry_after` from
  the Retry-After header.
- 409 (a concurrent change), 412 to a request that carried If-Match (the version read is stale):
  FhirUnavailable; the next attempt reads again.
- Any other status, a server certificate the configured CA did not sign: FhirRefused (permanent).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from engine.core.errors import PermanentError, RetryableError
from engine.fhir.bundle import FHIR_JSON
from engine.security.oauth2 import AuthSettings, TokenSource, read_capped, retry_after, transport_error

__all__ = ["Answer", "FhirClient", "FhirRefused", "FhirUnavailable", "issue_codes", "outcome_of", "summary"]

MAX_ANSWER = 16 * 1024 * 1024
_CONNECT_S = 10.0
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class FhirUnavailable(RetryableError):
    """Try again later; `retry_after` is the wait the server asked for (seconds) or None, `response` the
    OperationOutcome it sent, if any."""

    def __init__(self, message: str, retry_after: float | None = None, response: bytes | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.response = response


class FhirRefused(PermanentError):
    """The server refused the request (HTTP `status`, None when it never answered one); `response` is its
    OperationOutcome, if it sent one."""

    def __init__(self, message: str, response: bytes | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.response = response
        self.status = status


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def location(self, default: str) -> str:
        """`Type/id` from the Location or Content-Location header (without _history), else `default`."""
        value = self.headers.get("location") or self.headers.get("content-location") or ""
        parts = value.split("/_history/")[0].rstrip("/").split("/")
        return "/".join(parts[-2:]) if len(parts) >= 2 and parts[-1] else default


def outcome_of(body: bytes) -> dict[str, Any] | None:
    """The OperationOutcome a body holds, or None."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) and document.get("resourceType") == "OperationOutcome" else None


def issue_codes(outcome: Mapping[str, Any]) -> list[str]:
    """issue.code and issue.details.coding.code values, in order, without repeats; anything that does not
    look like a code is left out (diagnostics and details.text are free text that may echo patient data)."""
    codes: list[str] = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        candidates = [issue.get("code")]
        details = issue.get("details")
        if isinstance(details, dict):
            candidates += [c.get("code") for c in details.get("coding") or [] if isinstance(c, dict)]
        codes += [c for c in candidates if isinstance(c, str) and _CODE.match(c)]
    return list(dict.fromkeys(codes))[:8]


def summary(body: bytes) -> str:
    """What a transaction-response Bundle says was done, e.g. 'DiagnosticReport/12 201, Observation/13 200':
    server ids and statuses only (not PHI)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "answer is not JSON"
    parts = []
    for entry in (document.get("entry") or []) if isinstance(document, dict) else []:
        response = entry.get("response") if isinstance(entry, dict) else None
        if not isinstance(response, dict):
            continue
        where = "/".join(str(response.get("location", "?")).split("/_history/")[0].split("/")[-2:])
        parts.append(f"{where} {str(response.get('status', '')).split(' ')[0]}".strip())
    text = ", ".join(parts) or "no entries"
    return text if len(text) <= 400 else text[:397] + "..."


class FhirClient:
    """Requests to one FHIR server (`base_url`), authenticated, with errors already mapped."""

    def __init__(self, base_url: str, *, verify: ssl.SSLContext, timeout_s: float, what: str,
                 auth: AuthSettings | None = None, root: Path | None = None) -> None:  # fmt: skip
        self.what = what
        self.timeout_s = timeout_s
        self.base = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.base + "/", verify=verify, http1=True, http2=False, trust_env=False,
            follow_redirects=False, timeout=httpx.Timeout(timeout_s, connect=min(_CONNECT_S, timeout_s)),
        )  # fmt: skip
        self.tokens = TokenSource(auth, self.http, what, root=root) if auth is not None else None

    async def close(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, url: str, *, step: str, body: bytes | None = None,
                      content_type: str = FHIR_JSON, headers: Mapping[str, str] | None = None,
                      versioned: bool = False) -> Answer:  # fmt: skip
        """Send; return a 2xx answer or raise the mapped error. `url` is relative to the base URL (""
        for the base itself); `step` names the request in errors, e.g. "message 7f3a: transaction";
        `versioned`: a transaction entry names a version read before (ifMatch), so a 412 means "stale"."""
        where = f"{self.what}: {step}"
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._request(method, url, where, body, content_type, dict(headers or {}), versioned)
        except TimeoutError:
            raise FhirUnavailable(f"{where}: no answer within {self.timeout_s:g} s") from None

    async def _request(self, method: str, url: str, where: str, body: bytes | None, content_type: str,
                       headers: dict[str, str], versioned: bool) -> Answer:  # fmt: skip
        headers.setdefault("Accept", FHIR_JSON)
        if body is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            sent = dict(headers)
            if self.tokens is not None:
                sent["Authorization"] = await self.tokens.authorization()
            try:
                async with self.http.stream(method, url or self.base, content=body, headers=sent) as response:
                    answer = Answer(
                        response.status_code,
                        response.headers,
                        await read_capped(response, MAX_ANSWER, where, FhirRefused),
                    )
            except httpx.TransportError as exc:
                error = transport_error(exc, where)
                raise (FhirUnavailable(str(error)) if isinstance(error, RetryableError) else error) from None
            if answer.status == 401 and self.tokens is not None and self.tokens.refreshes and attempt == 1:
                await self.tokens.rejected(sent["Authorization"])
                continue
            if 200 <= answer.status < 300:
                return answer
            raise _refusal(answer, where, versioned=versioned or "If-Match" in headers)
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def search(self, url: str, *, step: str) -> dict[str, Any]:
        """GET a search (relative URL with its query); the searchset Bundle."""
        answer = await self.request("GET", url, step=step)
        try:
            document = answer.json()
        except (ValueError, UnicodeDecodeError):
            raise FhirRefused(f"{self.what}: {step}: search answer is not JSON") from None
        if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
            raise FhirRefused(f"{self.what}: {step}: search answer is not a Bundle")
        return document


def _refusal(answer: Answer, where: str, *, versioned: bool) -> PermanentError | RetryableError:
    status = answer.status
    outcome = outcome_of(answer.body)
    codes = issue_codes(outcome) if outcome else []
    text = f"{where}: HTTP {status}" + (f" (OperationOutcome: {', '.join(codes)})" if codes else "")
    kept = answer.body if outcome else None
    if status in (408, 429) or status >= 500:
        return FhirUnavailable(text, retry_after(answer.headers.get("retry-after")), kept)
    if status == 409 or (status == 412 and versioned):
        return FhirUnavailable(f"{text}: changed concurrently", None, kept)
    if status == 401:
        text += ": credentials refused"
    elif status == 403:
        text += ": forbidden"
    elif 300 <= status < 400:
        text += ": redirects are not followed"
    return FhirRefused(text, kept, status)
