"""What the web layer works with: the engine's context, its running channels (when serving inside
`radbridge run`), and the user, token, session and break-glass repositories, built once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.core.clock import utcnow
from engine.runtime.context import Context
from engine.runtime.engine import Engine
from engine.store.breakglass import BreakGlass
from engine.store.credentials import Sessions, Tokens
from engine.store.users import Users

# A model server's late result: (job id, body, token) -> HTTP status (200 taken, 404 no such job
# awaits it or wrong token, 422 not a valid result).
Callback = Callable[[str, bytes, str], int]
Ready = Callable[[], tuple[bool, dict[str, str]]]


@dataclass
class Site:
    ctx: Context
    users: Users
    tokens: Tokens
    sessions: Sessions
    grants: BreakGlass
    ready: Ready
    engine: Engine | None = None  # None when no channels run in this process (then start/stop is refused)
    callback: Callback | None = None
    clock: Callable[[], datetime] = utcnow
    extras: dict[str, Any] = field(default_factory=dict)  # per-feature state (OIDC discovery cache, ...)

    @classmethod
    def open(cls, ctx: Context, ready: Ready, *, engine: Engine | None = None, callback: Callback | None = None,
             users: Users | None = None) -> Site:  # fmt: skip
        policy = ctx.project.engine.auth
        users = users or Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, policy)
        return cls(
            ctx=ctx,
            users=users,
            tokens=Tokens(ctx.db, ctx.writer, ctx.audit.event, policy),
            sessions=Sessions(ctx.db, ctx.writer, ctx.audit.event, policy.sessions),
            grants=BreakGlass(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, users),
            ready=ready,
            engine=engine,
            callback=callback,
        )
