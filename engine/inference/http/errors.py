"""The one mapping from what a model server (or its token endpoint) answered to the engine's errors.

408, 429 and 5xx are transient (RetryLater, with the server's Retry-After); any other refusal is
permanent. Messages carry the status and what was asked, never a response body: a model server
may echo the request (a de-identified study can still hold something a site considers sensitive)
and a token endpoint's answer holds credentials.
"""

from __future__ import annotations

import datetime
import email.utils
import ssl

import httpx

from engine.core.errors import PermanentError, RadbridgeError, RetryableError
from engine.inference.http import RetryLater

_TRANSIENT = {408, 429}


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


def refusal(status: int, headers: httpx.Headers, what: str) -> RadbridgeError:
    """The error for a non-success status; `what` says who answered, e.g. "model ich-ct 1.2: infer"."""
    if status in _TRANSIENT or status >= 500:
        return RetryLater(f"{what}: server answered {status}", retry_after(headers.get("retry-after")))
    return PermanentError(f"{what}: server refused: {status}")


def _untrusted(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def transport_error(exc: httpx.TransportError, what: str) -> RadbridgeError:
    """A connection that failed: a certificate the configured CA did not sign will not become
    trusted by retrying (permanent); timeouts and refused or dropped connections are transient."""
    if _untrusted(exc):
        return PermanentError(f"{what}: TLS certificate of the server not trusted")
    if isinstance(exc, httpx.TimeoutException):
        return RetryableError(f"{what}: timed out ({type(exc).__name__})")
    return RetryableError(f"{what}: connection failed ({type(exc).__name__})")
