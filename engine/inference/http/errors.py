"""The one mapping from what a model server (or its token endpoint) answered to the engine's errors.

408, 429 and 5xx are transient (RetryLater, with the server's Retry-After); any other refusal is
permanent. Messages carry the status and what was asked, never a response body: a model server
may echo the request (a de-identified study can still hold something a site considers sensitive)
and a token endpoint's answer holds credentials.
"""

from __future__ import annotations

import httpx

from engine.core.errors import PermanentError, RadbridgeError
from engine.inference.http import RetryLater
from engine.security.oauth2 import retry_after, transport_error

__all__ = ["refusal", "retry_after", "transport_error"]

_TRANSIENT = {408, 429}


def refusal(status: int, headers: httpx.Headers, what: str) -> RadbridgeError:
    """The error for a non-success status; `what` says who answered, e.g. "model ich-ct 1.2: infer"."""
    if status in _TRANSIENT or status >= 500:
        return RetryLater(f"{what}: server answered {status}", retry_after(headers.get("retry-after")))
    return PermanentError(f"{what}: server refused: {status}")
