"""Read-only aggregates for monitoring (the web's /metrics): counts by state, never a row's content.

Every query groups on indexed columns or reads a small table, and only names (channel, destination,
status, model, version, state) come back: no identifiers, nothing a label could leak PHI through.
One `snapshot()` is one read of each; the caller decides how often (a Prometheus scrape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select

from engine.config.auth import SessionPolicy
from engine.store.stats import BACKLOG, channel_stats_on
from engine.store.tables import AuditCheckpoint, AuditRow, BreakGlassGrant, InferenceJob, Study, UserSession

_jobs, _studies = InferenceJob.__table__, Study.__table__
_audit, _checkpoints = AuditRow.__table__, AuditCheckpoint.__table__
MESSAGES_WINDOW = timedelta(hours=24)
_grants, _sessions = BreakGlassGrant.__table__, UserSession.__table__


@dataclass
class Snapshot:
    messages: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, status)
    deliveries: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (channel, destination, status)
    backlog: dict[tuple[str, str, str], int] = field(default_factory=dict)  # same key: queued, dead, however old
    oldest_queued: dict[tuple[str, str], float] = field(default_factory=dict)  # (channel, destination) -> s
    jobs: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (model, version, state)
    studies: dict[str, int] = field(default_factory=dict)  # state
    audit_entries: int = 0
    last_checkpoint: datetime | None = None
    break_glass_in_force: int = 0
    sessions_active: int = 0


def _utc(value: datetime | str | None) -> datetime | None:
    """SQLite hands back naive datetimes (they are UTC) and the checkpoint time is RFC 3339 text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def snapshot(db: Engine, now: datetime, sessions: SessionPolicy) -> Snapshot:
    """The current counts. `sessions` gives the idle/absolute timeouts that decide which are active."""
    found = Snapshot()
    idle_since = now - timedelta(minutes=sessions.idle_minutes)
    born_since = now - timedelta(hours=sessions.absolute_hours)
    with db.connect() as conn:
        # The last day of messages and deliveries (a count over the whole store would read every row at
        # each scrape: a busy feed keeps millions), and the queued and dead ones however old: the
        # channels view's own counts (engine.store.stats), which read ranges only.
        for name, stats in channel_stats_on(conn, now - MESSAGES_WINDOW).items():
            found.messages.update({(name, status): n for status, n in stats.messages.items()})
            for destination, queue in stats.queues.items():
                for status, n in queue.counts.items():
                    (found.backlog if status in BACKLOG else found.deliveries)[(name, destination, status)] = n
                if (age := queue.age_s(now)) is not None:
                    found.oldest_queued[(name, destination)] = age
        j = _jobs.c
        q = select(j.model, j.model_version, j.state, func.count()).group_by(j.model, j.model_version, j.state)
        found.jobs = {(m, v, s): n for m, v, s, n in conn.execute(q)}
        q = select(_studies.c.state, func.count()).group_by(_studies.c.state)
        found.studies = {s: n for s, n in conn.execute(q)}
        # The chain numbers entries 1, 2, 3 ... per node and nothing is ever deleted: the heads are the
        # count, read from the primary key instead of counting every row.
        heads_q = select(_audit.c.node, func.max(_audit.c.seq)).group_by(_audit.c.node)
        found.audit_entries = sum(n or 0 for _node, n in conn.execute(heads_q))
        found.last_checkpoint = _utc(conn.execute(select(func.max(_checkpoints.c.ts))).scalar())
        g = _grants.c
        found.break_glass_in_force = conn.execute(
            select(func.count()).select_from(_grants).where(g.expires_at > now, g.ended_at.is_(None))
        ).scalar_one()
        s = _sessions.c
        found.sessions_active = conn.execute(
            select(func.count()).select_from(_sessions)
            .where(s.ended_at.is_(None), s.last_seen_at > idle_since, s.created_at > born_since)
        ).scalar_one()  # fmt: skip
    return found
