"""A running engine inside the test's event loop (no subprocess): start, stop, restart, wait for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from engine.runtime.context import Context, open_context
from engine.runtime.engine import Engine


class EngineWorld:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ctx: Context | None = None
        self.engine: Engine | None = None

    async def start(self) -> None:
        self.ctx = open_context(self.root)
        self.engine = Engine(self.ctx)
        await self.engine.start()

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self.ctx is not None:
            self.ctx.close()
        self.engine = self.ctx = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def until(self, check: Callable[[], bool], timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            assert loop.time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.05)
