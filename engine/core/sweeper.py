"""A built-in stage's periodic sweep (timers, recalls), run by one engine at a time under a lease:
another engine takes over when this one stops or dies (the lease expires)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from engine.core.lease import OwnedLease


class Sweeper:
    def __init__(self, name: str, interval_s: float, leases: Any, sweep: Callable[[], Awaitable[Any]],
                 log: logging.Logger) -> None:  # fmt: skip
        self.name, self.interval_s, self.leases, self.sweep, self.log = name, interval_s, leases, sweep, log
        self.lease = f"sweep:{name}"
        self._owned = OwnedLease(leases, self.lease) if leases is not None else None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name} sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._owned is not None:
            await self._owned.release_on_stop()

    async def _run(self) -> None:
        while True:
            try:
                if self._owned is None or await asyncio.to_thread(self._owned.claim):
                    await self.sweep()
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                self.log.error("%s: sweep failed: %s", self.name, type(exc).__name__)
            await asyncio.sleep(self.interval_s)


class SweptStage:
    """What the correlation and outputs stages share: they read their topics (config.topics) into
    `receive`, and run `sweep_once` every config.sweep_s under a lease. Subclasses set `label`."""

    label = "stage"
    ctx: Any
    config: Any
    rt: Any
    leases: Any
    _sweeper: Sweeper | None

    async def receive(self, inbound: Any) -> Any:
        raise NotImplementedError

    async def sweep_once(self) -> int:
        raise NotImplementedError

    async def start(self, sink: Any) -> list[str]:
        if self.rt is None or self.ctx.topics is None:
            raise RuntimeError(f"the {self.label} stage runs inside the engine")
        for topic in self.config.topics:
            self.ctx.topics.subscribe(topic, self.receive)
        log = logging.getLogger(f"radbridge.{self.label}")
        self._sweeper = Sweeper(f"{self.label}/{self.ctx.channel}", self.config.sweep_s, self.leases, self.sweep_once,
                                log)  # fmt: skip
        self._sweeper.start()
        return [f"{self.label} of {', '.join(self.config.topics)}"]

    async def stop(self) -> None:
        unsubscribe = getattr(self.ctx.topics, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(self.receive)
        if self._sweeper is not None:
            await self._sweeper.stop()
