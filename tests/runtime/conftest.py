"""Test components for the runtime: a source whose sink the test calls, and a destination whose
answers the test scripts. They are registered only in the tests (names start with test-)."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from engine.core.component import ComponentContext, Delivered, Outbound, Sink
from engine.core.errors import PermanentError, RetryableError
from engine.core.registry import register
from engine.runtime.context import Context, open_context
from engine.runtime.engine import Engine
from engine.security import keyring
from tests.conftest import write_project

INBOXES: dict[str, Sink] = {}
SCRIPTS: dict[str, list[str]] = {}  # destination label -> answers to give: ok | retry | fail
RECEIVED: dict[str, list[bytes]] = {}


class InboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accept_types: list[str] = Field(default_factory=list, description="Message types accepted.")


@register("source", "test-inbox")
class Inbox:
    Config = InboxConfig

    def __init__(self, config: InboxConfig, ctx: ComponentContext) -> None:
        self.ctx, self.accept_types = ctx, config.accept_types

    def accepts(self, message_type: str | None) -> bool:
        return not self.accept_types or message_type in self.accept_types

    async def start(self, sink: Sink) -> list[str]:
        INBOXES[self.ctx.channel] = sink
        return [f"inbox {self.ctx.channel}"]

    async def stop(self) -> None:
        INBOXES.pop(self.ctx.channel, None)


class ScriptedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(description="Key into SCRIPTS / RECEIVED.")


@register("destination", "test-scripted")
class Scripted:
    Config = ScriptedConfig

    def __init__(self, config: ScriptedConfig, ctx: ComponentContext) -> None:
        self.label = config.label

    async def send(self, message: Outbound) -> Delivered:
        script = SCRIPTS.setdefault(self.label, [])
        answer = script.pop(0) if script else "ok"
        if answer == "retry":
            raise RetryableError("peer unavailable (test)")
        if answer == "fail":
            raise PermanentError("peer refused (test)")
        RECEIVED.setdefault(self.label, []).append(message.body)
        return Delivered(response=b"ACK " + message.message_id.encode(), detail="ok")

    async def close(self) -> None:
        return None


CHANNELS = {
    "inbox.yaml": """\
        name: inbox
        source: {kind: test-inbox, accept_types: [ORM^O01]}
        destinations:
          - name: peer
            kind: test-scripted
            label: peer
            retry: {max_attempts: 3, backoff_s: 0.01, max_backoff_s: 0.02}
        """,
}


@pytest.fixture
def runtime_project(tmp_path: Path) -> Path:
    root = write_project(tmp_path / "p")
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    for name, text in CHANNELS.items():
        (root / "channels" / name).write_text(textwrap.dedent(text))
    SCRIPTS.clear()
    RECEIVED.clear()
    return root


@contextlib.asynccontextmanager
async def running(root: Path) -> AsyncIterator[Engine]:
    """An engine on the project at `root`, its channels started; stopped and closed afterwards."""
    ctx: Context = open_context(root)
    eng = Engine(ctx)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()
        ctx.close()


@pytest.fixture
async def engine(runtime_project: Path) -> AsyncIterator[Engine]:
    async with running(runtime_project) as eng:
        yield eng
