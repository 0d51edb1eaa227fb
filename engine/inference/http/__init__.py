"""Model clients that reach a model server over HTTP(S).

- transport.py: the one httpx client construction (TLS from engine.security.tls, timeouts from the
  model's `timeout_s`, HTTP/1.1), authentication, and the one mapping of answers to errors.
- auth.py: bearer tokens and OAuth2 client credentials (engine.security.oauth2: cached, refreshed, shared).
- oip.py: Open Inference Protocol (KServe v2 REST, JSON tensors).
- upload.py: the de-identified study as DICOM (multipart/related or STOW-RS), answered in JSON
  synchronously, by polling, or by a callback (callbacks.py).
- answer.py: the JSON result format a model server returns, validated into a Result.

`RetryLater` lives here so the job queue can honour a server's Retry-After without importing a client.
"""

from __future__ import annotations

from engine.core.errors import RetryableError


class RetryLater(RetryableError):
    """A transient refusal (408, 429, 5xx). `retry_after` is the wait in seconds the server asked
    for (Retry-After), None when it named none."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
