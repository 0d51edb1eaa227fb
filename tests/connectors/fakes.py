"""What connector tests hand a source or destination in place of the engine: a sink answering
chosen Outcomes that records every Inbound, an audit hook, and a StateStore in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

from engine.core.component import ComponentContext, Inbound, Outcome

WAIT = 10.0  # upper bound of any single wait in the connector tests


class Recorder:
    """The sink answers `outcome`: fixed, computed from the Inbound, or an exception to raise. Set
    `gate` to hold messages in flight (`entered` tells one arrived) or `delay` to answer slowly."""

    def __init__(self, outcome: Outcome | Callable[[Inbound], Outcome] | Exception = Outcome("accepted", "m1")) -> None:
        self.outcome = outcome
        self.inbounds: list[Inbound] = []
        self.audits: list[tuple[str, dict[str, Any]]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.delay = 0.0

    async def sink(self, inbound: Inbound) -> Outcome:
        self.inbounds.append(inbound)
        self.entered.set()
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), WAIT)
        await asyncio.sleep(self.delay)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome(inbound) if callable(self.outcome) else self.outcome

    async def audit(self, action: str, **fields: Any) -> None:
        self.audits.append((action, fields))

    def actions(self) -> list[str]:
        return [a for a, _ in self.audits]

    def text(self) -> bytes:
        return repr(self.audits).encode()

    async def wait_audit(self, action: str, timeout: float = WAIT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for a, fields in self.audits:
                    if a == action:
                        return fields
                await asyncio.sleep(0.01)


class MemoryState:
    """The StateStore protocol in memory (survives a source restart, not a process restart)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.puts: list[tuple[str, bytes]] = []

    def get(self, name: str) -> bytes | None:
        return self.values.get(name)

    async def put(self, name: str, value: bytes) -> None:
        self.values[name] = value
        self.puts.append((name, value))


def context(rec: Recorder, root: Path = Path("/"), channel: str = "test", **extra: Any) -> ComponentContext:
    return ComponentContext(channel=channel, root=root, audit=rec.audit, site_tz=UTC, **extra)
