"""Results a model server posts back later (upload models with `result: callback`).

The client registers the job before it uploads (the answer may arrive before the upload's own
response), sends `X-Radbridge-Callback-Id: <job_id>` and `X-Radbridge-Callback-Token: <secret>`,
and awaits the future. The engine's web API
hands each callback body to `callbacks.deliver(job_id, body, token)`: it is parsed with the waiting
client's rules (format, version, thresholds), settles the job's future and returns the parsed
output, or raises — UnknownCallback (no job waits: answer 404) or PermanentError (garbage: answer
422; the waiting job fails with the same error). deliver may be called from any thread.

The registry is in memory: a callback must reach the engine node that sent the study.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from engine.core.errors import PermanentError, RetryableError
from engine.inference.models import ModelOutput

Parse = Callable[[bytes], ModelOutput]


class UnknownCallback(PermanentError):
    """No job awaits a callback under this id (never sent, already answered, or timed out)."""


@dataclass
class _Waiting:
    future: asyncio.Future[ModelOutput]
    loop: asyncio.AbstractEventLoop
    parse: Parse
    token: str  # sent with the upload; the model must post it back: only it can answer the job


class CallbackRegistry:
    def __init__(self) -> None:
        self._waiting: dict[str, _Waiting] = {}
        self._guard = threading.Lock()

    def expect(self, job_id: str, parse: Parse) -> asyncio.Future[ModelOutput]:
        """Register a job that awaits its result; call from the job's event loop."""
        loop = asyncio.get_running_loop()
        with self._guard:
            if job_id in self._waiting:
                raise RetryableError(f"job {job_id}: another attempt already awaits its callback")
            waiting = _Waiting(loop.create_future(), loop, parse, secrets.token_urlsafe(32))
            self._waiting[job_id] = waiting
        return waiting.future

    def forget(self, job_id: str, future: asyncio.Future[ModelOutput]) -> None:
        """Stop waiting (the job finished, failed or timed out); a later callback is then unknown."""
        with self._guard:
            waiting = self._waiting.get(job_id)
            if waiting is not None and waiting.future is future:
                del self._waiting[job_id]

    def token(self, job_id: str) -> str:
        """The secret the model server must present with this job's callback."""
        with self._guard:
            return self._waiting[job_id].token

    def pending(self) -> set[str]:
        with self._guard:
            return set(self._waiting)

    def deliver(self, job_id: str, body: bytes, token: str) -> ModelOutput:
        """The model posted `body` for `job_id` with the job's `token`: parse it, settle the waiting
        job, return the output. A wrong token is answered like an unknown job (nothing to probe)."""
        with self._guard:
            waiting = self._waiting.get(job_id)
            if waiting is None or not hmac.compare_digest(waiting.token.encode(), token.encode()):
                raise UnknownCallback(f"job {job_id}: no result awaited")
            del self._waiting[job_id]
        if waiting.loop.is_closed():
            raise UnknownCallback(f"job {job_id}: no result awaited")
        try:
            output = waiting.parse(body)
        except PermanentError as exc:
            _settle(waiting, exc)
            raise
        _settle(waiting, output)
        return output


def _settle(waiting: _Waiting, outcome: ModelOutput | BaseException) -> None:
    def settle() -> None:
        if waiting.future.done():  # timed out or cancelled meanwhile
            return
        if isinstance(outcome, BaseException):
            waiting.future.set_exception(outcome)
        else:
            waiting.future.set_result(outcome)

    waiting.loop.call_soon_threadsafe(settle)


callbacks = CallbackRegistry()
