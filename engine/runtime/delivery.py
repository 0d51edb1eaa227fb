"""Delivery workers: one per (channel, destination), working that queue head first.

Every attempt's result is durable before the next one starts: sent (with the peer's response
sealed beside the message), retried later with exponential backoff, or dead-lettered with the
last error after the destination's max_attempts (or at once for a permanent error). A retryable
error's `retry_after` (the peer's Retry-After, seconds) puts the next attempt no sooner. A restart
resumes from the table: nothing queued lives only in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from engine.config.schema import RetryPolicy
from engine.core.clock import utcnow
from engine.core.component import Destination, Outbound
from engine.core.errors import PermanentError, RetryableError
from engine.core.lease import OwnedLease
from engine.runtime.context import Context
from engine.store.leases import Leases
from engine.store.queue import Due, Queues, backoff

log = logging.getLogger("radbridge.delivery")
POLL_S = 5.0  # also picks up work queued by another process (reprocess from the CLI)
MAX_RETRY_AFTER_S = 86400.0  # a peer's Retry-After is honoured up to a day: a bogus one must not stall the queue


class DeliveryWorker:
    def __init__(
        self,
        ctx: Context,
        channel: str,
        name: str,
        destination: Destination,
        policy: RetryPolicy,
        body: str = "transformed",
        leases: Leases | None = None,
        outgoing: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.ctx = ctx
        self.channel = channel
        self.name = name
        self.destination = destination
        self.policy = policy
        self.body = body
        self.outgoing = outgoing  # e.g. HL7 de-identification for a destination outside the hospital
        self.queues = Queues(ctx.db)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.leases = leases
        self._lease = f"deliver:{channel}/{name}"
        self._lease_until = 0.0  # monotonic time until which our lease surely holds
        self._owned = OwnedLease(leases, self._lease) if leases is not None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"deliver {self.channel}/{self.name}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Let an attempt in progress finish and record its result (a delivery cut off between the
        peer's ACK and our write would be sent again after a restart), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout=grace_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._owned is not None:
            await self._owned.release_on_stop()
        await self.destination.close()

    async def _hold_lease(self) -> bool:
        """Several engines on one store: only the lease holder works this queue (in order); a dead
        holder's lease runs out and another engine takes over. Renewed at half its time."""
        if self.leases is None or self._owned is None:
            return True
        ttl = self.leases.ttl.total_seconds()
        if time.monotonic() < self._lease_until - ttl / 2:
            return True
        started = time.monotonic()
        if await asyncio.to_thread(self._owned.claim):
            self._lease_until = started + ttl
            return True
        self._lease_until = 0.0
        return False

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, seconds))
        self._wake.clear()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                due = await asyncio.to_thread(self.queues.head, self.channel, self.name)
            except Exception as exc:  # noqa: BLE001 - the store may be briefly unavailable
                log.error("queue %s/%s unreadable: %s", self.channel, self.name, type(exc).__name__)
                await self._sleep(POLL_S)
                continue
            if due is None or self._stopping:
                await self._sleep(POLL_S)
                continue
            if not await self._hold_lease():
                await self._sleep(min(POLL_S, self.leases.ttl.total_seconds() / 3))  # type: ignore[union-attr]
                continue
            wait = (due.next_attempt_at - utcnow()).total_seconds() if due.next_attempt_at else 0.0
            if wait > 0:
                await self._sleep(min(wait, POLL_S))
                continue
            await self.attempt(due)

    async def attempt(self, due: Due) -> str:
        """One delivery attempt of the queue's head; returns the delivery's new status."""
        ctx, message_id, attempts = self.ctx, due.message_id, due.attempts + 1
        view = ctx.messages.get(message_id)
        part = "transformed" if self.body == "transformed" and view and "transformed" in view.parts else "raw"
        body = await asyncio.to_thread(ctx.messages.read, message_id, part)
        kind = view.kind if view else ""
        started = utcnow()
        response, error, status, next_at, note = None, None, "sent", None, ""
        try:
            if self.outgoing is not None:
                body = await asyncio.to_thread(self.outgoing, body)
            delivered = await self.destination.send(Outbound(message_id, self.name, body, kind))
            response, note = delivered.response, delivered.detail
        except RetryableError as exc:
            error, response = str(exc) or type(exc).__name__, getattr(exc, "response", None)
            if attempts >= self.policy.max_attempts:
                status = "dead"
            else:
                status = "queued"
                next_at = utcnow() + backoff(attempts, self.policy.backoff_s, self.policy.max_backoff_s)
                wait = getattr(exc, "retry_after", None)  # the peer's Retry-After: never sooner than it asked
                if isinstance(wait, int | float) and wait > 0:
                    next_at = max(next_at, utcnow() + timedelta(seconds=min(float(wait), MAX_RETRY_AFTER_S)))
        except PermanentError as exc:
            error, status, response = str(exc) or type(exc).__name__, "dead", getattr(exc, "response", None)
        except Exception as exc:  # noqa: BLE001 - a connector bug must not stop the queue; retry it
            error = f"unexpected {type(exc).__name__}"
            # The type only: a connector's exception text or traceback could quote message content.
            log.error("destination %s/%s failed unexpectedly: %s", self.channel, self.name, type(exc).__name__)
            status = "dead" if attempts >= self.policy.max_attempts else "queued"
            if status == "queued":
                next_at = utcnow() + backoff(attempts, self.policy.backoff_s, self.policy.max_backoff_s)
        item = Queues.mark(message_id, self.name, status, attempts, error, next_at)
        if response is not None:  # the peer's answer, kept sealed; a later attempt's answer replaces it
            item.extend(ctx.messages.put_part(message_id, f"response:{self.name}", response))
        overall = await asyncio.to_thread(self.queues.overall, message_id, {self.name: status})
        item.extend(ctx.messages.set_status(message_id, overall, error if overall == "dead" else None))
        action = {"sent": "message.sent", "queued": "message.send_failed", "dead": "message.dead"}[status]
        item.audit.append(
            ctx.audit.event(
                action, actor=f"service:channel/{self.channel}", outcome="success" if status == "sent" else "failure",
                record_ids=[message_id],
                detail={"destination": self.name, "attempt": attempts, "error": error, "note": note or None,
                        "ms": round((utcnow() - started).total_seconds() * 1000, 1)},
            )
        )  # fmt: skip
        await ctx.writer.awrite(item)
        if status != "sent":
            log.warning(
                "delivery %s/%s message %s attempt %d: %s", self.channel, self.name, message_id, attempts, status
            )
        return status
