import asyncio
import sqlite3
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from engine.core.errors import IntegrityError
from engine.runtime.context import Context
from engine.store.tables import Content, DataKeyRow


def _store(ctx: Context, raw: bytes, **kw) -> str:  # type: ignore[no-untyped-def]
    message_id, item = ctx.messages.receive("ris-orders", "hl7v2 ORM^O01", raw, **kw)
    ctx.writer.write(item)
    return message_id


def test_round_trip_and_metadata(ctx: Context) -> None:
    message_id = _store(ctx, b"MSH|payload", destinations=["archive", "ai"])
    view = ctx.messages.get(message_id)
    assert view is not None
    assert (view.channel, view.kind, view.status, view.size) == ("ris-orders", "hl7v2 ORM^O01", "received", 11)
    assert view.config_hash == ctx.project.hash
    assert view.deliveries == (("ai", "queued", 0), ("archive", "queued", 0))
    assert view.parts == ("raw",)
    assert ctx.messages.read(message_id) == b"MSH|payload"


def test_parts_and_status(ctx: Context) -> None:
    message_id = _store(ctx, b"raw")
    ctx.writer.write(ctx.messages.add_part(message_id, "transformed", b"{json}"))
    ctx.writer.write(
        ctx.messages.set_status(message_id, "error", error="mapping orm-to-order: field accession missing")
    )
    view = ctx.messages.get(message_id)
    assert view and view.status == "error" and view.error.startswith("mapping orm-to-order")
    assert ctx.messages.read(message_id, "transformed") == b"{json}"
    with pytest.raises(LookupError):
        ctx.messages.read(message_id, "sent:nowhere")
    with pytest.raises(ValueError):
        ctx.messages.set_status(message_id, "lost")


def test_large_payload_goes_to_blob_folder_encrypted(ctx: Context) -> None:
    big = b"DICM" + b"\x11" * 200_000
    message_id = _store(ctx, big)
    with ctx.db.connect() as conn:
        row = conn.execute(select(Content.__table__).where(Content.__table__.c.message_id == message_id)).one()
    assert row.sealed is None and row.blob
    blob = ctx.messages.blobs.path(row.blob)
    assert blob.stat().st_mode & 0o777 == 0o600
    assert b"\x11" * 64 not in blob.read_bytes()
    assert ctx.messages.read(message_id) == big


def test_ciphertext_swapped_between_records_fails(ctx: Context) -> None:
    a, b = _store(ctx, b"first"), _store(ctx, b"second")
    contents = Content.__table__
    with ctx.db.begin() as conn:
        sealed_a = conn.execute(select(contents.c.sealed).where(contents.c.message_id == a)).scalar_one()
        conn.execute(contents.update().where(contents.c.message_id == b).values(sealed=sealed_a))
    with pytest.raises(IntegrityError):
        ctx.messages.read(b)


def test_deleting_data_key_crypto_shreds(ctx: Context) -> None:
    message_id = _store(ctx, b"secret")
    keys = DataKeyRow.__table__
    with ctx.db.begin() as conn:
        conn.execute(keys.delete().where(keys.c.record_id == message_id))
    with pytest.raises(LookupError, match="no data key"):
        ctx.messages.read(message_id)


def test_search_by_blind_index_and_filters(ctx: Context) -> None:
    acc = ctx.index("accession", "ACC-1")
    wanted = _store(ctx, b"a", indexes={"accession": acc})
    _store(ctx, b"b", indexes={"accession": ctx.index("accession", "ACC-2")})
    assert [m.id for m in ctx.messages.list(index=("accession", ctx.index("accession", "ACC-1")))] == [wanted]
    assert len(ctx.messages.list(channel="ris-orders")) == 2
    assert ctx.messages.list(channel="other") == []
    newest = ctx.messages.list(limit=1)[0]
    assert newest.id > wanted  # UUIDv7: newest first


def test_many_async_producers_all_committed(ctx: Context) -> None:
    async def producer(n: int) -> list[str]:
        ids = []
        for i in range(n):
            message_id, item = ctx.messages.receive("c", "k", f"m{i}".encode())
            item.audit.append(ctx.audit.event("message.received", actor="test", record_ids=[message_id]))
            await ctx.writer.awrite(item)
            ids.append(message_id)
        return ids

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(producer(50) for _ in range(8)))

    ids = [i for batch in asyncio.run(main()) for i in batch]
    assert len(set(ids)) == 400
    assert len(ctx.messages.list(limit=1000)) == 400
    assert ctx.writer.batches < 400  # group commit: fewer transactions than items


def test_failing_item_fails_alone(ctx: Context) -> None:
    good_id, good = ctx.messages.receive("c", "k", b"good")
    _, bad = ctx.messages.receive("c", "k", b"bad")
    bad.inserts[0][1]["id"] = good_id  # duplicate primary key
    f_good, f_bad = ctx.writer.submit(good), ctx.writer.submit(bad)
    f_good.result(timeout=10)
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
        f_bad.result(timeout=10)
    assert ctx.messages.read(good_id) == b"good"


def test_blob_names_are_validated(tmp_path: Path, ctx: Context) -> None:
    with pytest.raises(ValueError):
        ctx.messages.blobs.path("../../etc/passwd")


def test_put_part_replaces(ctx: Context) -> None:
    message_id = _store(ctx, b"raw")
    ctx.writer.write(ctx.messages.put_part(message_id, "response:pacs", b"first answer"))
    ctx.writer.write(ctx.messages.put_part(message_id, "response:pacs", b"second answer"))
    assert ctx.messages.read(message_id, "response:pacs") == b"second answer"
    assert ctx.messages.get(message_id).parts == ("raw", "response:pacs")


def test_a_payload_written_ahead_is_the_messages_raw_part(ctx: Context) -> None:
    """A source seals and writes a large payload while it parses (prestore); the message committed
    with it reads back the same bytes, under the same data key, and nothing is sealed twice."""
    payload = b"DICM" + bytes(range(256)) * 1024
    ahead = ctx.messages.prestore(payload)
    assert ahead.row["blob"] and ctx.messages.blobs.path(ahead.row["blob"]).exists()  # durable before the row
    assert payload[:64] not in ctx.messages.blobs.path(ahead.row["blob"]).read_bytes()
    message_id, item = ctx.messages.receive("images", "dicom", payload, prestored=ahead)
    ctx.writer.write(item)
    assert message_id == ahead.message_id
    assert ctx.messages.read(message_id) == payload
    with ctx.db.connect() as conn:
        assert conn.execute(select(Content.__table__.c.blob).where(Content.message_id == message_id)).scalar() == (
            ahead.row["blob"]
        )


def test_a_payload_written_ahead_but_never_committed_is_an_orphan_swept_later(ctx: Context) -> None:
    import os
    import time

    from engine.store.retention import sweep_orphan_blobs

    ahead = ctx.messages.prestore(b"x" * 200_000)  # e.g. the instance turned out to be a duplicate
    path = ctx.messages.blobs.path(ahead.row["blob"])
    assert sweep_orphan_blobs(ctx.db, ctx.messages.blobs) == 0  # too young: it may be about to commit
    old = time.time() - 7200
    os.utime(path, (old, old))
    assert sweep_orphan_blobs(ctx.db, ctx.messages.blobs) == 1 and not path.exists()
