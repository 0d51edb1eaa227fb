"""Operators' read-only queries: message counts per channel and status, delivery queue depths, and
the sizes of a message's sealed parts. Never content.

Ids are UUIDv7, so an id carries its arrival time: the `since` window is a range of the primary keys
(messages.id, deliveries.message_id; see `recent`), and a queue's oldest waiting message is its
MIN(message_id), which dates itself without reading the messages table.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import CTE, ColumnElement, Engine, func, select

from engine.store.tables import Content, Delivery, Message

_messages = Message.__table__
_deliveries = Delivery.__table__
_contents = Content.__table__


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


@dataclass
class QueueStats:
    """One (channel, destination) delivery queue."""

    destination: str
    counts: dict[str, int] = field(default_factory=dict)  # delivery status -> deliveries
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
    `since` when given, all time otherwise)."""
    m: Any = _messages.c
    d: Any = _deliveries.c
    if since is not None:
        m = recent("day_messages", m.id, since, m.channel, m.status).c
        d = recent("day_deliveries", d.message_id, since, d.channel, d.destination, d.status, d.message_id).c
    by_status = select(m.channel, m.status, func.count()).group_by(m.channel, m.status)
    by_queue = select(d.channel, d.destination, d.status, func.count(), func.min(d.message_id)).group_by(
        d.channel, d.destination, d.status
    )
    found: dict[str, ChannelStats] = {}
    with engine.connect() as conn:
        for channel, status, count in conn.execute(by_status):
            found.setdefault(channel, ChannelStats(channel)).messages[status] = count
        for channel, destination, status, count, oldest in conn.execute(by_queue):
            stats = found.setdefault(channel, ChannelStats(channel))
            queue = stats.queues.setdefault(destination, QueueStats(destination))
            queue.counts[status] = count
            if status == "queued":
                queue.oldest_queued, queue.oldest_queued_at = oldest, id_time(oldest)
    return found


def part_sizes(engine: Engine, message_id: str) -> Mapping[str, int]:
    """The names and plaintext sizes of a message's sealed parts (raw, transformed, sent:..., response:...)."""
    query = select(_contents.c.part, _contents.c.size).where(_contents.c.message_id == message_id)
    with engine.connect() as conn:
        return {part: size for part, size in conn.execute(query).all()}
