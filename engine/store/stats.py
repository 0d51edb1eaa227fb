"""Operators' read-only queries: message counts per channel and status, delivery queue depths, and
the sizes of a message's sealed parts. Never content.

Ids are UUIDv7, so an id carries its arrival time: the `since` window is a range of the primary keys
(messages.id, deliveries.message_id; see `recent`). The backlog (queued and dead deliveries) is
counted however old, by seeks in ix_deliveries_queue, and a queue's oldest waiting message is its
MIN(message_id), which dates itself without reading the messages table.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import CTE, ColumnElement, Connection, Engine, func, select, tuple_

from engine.store.tables import Content, Delivery, Message

_messages = Message.__table__
_deliveries = Delivery.__table__
_contents = Content.__table__
BACKLOG = ("queued", "dead")  # delivery states that stay until something or someone acts


def id_floor(when: datetime) -> str:
    """The smallest UUIDv7 of the millisecond `when`: every id made at or after it sorts >= this."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = int(when.timestamp() * 1000)
    value = (ms << 80) | (0x7 << 76) | (0b10 << 62)
    return str(uuid.UUID(int=value))


def id_time(record_id: str) -> datetime | None:
    """When a UUIDv7 was made (its first 48 bits are Unix milliseconds); None for another id form."""
    try:
        value = uuid.UUID(record_id)
    except ValueError:
        return None
    if value.version != 7:
        return None
    return datetime.fromtimestamp((value.int >> 80) / 1000, UTC)


def recent(name: str, id_column: ColumnElement[str], since: datetime, *columns: ColumnElement[object]) -> CTE:
    """`columns` of the rows whose UUIDv7 id is at or after `since`: a range of the primary key.
    MATERIALIZED because SQLite's planner would otherwise group along a covering index (such as
    ix_messages_channel) and read every row ever stored to count a day's."""
    return select(*columns).where(id_column >= id_floor(since)).cte(name).prefix_with("MATERIALIZED")


def queues(conn: Connection) -> list[tuple[str, str]]:
    """The (channel, destination) pairs that have deliveries: a loose index scan of ix_deliveries_queue,
    one seek per pair, where SELECT DISTINCT would read every delivery ever made."""
    d = _deliveries.c
    first = select(d.channel, d.destination).order_by(d.channel, d.destination).limit(1)
    found: list[tuple[str, str]] = []
    row = conn.execute(first).first()
    while row is not None:
        found.append((row[0], row[1]))
        row = conn.execute(first.where(tuple_(d.channel, d.destination) > tuple_(row[0], row[1]))).first()
    return found


def backlog(conn: Connection) -> dict[tuple[str, str], dict[str, tuple[int, str]]]:
    """Per queue, its deliveries in a BACKLOG state however old: status -> (count, oldest message id).
    Seeks in ix_deliveries_queue (channel, destination, status, message_id): reads the backlog only."""
    d = _deliveries.c
    found: dict[tuple[str, str], dict[str, tuple[int, str]]] = {}
    for channel, destination in queues(conn):
        q = (
            select(d.status, func.count(), func.min(d.message_id))
            .where(d.channel == channel, d.destination == destination, d.status.in_(BACKLOG))
            .group_by(d.status)
        )
        for status, count, first in conn.execute(q):
            found.setdefault((channel, destination), {})[status] = (count, first)
    return found


@dataclass
class QueueStats:
    """One (channel, destination) delivery queue."""

    destination: str
    counts: dict[str, int] = field(default_factory=dict)  # status -> deliveries (BACKLOG states: however old)
    oldest_queued: str | None = None  # message id at the head of the queue
    oldest_queued_at: datetime | None = None

    def age_s(self, now: datetime) -> float | None:
        if self.oldest_queued_at is None:
            return None
        return max(0.0, (now - self.oldest_queued_at).total_seconds())


@dataclass
class ChannelStats:
    channel: str
    messages: dict[str, int] = field(default_factory=dict)  # message status -> messages
    queues: dict[str, QueueStats] = field(default_factory=dict)  # destination -> its queue


def channel_stats(engine: Engine, since: datetime | None = None) -> dict[str, ChannelStats]:
    """Per channel: messages by status and each destination's deliveries by status (received since
    `since` when given, all time otherwise), with the queued and dead ones counted however old."""
    with engine.connect() as conn:
        return channel_stats_on(conn, since)


def channel_stats_on(conn: Connection, since: datetime | None = None) -> dict[str, ChannelStats]:
    """`channel_stats` on an open connection (a metrics snapshot reads everything on one)."""
    m: Any = _messages.c
    d: Any = _deliveries.c
    if since is not None:
        m = recent("day_messages", m.id, since, m.channel, m.status).c
        d = recent("day_deliveries", d.message_id, since, d.channel, d.destination, d.status).c
    by_status = select(m.channel, m.status, func.count()).group_by(m.channel, m.status)
    by_queue = select(d.channel, d.destination, d.status, func.count()).group_by(d.channel, d.destination, d.status)
    found: dict[str, ChannelStats] = {}

    def queue(channel: str, destination: str) -> QueueStats:
        stats = found.setdefault(channel, ChannelStats(channel))
        return stats.queues.setdefault(destination, QueueStats(destination))

    for channel, status, count in conn.execute(by_status):
        found.setdefault(channel, ChannelStats(channel)).messages[status] = count
    for channel, destination, status, count in conn.execute(by_queue):
        if status not in BACKLOG:
            queue(channel, destination).counts[status] = count
    for (channel, destination), states in backlog(conn).items():
        waiting = queue(channel, destination)
        for status, (count, oldest) in states.items():
            waiting.counts[status] = count
            if status == "queued":
                waiting.oldest_queued, waiting.oldest_queued_at = oldest, id_time(oldest)
    return found


def part_sizes(engine: Engine, message_id: str) -> Mapping[str, int]:
    """The names and plaintext sizes of a message's sealed parts (raw, transformed, sent:..., response:...)."""
    query = select(_contents.c.part, _contents.c.size).where(_contents.c.message_id == message_id)
    with engine.connect() as conn:
        return {part: size for part, size in conn.execute(query).all()}
