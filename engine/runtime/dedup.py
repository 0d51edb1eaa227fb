"""Which messages a channel has seen recently, to recognise a sender's repeat without a query per
message.

Loaded from the store when the channel starts (its messages within the duplicate window) and kept
up to date by the channel itself. It answers alone only when the load covered the whole window
and this process is the only writer of the channel (SQLite: one engine per store); otherwise, or
for a key it does not hold, the caller asks the store.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import timedelta

from sqlalchemy import Engine, select

from engine.core.clock import utcnow
from engine.store.tables import Message

_messages = Message.__table__
Seen = list[tuple[str, str | None]]  # (message id, content MAC), newest first


class RecentMessages:
    def __init__(self, db: Engine, channel: str, window: timedelta, limit: int = 200_000) -> None:
        self.window_s = window.total_seconds()
        self._keys: dict[str, Seen] = {}
        self._order: deque[tuple[float, str, str]] = deque()  # (monotonic time, key, message id)
        query = (
            select(_messages.c.id, _messages.c.control_idx, _messages.c.content_mac)
            .where(
                _messages.c.channel == channel,
                _messages.c.received_at >= utcnow() - window,
                _messages.c.control_idx.is_not(None),
            )
            .order_by(_messages.c.id)
            .limit(limit + 1)
        )
        with db.connect() as conn:
            rows = conn.execute(query).all()
        # Complete only if every message of the window fits and nobody else writes this store.
        self.complete = len(rows) <= limit and db.dialect.name == "sqlite" and self.window_s > 0
        now = time.monotonic()  # loaded entries age out one window after the load at the latest
        for row in rows[:limit]:
            self.add(row.control_idx, row.id, row.content_mac, now)

    def get(self, key: str) -> Seen | None:
        """The recent messages under this key; [] when it is certain there are none; None: ask the store."""
        self._expire()
        found = self._keys.get(key)
        if found is not None:
            return found
        return [] if self.complete else None

    def add(self, key: str, message_id: str, mac: str | None, now: float | None = None) -> None:
        self._keys.setdefault(key, []).insert(0, (message_id, mac))
        self._order.append((now if now is not None else time.monotonic(), key, message_id))

    def _expire(self) -> None:
        horizon = time.monotonic() - self.window_s
        while self._order and self._order[0][0] < horizon:
            _, key, message_id = self._order.popleft()
            entries = [e for e in self._keys.get(key, []) if e[0] != message_id]
            if entries:
                self._keys[key] = entries
            else:
                self._keys.pop(key, None)
