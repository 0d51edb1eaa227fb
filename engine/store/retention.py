"""Retention: purge messages older than their channel's retention, and leave nothing recoverable.

For each channel, messages received before `now - days` that no destination still waits for (no
delivery in status 'queued') are deleted in bounded batches, each batch one transaction: their
sealed contents (blob files are deleted after the commit), deliveries, data keys (deleting the
wrapped data key crypto-shreds the message) and the message rows. The audit trail is kept: every
run appends one `retention.purged` entry per channel, counts and cutoff in its sealed detail.

After a run that deleted anything, the freed space is scrubbed:

* SQLite: `secure_delete=ON` (engine.store.db) zeroes freed cells and pages as they are deleted, and
  `PRAGMA wal_checkpoint(TRUNCATE)` copies the zeroed pages into the database file and cuts the WAL,
  which still held the old page images, to zero length. A reader holding an old snapshot makes the
  checkpoint busy; it is retried, and the report says whether it succeeded (`scrubbed`).
* PostgreSQL: plain VACUUM is not enough. Pruning a page compacts its live tuples but does not clear
  the freed space, so a deleted tuple's bytes stay in the table file until that space is reused
  (measured on PostgreSQL 15: after DELETE + VACUUM + CHECKPOINT every deleted row's bytes were still
  in the file). Overwriting the column with zeros first does not help either: the UPDATE writes a new
  tuple version and the old one is dead space like any other. So the two tables holding key material
  and ciphertext, `data_keys` and `contents` (and its TOAST table), are rewritten with VACUUM FULL,
  which copies the live rows into new files and drops the old ones; `messages` and `deliveries` hold
  no PHI (blind indexes, ids, states) and get a plain VACUUM. VACUUM FULL holds an ACCESS EXCLUSIVE
  lock on the table while it copies: writers and readers of that table wait. `data_keys` is small
  (about 150 bytes a message) and `contents` holds only the parts small enough to inline (large parts
  are blob files), so on the intended volumes this is seconds; schedule the purge off-peak.

Limits, stated plainly:

* PostgreSQL's WAL (pg_wal) keeps full-page images of the pages as they were, including the deleted
  rows' wrapped keys and ciphertext, until those segments are recycled after later checkpoints, and
  WAL archives or replicas keep them as long as they are kept. Ciphertext there is useless without
  its data key, but the wrapped data keys are there too (protected by the KEK). Retention of the WAL
  archive and of backups is the operator's policy, not something this module can enforce.
* Files dropped or truncated (SQLite WAL, PostgreSQL's old relation files, blob files) are unlinked,
  not overwritten: their blocks are free on the file system until reused. Full-disk encryption is
  what protects freed blocks; on SSDs overwriting in place would not reach them anyway.
* A crash between a batch's commit and the deletion of its blob files leaves those files behind;
  they are sealed under a data key that no longer exists, so they are unreadable, and the next run
  does not find them (their rows are gone). `sweep_orphan_blobs` removes them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, and_, exists, func, select
from sqlalchemy.exc import OperationalError

from engine.core.clock import iso, utcnow
from engine.store.blobs import BlobFolder
from engine.store.tables import Content, DataKeyRow, Delivery, Message

_messages = Message.__table__
_contents = Content.__table__
_keys = DataKeyRow.__table__
_deliveries = Delivery.__table__

ACTION = "retention.purged"
_QUEUED = exists().where(and_(_deliveries.c.message_id == _messages.c.id, _deliveries.c.status == "queued"))


class _Audit(Protocol):
    def record(self, action: str, **fields: Any) -> None: ...


class _Messages(Protocol):
    blobs: BlobFolder


class Target(Protocol):
    """What purge needs; engine.runtime.context.Context is one (the store layer may not import it)."""

    db: Engine
    audit: _Audit
    messages: _Messages


@dataclass
class ChannelPurge:
    channel: str
    days: int
    cutoff: datetime
    messages: int = 0
    contents: int = 0
    blobs: int = 0
    deliveries: int = 0
    data_keys: int = 0
    batches: int = 0
    kept_queued: int = 0  # older than the cutoff but still awaiting delivery

    def detail(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "days": self.days,
            "cutoff": iso(self.cutoff),
            "messages": self.messages,
            "contents": self.contents,
            "blobs": self.blobs,
            "deliveries": self.deliveries,
            "data_keys": self.data_keys,
            "batches": self.batches,
            "kept_queued": self.kept_queued,
        }


@dataclass
class PurgeReport:
    now: datetime
    channels: list[ChannelPurge] = field(default_factory=list)
    scrubbed: bool = False  # SQLite WAL truncated / PostgreSQL tables vacuumed
    scrub: str = ""  # what was done to scrub freed space

    @property
    def messages(self) -> int:
        return sum(c.messages for c in self.channels)


def _days(value: int | None, channel: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"retention for channel {channel!r} must be a whole number of days >= 1, not {value!r}")
    return value


def purge(
    target: Target,
    *,
    channels: Mapping[str, int | None],
    default_days: int | None,
    batch_size: int,
    actor: str,
    now: datetime | None = None,
) -> PurgeReport:
    """Purge every channel: those in `channels` by their days (None: the default), any other channel
    found in the store by `default_days` (None: keep forever). Returns what was deleted."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    now = now or utcnow()
    report = PurgeReport(now=now)
    engine = target.db
    with engine.connect() as conn:
        stored = {r[0] for r in conn.execute(select(_messages.c.channel).distinct())}
    plan: dict[str, int] = {}
    for channel in sorted(stored | set(channels)):
        days = _days(channels.get(channel), channel) if channels.get(channel) is not None else None
        days = days if days is not None else _days(default_days, "(default)")
        if days is not None:
            plan[channel] = days
    for channel, days in plan.items():
        result = ChannelPurge(channel, days, now - timedelta(days=days))
        report.channels.append(result)
        try:
            _purge_channel(engine, target.messages.blobs, result, batch_size)
        except BaseException:
            target.audit.record(ACTION, actor=actor, outcome="failure", detail=result.detail())
            raise
        target.audit.record(ACTION, actor=actor, detail=result.detail())
    if any(c.messages or c.data_keys or c.contents for c in report.channels):
        report.scrubbed, report.scrub = scrub(engine)
    else:
        report.scrubbed, report.scrub = True, "nothing deleted"
    return report


def _purge_channel(engine: Engine, blobs: BlobFolder, result: ChannelPurge, batch_size: int) -> None:
    old = and_(_messages.c.channel == result.channel, _messages.c.received_at < result.cutoff)
    after = ""  # keyset over ids (UUIDv7: arrival order), so a skipped message never stalls the loop
    while True:
        with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, the write lock is held from here
            candidates = (
                select(_messages.c.id)
                .where(old, _messages.c.id > after, ~_QUEUED)
                .order_by(_messages.c.id)
                .limit(batch_size)
                .with_for_update(of=_messages, skip_locked=True)  # PostgreSQL only; SQLite ignores it
            )
            ids = [r[0] for r in conn.execute(candidates)]
            if not ids:
                break
            after = ids[-1]
            # A delivery may have been re-queued since the snapshot above (PostgreSQL, read committed):
            # lock the deliveries and look again, so a message someone waits for is never purged.
            requeued = {
                r[0]
                for r in conn.execute(
                    select(_deliveries.c.message_id, _deliveries.c.status)
                    .where(_deliveries.c.message_id.in_(ids))
                    .with_for_update()
                )
                if r[1] == "queued"
            }
            ids = [i for i in ids if i not in requeued]
            if not ids:
                continue
            names = [
                r[0]
                for r in conn.execute(
                    select(_contents.c.blob).where(_contents.c.message_id.in_(ids), _contents.c.blob.is_not(None))
                )
            ]
            result.contents += conn.execute(_contents.delete().where(_contents.c.message_id.in_(ids))).rowcount
            result.data_keys += conn.execute(_keys.delete().where(_keys.c.record_id.in_(ids))).rowcount
            result.deliveries += conn.execute(_deliveries.delete().where(_deliveries.c.message_id.in_(ids))).rowcount
            result.messages += conn.execute(_messages.delete().where(_messages.c.id.in_(ids))).rowcount
            result.batches += 1
        for name in names:  # after the commit: a rollback must not leave rows pointing at missing files
            blobs.delete(name)
            result.blobs += 1
    with engine.connect() as conn:
        result.kept_queued = conn.execute(select(func.count()).select_from(_messages).where(old, _QUEUED)).scalar_one()


def scrub(engine: Engine, attempts: int = 5, lock_timeout_s: float = 10.0) -> tuple[bool, str]:
    """Make freed space unrecoverable from the database files (see the module docstring)."""
    if engine.dialect.name == "sqlite":
        for attempt in range(attempts):
            raw = engine.raw_connection()
            try:
                busy = raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                raw.close()
            if not busy:
                return True, "wal_checkpoint(TRUNCATE)"
            time.sleep(0.2 * (attempt + 1))
        return False, "wal_checkpoint(TRUNCATE) busy: a reader held the WAL; run scrub() again"
    if engine.dialect.name == "postgresql":
        full = ("data_keys", "contents")  # key material and ciphertext: rewritten (plain VACUUM keeps bytes)
        plain = ("messages", "deliveries")  # no PHI: plain VACUUM is enough to reclaim space
        done: list[str] = []
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # VACUUM FULL waits for ACCESS EXCLUSIVE, and every new reader and writer of the table
            # queues behind that wait: a long transaction elsewhere must not stall the engine. Give
            # up after lock_timeout; the rows stay deleted and shredded; scrub() can be run again.
            conn.exec_driver_sql(f"SET lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
            for table in full:
                try:
                    conn.exec_driver_sql(f"VACUUM (FULL, ANALYZE) {table}")
                    done.append(table)
                except OperationalError:  # lock not available in time
                    conn.exec_driver_sql(f"VACUUM (ANALYZE) {table}")
            for table in plain:
                conn.exec_driver_sql(f"VACUUM (ANALYZE) {table}")
        missed = [t for t in full if t not in done]
        if missed:
            return False, f"VACUUM FULL {', '.join(missed)} timed out waiting for its lock; run scrub() again"
        return True, "VACUUM FULL data_keys, contents; VACUUM messages, deliveries"
    return False, f"no scrub for {engine.dialect.name}"


def sweep_orphan_blobs(engine: Engine, blobs: BlobFolder) -> int:
    """Delete blob files no content row refers to (left by a crash between commit and file deletion).
    Only files older than an hour: a message being stored writes its blob before its rows commit."""
    with engine.connect() as conn:
        known = {r[0] for r in conn.execute(select(_contents.c.blob).where(_contents.c.blob.is_not(None)))}
    limit = time.time() - 3600
    removed = 0
    for path in blobs.root.glob("*/*"):
        name = path.relative_to(blobs.root).as_posix()
        if name.endswith(".tmp") or name in known or path.stat().st_mtime > limit:
            continue
        try:
            blobs.delete(name)
        except ValueError:  # not a blob name: not ours to delete
            continue
        removed += 1
    return removed
