"""A destination's RetryableError with `retry_after` (a peer's Retry-After) puts the next delivery attempt
no sooner than that, through the real delivery queue; without one, the backoff alone decides."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from engine.core.clock import utcnow
from engine.core.component import ComponentContext, Delivered, Inbound, Outbound
from engine.core.errors import RetryableError
from engine.core.registry import register
from engine.store.queue import Queues
from tests.runtime.conftest import INBOXES, running

WAITS: list[float | None] = []  # retry_after of each answer to give; empty: deliver


class BusyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field("", description="Unused.")


class Busy(RetryableError):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__("peer busy (test)")
        self.retry_after = retry_after


@register("destination", "test-busy")
class BusyPeer:
    Config = BusyConfig

    def __init__(self, config: BusyConfig, ctx: ComponentContext) -> None:
        pass

    async def send(self, message: Outbound) -> Delivered:
        if WAITS:
            raise Busy(WAITS.pop(0))
        return Delivered(detail="ok")

    async def close(self) -> None:
        return None


CHANNEL = """\
    name: busy
    source: {kind: test-inbox}
    destinations:
      - name: peer
        kind: test-busy
        retry: {max_attempts: 5, backoff_s: 0.5, max_backoff_s: 0.5}  # wide enough to see the queued attempt
    """
ORM = b"MSH|^~\\&|RIS|HOSP|RB|HOSP|20261121||ORM^O01|C1|P|2.3.1\rZZZ|x\r"


async def _first_failure(root: Path, wait: float | None) -> timedelta:
    """How far ahead the next attempt was put after one failure answering `wait`."""
    WAITS[:] = [wait]
    (root / "channels" / "busy.yaml").write_text(textwrap.dedent(CHANNEL))
    async with running(root) as engine:
        before = utcnow()
        outcome = await INBOXES["busy"](Inbound(raw=ORM, kind="hl7v2", peer="127.0.0.1:5000", decoded=object(),
                                                type="ORM^O01"))  # fmt: skip
        queues = Queues(engine.ctx.db)
        for _ in range(500):
            due = await asyncio.to_thread(queues.head, "busy", "peer")
            if due is not None and due.attempts == 1:
                break
            await asyncio.sleep(0.01)
        assert due is not None and due.message_id == outcome.message_id and due.next_attempt_at is not None
        return due.next_attempt_at - before


async def test_retry_after_delays_the_next_attempt(runtime_project: Path) -> None:
    ahead = await _first_failure(runtime_project, 30.0)
    assert timedelta(seconds=29.5) <= ahead <= timedelta(seconds=31)


async def test_without_retry_after_the_backoff_decides(runtime_project: Path) -> None:
    ahead = await _first_failure(runtime_project, None)
    assert ahead <= timedelta(seconds=1)


async def test_a_bogus_retry_after_is_capped_at_a_day(runtime_project: Path) -> None:
    ahead = await _first_failure(runtime_project, 10 * 365 * 86400.0)
    assert timedelta(hours=23, minutes=59) <= ahead <= timedelta(days=1, seconds=5)
