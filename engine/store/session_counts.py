"""How many web sessions each user has open now (the users pages show the count, never a session id)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select

from engine.config.auth import SessionPolicy
from engine.store.tables import UserSession

_sessions = UserSession.__table__


def active_sessions(db: Engine, now: datetime, policy: SessionPolicy, username: str | None = None) -> dict[str, int]:
    """username -> sessions not ended and within their idle and absolute timeouts at `now`."""
    query = (
        select(_sessions.c.username, func.count())
        .where(
            _sessions.c.ended_at.is_(None),
            _sessions.c.created_at > now - timedelta(hours=policy.absolute_hours),
            _sessions.c.last_seen_at > now - timedelta(minutes=policy.idle_minutes),
        )
        .group_by(_sessions.c.username)
    )
    if username is not None:
        query = query.where(_sessions.c.username == username)
    with db.connect() as conn:
        return {name: int(n) for name, n in conn.execute(query)}
