"""Retention purge: the right messages go, nothing of them stays readable on disk, the audit trail stays."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.audit.verify import verify
from engine.core.clock import utcnow
from engine.runtime.context import Context
from engine.store.retention import purge
from engine.store.tables import AuditRow, Content, DataKeyRow, Delivery, Message
from tests import phi

_messages, _contents, _keys, _deliveries = (
    Message.__table__,
    Content.__table__,
    DataKeyRow.__table__,
    Delivery.__table__,
)
SMALL = phi.ORM.encode()  # inline
MEDIUM = (phi.ORM * 20).encode()  # inline, TOASTed on PostgreSQL
BIG = (phi.ORM * 400).encode()  # blob folder


def _store(ctx: Context, channel: str, raw: bytes, age_days: float, **kw) -> str:  # type: ignore[no-untyped-def]
    message_id, item = ctx.messages.receive(
        channel, "hl7v2 ORM^O01", raw, indexes={"mrn": ctx.index("mrn", phi.MRN)}, **kw
    )
    item.audit.append(ctx.audit.event("message.received", actor="peer:127.0.0.1", record_ids=[message_id]))
    ctx.writer.write(item)
    with ctx.db.begin() as conn:
        conn.execute(
            _messages.update()
            .where(_messages.c.id == message_id)
            .values(received_at=utcnow() - timedelta(days=age_days))
        )
    return message_id


def _secrets(ctx: Context, ids: list[str]) -> list[bytes]:
    """The purged records' wrapped keys and sealed bytes, as windows a scan can find (TOAST splits rows)."""
    found: list[bytes] = []
    with ctx.db.connect() as conn:
        found += [r[0] for r in conn.execute(select(_keys.c.wrapped).where(_keys.c.record_id.in_(ids)))]
        for row in conn.execute(select(_contents).where(_contents.c.message_id.in_(ids))):
            sealed = row.sealed if row.sealed is not None else ctx.messages.blobs.get(row.blob)
            found += [sealed[o : o + 32] for o in range(16, len(sealed) - 32, max(1, len(sealed) // 8))]
    assert found and all(len(s) >= 16 for s in found)
    return found


def _files(ctx: Context) -> list[Path]:
    if ctx.db.dialect.name == "sqlite":
        data = Path(ctx.db.url.database).parent
        return [p for p in data.glob("radbridge.db*") if p.is_file()]
    with ctx.db.connect() as conn:
        conn.exec_driver_sql("CHECKPOINT")
        data_dir = Path(conn.exec_driver_sql("SHOW data_directory").scalar())
        oid = conn.exec_driver_sql("SELECT oid FROM pg_database WHERE datname = current_database()").scalar()
    folder = data_dir / "base" / str(oid)
    if not os.access(folder, os.R_OK):
        pytest.skip(f"the PostgreSQL data directory {data_dir} is not readable here")
    return [p for p in folder.rglob("*") if p.is_file()]


def _present(paths: list[Path], needles: list[bytes]) -> list[str]:
    hits = []
    for path in paths:
        data = path.read_bytes()
        hits += [f"{path.name}: {n.hex()[:16]}" for n in needles if n in data]
    return hits


def test_purge_deletes_old_messages_and_leaves_nothing_recoverable(ctx: Context) -> None:
    # "short" keeps 7 days, "long" 90; "other" falls back to the default of 30.
    gone = [
        _store(ctx, "short", SMALL, 10),
        _store(ctx, "short", MEDIUM, 10, destinations=["ai"]),  # delivered: purged with its delivery
        _store(ctx, "short", BIG, 20),
        _store(ctx, "short", SMALL, 8, parts={"transformed": f'{{"mrn": "{phi.MRN}"}}'.encode()}),
        _store(ctx, "other", SMALL, 31),
    ]
    with ctx.db.begin() as conn:
        conn.execute(_deliveries.update().where(_deliveries.c.message_id == gone[1]).values(status="sent"))
    queued = _store(ctx, "short", SMALL, 10, destinations=["ai", "archive"])
    with ctx.db.begin() as conn:  # one destination done, one still waiting: kept
        conn.execute(
            _deliveries.update()
            .where(_deliveries.c.message_id == queued, _deliveries.c.destination == "archive")
            .values(status="sent")
        )
    kept = {
        _store(ctx, "short", SMALL, 5): SMALL,
        _store(ctx, "long", BIG, 60): BIG,
        _store(ctx, "long", MEDIUM, 89): MEDIUM,
        _store(ctx, "other", SMALL, 29): SMALL,
        queued: SMALL,
    }
    secrets = _secrets(ctx, gone)
    blob_names = [n for n in ctx.messages.blobs.root.rglob("*") if n.is_file()]
    assert len(blob_names) == 2
    # The scan can see what it looks for: the secrets are in the files before the purge.
    assert _present(_files(ctx), secrets) or ctx.db.dialect.name == "sqlite"
    with ctx.db.connect() as conn:
        audit_before = conn.execute(select(AuditRow.__table__.c.seq)).all()

    report = purge(ctx, channels={"short": 7, "long": 90}, default_days=30, batch_size=2, actor="service:retention")

    by_channel = {c.channel: c for c in report.channels}
    assert (by_channel["short"].messages, by_channel["short"].kept_queued) == (4, 1)
    assert by_channel["short"].batches >= 2  # batch_size 2 over 4 messages
    assert by_channel["short"].data_keys == 4 and by_channel["short"].contents == 5  # + one transformed part
    assert by_channel["short"].deliveries == 1 and by_channel["short"].blobs == 1
    assert (by_channel["long"].messages, by_channel["other"].messages) == (0, 1)
    assert report.scrubbed, report.scrub
    with ctx.db.connect() as conn:
        for table, column in (
            (_messages, "id"),
            (_contents, "message_id"),
            (_keys, "record_id"),
            (_deliveries, "message_id"),
        ):
            assert conn.execute(select(table).where(table.c[column].in_(gone))).all() == []
    for message_id, raw in kept.items():
        assert ctx.messages.read(message_id) == raw
    assert ctx.messages.get(queued).deliveries == (("ai", "queued", 0), ("archive", "sent", 0))  # type: ignore[union-attr]
    assert [p for p in ctx.messages.blobs.root.rglob("*") if p.is_file()] != blob_names
    assert len([p for p in ctx.messages.blobs.root.rglob("*") if p.is_file()]) == 1

    # The audit trail is whole, and has one entry per channel with the counts.
    result = verify(ctx.db, ctx.keyring.verify_key, ctx.keyring.signing_key_id)
    assert result.ok, result.problem
    audit = AuditRow.__table__
    with ctx.db.connect() as conn:
        assert len(conn.execute(select(audit.c.seq)).all()) == len(audit_before) + 3
        entries = conn.execute(select(audit).where(audit.c.action == "retention.purged")).all()
    details = {d["channel"]: d for d in (ctx.audit.open_detail(e.id, e.detail) for e in entries) if d}
    assert {e.actor for e in entries} == {"service:retention"}
    assert {c: d["messages"] for c, d in details.items()} == {"short": 4, "long": 0, "other": 1}
    assert details["short"]["cutoff"] == (report.now - timedelta(days=7)).isoformat(timespec="microseconds")

    # Nothing of the purged records on disk: no PHI, no wrapped key, no ciphertext.
    files = _files(ctx)
    assert files
    assert _present(files, secrets) == []
    assert _present([p for p in ctx.messages.blobs.root.rglob("*") if p.is_file()], secrets) == []
    for path in files + [p for p in ctx.messages.blobs.root.rglob("*") if p.is_file()]:
        assert phi.leaks_in_bytes(path.read_bytes()) == [], path


def test_purge_with_nothing_old_still_audits_and_rejects_bad_days(ctx: Context) -> None:
    fresh = _store(ctx, "short", SMALL, 1)
    report = purge(ctx, channels={"short": 7}, default_days=None, batch_size=10, actor="user:admin")
    assert [(c.channel, c.messages) for c in report.channels] == [("short", 0)]
    assert ctx.messages.read(fresh) == SMALL
    with ctx.db.connect() as conn:
        assert conn.execute(select(AuditRow.__table__).where(AuditRow.__table__.c.action == "retention.purged")).all()
    with pytest.raises(ValueError):
        purge(ctx, channels={"short": 0}, default_days=None, batch_size=10, actor="user:admin")
    with pytest.raises(ValueError):
        purge(ctx, channels={}, default_days=30, batch_size=0, actor="user:admin")
