"""Leases: one engine process at a time works a shared queue; a dead holder's lease expires.

A lease row is claimed under a row lock taken with FOR UPDATE SKIP LOCKED on PostgreSQL (a node
that finds the row locked by another's claim simply tries later) and under SQLite's write lock
(BEGIN IMMEDIATE) there. Holding a lease means: renew it before it expires, or lose it.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from engine.core.clock import utcnow
from engine.core.ids import new_id
from engine.store.tables import Lease

_leases = Lease.__table__


def holder_id(node: str) -> str:
    """Unique per process: node, host, pid and a random tail (a restarted process is a new holder)."""
    return f"{node}/{socket.gethostname()}/{os.getpid()}/{new_id()[-8:]}"[:120]


def holder_dead(holder: str) -> bool:
    """A holder on this host whose process is gone (a crash and restart) need not be waited out."""
    parts = holder.split("/")
    if len(parts) < 4 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Leases:
    def __init__(self, engine: Engine, holder: str, ttl: timedelta) -> None:
        self.engine = engine
        self.holder = holder
        self.ttl = ttl

    def claim(self, name: str) -> bool:
        """Take or renew the lease; False while another live holder has it."""
        try:
            return self._claim(name)
        except IntegrityError:  # another node inserted the first row at the same moment
            return False

    def _claim(self, name: str) -> bool:
        now = utcnow()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(_leases.c.holder, _leases.c.expires_at).where(_leases.c.name == name)
                .with_for_update(skip_locked=True)
            ).first()  # fmt: skip
            if row is None:
                exists = conn.execute(select(_leases.c.name).where(_leases.c.name == name)).first()
                if exists is not None:  # locked by another node's claim right now
                    return False
                conn.execute(insert(_leases).values(name=name, holder=self.holder, expires_at=now + self.ttl))
                return True
            if row.holder != self.holder and row.expires_at > now and not holder_dead(row.holder):
                return False
            conn.execute(
                update(_leases).where(_leases.c.name == name).values(holder=self.holder, expires_at=now + self.ttl)
            )
            return True

    def release(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(_leases).where(_leases.c.name == name, _leases.c.holder == self.holder))
