"""Guarded writes (optimistic concurrency): a row changed since it was read fails the item, whole."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.correlation.repo import Repo
from engine.runtime.context import Context
from engine.store.tables import Study
from engine.store.writer import StaleWrite, WriteItem


def _study(ctx: Context, key: str) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    row = {"key": key, "id": f"id-{key}", "channel": "c", "study_uid_idx": key, "state": "receiving", "reason": None,
           "instances": 0, "first_at": now, "last_at": now, "stable_due": None, "wait_due": None,
           "header_message": "m", "content_hash": None, "triggered_hash": None, "version": 0,
           "updated_at": now}  # fmt: skip
    ctx.writer.write(WriteItem(inserts=[(Study.__table__, row)]))


def test_stale_guard_fails_the_whole_item_and_a_fresh_one_applies(ctx: Context) -> None:
    _study(ctx, "k1")
    repo = Repo(ctx.db)
    seen = repo.study("k1")
    assert seen is not None
    ctx.writer.write(Repo.save_study(seen, seen.but(state="waiting")))  # someone else changes it first
    stale = Repo.save_study(seen, seen.but(state="ready"))
    _, other = ctx.messages.receive("c", "k", b"payload")  # written only if the guard holds
    stale.extend(other)
    with pytest.raises(StaleWrite):
        ctx.writer.write(stale)
    assert repo.study("k1").state == "waiting"  # type: ignore[union-attr]
    assert ctx.messages.list(channel="c") == []
    fresh = repo.study("k1")
    ctx.writer.write(Repo.save_study(fresh, fresh.but(state="ready")))  # type: ignore[arg-type]
    with ctx.db.connect() as conn:
        assert conn.execute(select(Study.__table__.c.state, Study.__table__.c.version)).one() == ("ready", 2)
