"""Every way of tampering with the log is detected, and an intact log verifies."""

from collections.abc import Callable

import pytest
from sqlalchemy import Connection, select, text

from engine.audit.chain import GENESIS, entry_hash
from engine.audit.log import AuditLog, ChainLinker
from engine.audit.verify import verify
from engine.runtime.context import Context
from engine.store.tables import AuditCheckpoint, AuditRow
from engine.store.writer import GroupWriter

audit = AuditRow.__table__


def _fill(ctx: Context, n: int = 10) -> None:
    for i in range(n):
        ctx.audit.record("message.received", actor="peer:127.0.0.1", record_ids=[f"m{i}"], detail={"i": i})


def _verify(ctx: Context):  # type: ignore[no-untyped-def]
    return verify(ctx.db, ctx.keyring.verify_key, ctx.keyring.signing_key_id)


def _tamper(ctx: Context, change: Callable[[Connection], None]) -> str:
    with ctx.db.begin() as conn:
        change(conn)
    result = _verify(ctx)
    assert not result.ok
    return result.problem or ""


def test_intact_log_verifies_with_checkpoint(ctx: Context) -> None:
    _fill(ctx)
    assert ctx.checkpoint() == 10
    assert ctx.checkpoint() is None  # nothing new to sign
    result = _verify(ctx)
    assert result.ok and result.entries == 10 and result.checkpoints == 1 and result.nodes == ["test-node"]


def test_edit_detected(ctx: Context) -> None:
    _fill(ctx)
    problem = _tamper(ctx, lambda c: c.execute(audit.update().where(audit.c.seq == 4).values(actor="someone-else")))
    assert problem == "node test-node: entry seq 4 was altered (hash mismatch)"


def test_deletion_detected(ctx: Context) -> None:
    _fill(ctx)
    problem = _tamper(ctx, lambda c: c.execute(audit.delete().where(audit.c.seq == 5)))
    assert problem == "node test-node: entry seq 5 is missing (deleted?); found seq 6 next"


def test_deletion_with_renumbering_detected(ctx: Context) -> None:
    _fill(ctx)

    def delete_and_shift(conn: Connection) -> None:
        conn.execute(audit.delete().where(audit.c.seq == 5))
        for seq in range(6, 11):
            conn.execute(audit.update().where(audit.c.seq == seq).values(seq=seq - 1))

    assert _tamper(ctx, delete_and_shift) == (
        "node test-node: entry seq 5 does not follow seq 4 (inserted, deleted or reordered)"
    )


def test_insertion_detected(ctx: Context) -> None:
    _fill(ctx)

    def insert(conn: Connection) -> None:
        row = dict(conn.execute(select(audit).where(audit.c.seq == 10)).mappings().one())
        row.update(seq=11, id="FORGED", action="message.viewed", prev_hash=row["hash"])
        row["hash"] = "f" * 64
        conn.execute(audit.insert().values(**row))

    assert _tamper(ctx, insert) == "node test-node: entry seq 11 was altered (hash mismatch)"


def test_insertion_with_recomputed_hash_caught_by_later_links(ctx: Context) -> None:
    _fill(ctx)

    def insert_middle(conn: Connection) -> None:
        rows = [dict(r) for r in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]
        conn.execute(audit.delete())
        forged = dict(rows[2], id="FORGED", action="config.changed")
        rows.insert(3, forged)
        prev = GENESIS
        for seq, row in enumerate(rows, start=1):
            row["seq"] = seq
            if seq <= 4:  # attacker recomputes up to the forged entry only
                row["prev_hash"] = prev
                row["hash"] = entry_hash(prev, row)
            prev = row["hash"]
            conn.execute(audit.insert().values(**row))

    assert _tamper(ctx, insert_middle) == (
        "node test-node: entry seq 5 does not follow seq 4 (inserted, deleted or reordered)"
    )


def test_reordering_detected(ctx: Context) -> None:
    _fill(ctx)

    def swap(conn: Connection) -> None:
        conn.execute(text("UPDATE audit_log SET seq = -1 WHERE seq = 3"))
        conn.execute(text("UPDATE audit_log SET seq = 3 WHERE seq = 4"))
        conn.execute(text("UPDATE audit_log SET seq = 4 WHERE seq = -1"))

    assert _tamper(ctx, swap) == "node test-node: entry seq 3 does not follow seq 2 (inserted, deleted or reordered)"


def test_truncation_detected_by_checkpoint(ctx: Context) -> None:
    _fill(ctx)
    ctx.checkpoint()
    problem = _tamper(ctx, lambda c: c.execute(audit.delete().where(audit.c.seq > 7)))
    assert problem == "node test-node: log ends at seq 7 but a checkpoint covers seq 10 (truncated)"


def test_rewritten_history_caught_by_signed_checkpoint(ctx: Context) -> None:
    _fill(ctx)
    ctx.checkpoint()

    def rewrite(conn: Connection) -> None:  # edit seq 2 and recompute the whole chain after it
        rows = [dict(r) for r in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]
        rows[1]["actor"] = "covered-up"
        prev = GENESIS
        conn.execute(audit.delete())
        for row in rows:
            row["prev_hash"] = prev
            prev = row["hash"] = entry_hash(prev, row)
            conn.execute(audit.insert().values(**row))

    assert _tamper(ctx, rewrite) == (
        "node test-node: entry seq 10 differs from its signed checkpoint (history rewritten)"
    )


def test_forged_checkpoint_detected(ctx: Context) -> None:
    _fill(ctx)
    ctx.checkpoint()
    cps = AuditCheckpoint.__table__
    problem = _tamper(ctx, lambda c: c.execute(cps.update().values(hash="0" * 64)))
    assert problem == "node test-node: checkpoint at seq 10 has an invalid signature"


def test_second_process_appending_to_same_chain_never_forks(ctx: Context) -> None:
    """The CLI records an access while the engine's writer has the head cached."""
    _fill(ctx, 3)
    other_writer = GroupWriter(ctx.db, ChainLinker(ctx.node))
    other = AuditLog(other_writer, ctx.audit.sealer, ctx.node)
    try:
        other.record("message.viewed", actor="user:cli", record_ids=["m1"], purpose="treatment")
    finally:
        other_writer.close()
    _fill(ctx, 3)  # engine's cached head is stale: the collision is retried after reloading the head
    result = _verify(ctx)
    assert result.ok and result.entries == 7


def test_sealed_detail_round_trip_and_unknown_outcome(ctx: Context) -> None:
    _fill(ctx, 1)
    with ctx.db.connect() as conn:
        row = conn.execute(select(audit)).one()
    assert ctx.audit.open_detail(row.id, row.detail) == {"i": 0}
    with pytest.raises(ValueError):
        ctx.audit.event("x", actor="a", outcome="maybe")
