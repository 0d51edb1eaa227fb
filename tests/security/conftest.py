"""Fixtures for the users/tokens/sessions/break-glass tests: the repositories on a real store (SQLite and
PostgreSQL through the `ctx` fixture), a fast argon2 hasher, and a reader of the audit entries."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from engine.runtime.context import Context
from engine.security.passwords import Passwords
from engine.store.breakglass import BreakGlass
from engine.store.credentials import Sessions, Tokens
from engine.store.tables import AuditRow
from engine.store.users import Users


@pytest.fixture
def fast_passwords() -> Passwords:
    """argon2id with small parameters: the real defaults are tested on their own, once."""
    return Passwords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))


@pytest.fixture
def repos(ctx: Context, fast_passwords: Passwords) -> SimpleNamespace:
    users = Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, hasher=fast_passwords)
    return SimpleNamespace(
        users=users,
        tokens=Tokens(ctx.db, ctx.writer, ctx.audit.event),
        sessions=Sessions(ctx.db, ctx.writer, ctx.audit.event),
        grants=BreakGlass(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, users),
    )


@pytest.fixture
def audit(ctx: Context) -> Callable[[str], list[dict[str, Any]]]:
    """The audit entries of one action, oldest first, with their sealed detail opened."""

    def read(action: str) -> list[dict[str, Any]]:
        with ctx.db.connect() as conn:
            rows = conn.execute(select(AuditRow).where(AuditRow.action == action).order_by(AuditRow.seq)).all()
        return [{"actor": r.actor, "outcome": r.outcome, "purpose": r.purpose, "peer": r.peer,
                 "record_ids": json.loads(r.record_ids), "detail": ctx.audit.open_detail(r.id, r.detail)}
                for r in rows]  # fmt: skip

    return read


@pytest.fixture
def all_audit_text(ctx: Context) -> Callable[[], str]:
    """Every audit entry, detail opened, as one text: to assert a secret never reached the trail."""

    def read() -> str:
        with ctx.db.connect() as conn:
            rows = conn.execute(select(AuditRow).order_by(AuditRow.seq)).all()
        return "\n".join(
            json.dumps([r.actor, r.action, r.purpose, r.record_ids, r.indexes, ctx.audit.open_detail(r.id, r.detail)],
                       default=str)
            for r in rows
        )  # fmt: skip

    return read
