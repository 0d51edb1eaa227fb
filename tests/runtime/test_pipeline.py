"""The channel pipeline and its delivery queue, through the real store, writer and audit log."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from sqlalchemy import select

from engine.core.component import Inbound
from engine.runtime.context import open_context
from engine.runtime.delivery import POLL_S
from engine.runtime.engine import Engine
from engine.store.tables import AuditRow
from tests.runtime.conftest import INBOXES, RECEIVED, SCRIPTS, running


def _orm(control: str = "C1", body: str = "x") -> Inbound:
    raw = f"MSH|^~\\&|RIS|HOSP|RB|HOSP|20261121||ORM^O01|{control}|P|2.3.1\rZZZ|{body}\r".encode()
    return Inbound(raw=raw, kind="hl7v2", peer="127.0.0.1:5000", decoded=object(), dedup=f"RIS|HOSP|{control}",
                   type="ORM^O01")  # fmt: skip


async def _until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _actions(engine: Engine) -> list[str]:
    audit = AuditRow.__table__
    with engine.ctx.db.connect() as conn:
        return [r[0] for r in conn.execute(select(audit.c.action).order_by(audit.c.seq))]


async def test_accepted_message_is_delivered_and_its_response_kept(engine: Engine) -> None:
    outcome = await INBOXES["inbox"](_orm())
    assert outcome.status == "accepted" and outcome.message_id
    await _until(lambda: RECEIVED.get("peer"))
    await _until(lambda: engine.ctx.messages.get(outcome.message_id).status == "sent")
    view = engine.ctx.messages.get(outcome.message_id)
    assert view.deliveries == (("peer", "sent", 1),)
    assert "response:peer" in view.parts
    assert engine.ctx.messages.read(outcome.message_id, "response:peer") == b"ACK " + outcome.message_id.encode()
    assert _actions(engine) == ["message.received", "message.sent"]


async def test_retry_with_backoff_then_success(engine: Engine) -> None:
    SCRIPTS["peer"] = ["retry", "retry"]
    outcome = await INBOXES["inbox"](_orm())
    await _until(lambda: engine.ctx.messages.get(outcome.message_id).status == "sent")
    assert engine.ctx.messages.get(outcome.message_id).deliveries == (("peer", "sent", 3),)
    assert _actions(engine) == ["message.received", "message.send_failed", "message.send_failed", "message.sent"]


async def test_dead_letter_after_max_attempts_and_queue_moves_on(engine: Engine) -> None:
    SCRIPTS["peer"] = ["retry", "retry", "retry"]
    first = await INBOXES["inbox"](_orm("C1"))
    second = await INBOXES["inbox"](_orm("C2"))
    await _until(lambda: engine.ctx.messages.get(second.message_id).status == "sent")
    dead = engine.ctx.messages.get(first.message_id)
    assert dead.status == "dead" and dead.deliveries == (("peer", "dead", 3),)
    assert dead.error == "peer unavailable (test)"
    assert len(RECEIVED["peer"]) == 1  # only the second one got through
    assert "message.dead" in _actions(engine)


async def test_permanent_error_dead_letters_at_once(engine: Engine) -> None:
    SCRIPTS["peer"] = ["fail"]
    outcome = await INBOXES["inbox"](_orm())
    await _until(lambda: engine.ctx.messages.get(outcome.message_id).status == "dead")
    assert engine.ctx.messages.get(outcome.message_id).deliveries == (("peer", "dead", 1),)


async def test_duplicate_is_answered_not_processed_twice(engine: Engine) -> None:
    first = await INBOXES["inbox"](_orm("C1", "same"))
    again = await INBOXES["inbox"](_orm("C1", "same"))
    assert again.status == "duplicate" and again.message_id == first.message_id
    reused = await INBOXES["inbox"](_orm("C1", "different"))
    assert reused.status == "accepted" and reused.message_id != first.message_id
    assert reused.flags == ("control-id-reused",)
    await _until(lambda: len(RECEIVED.get("peer", [])) == 2)
    assert len(engine.ctx.messages.list()) == 2
    assert _actions(engine).count("message.duplicate") == 1


async def test_unparseable_message_is_kept_for_review(engine: Engine) -> None:
    class Broken(ValueError):
        code, segment, sequence, field = 100, "MSH", 1, None

    inbound = Inbound(raw=b"garbage without MSH", kind="hl7v2", peer="127.0.0.1:5000",
                      decoded=Broken("message does not start with MSH"))  # fmt: skip
    outcome = await INBOXES["inbox"](inbound)
    assert outcome.status == "invalid" and outcome.problem.code == 100
    view = engine.ctx.messages.get(outcome.message_id)
    assert view.status == "error" and view.error == "message does not start with MSH" and view.deliveries == ()
    assert engine.ctx.messages.read(outcome.message_id) == b"garbage without MSH"


async def test_type_not_accepted_is_refused_and_kept(engine: Engine) -> None:
    inbound = Inbound(raw=b"MSH|^~\\&|X\r", kind="hl7v2", peer="p", decoded=object(), type="ORU^R01")
    outcome = await INBOXES["inbox"](inbound)
    assert outcome.status == "refused" and outcome.problem.code == 200
    assert "ORU^R01 is not accepted" in engine.ctx.messages.get(outcome.message_id).error


async def test_a_payload_written_ahead_is_used_and_one_that_failed_is_sealed_inline(engine: Engine) -> None:
    from concurrent.futures import Future

    written = engine.prestore(_orm("BIG1", "y" * 100_000).raw)
    assert written is not None
    outcome = await INBOXES["inbox"](replace(_orm("BIG1", "y" * 100_000), prestored=written))
    assert outcome.status == "accepted" and outcome.message_id == written.result().message_id
    assert engine.ctx.messages.read(outcome.message_id) == _orm("BIG1", "y" * 100_000).raw
    failed: Future[object] = Future()
    failed.set_exception(OSError("disk full"))  # the write ahead failed: nothing is lost, it is sealed here
    outcome = await INBOXES["inbox"](replace(_orm("BIG2", "z" * 100_000), prestored=failed))
    assert outcome.status == "accepted"
    assert engine.ctx.messages.read(outcome.message_id) == _orm("BIG2", "z" * 100_000).raw
    assert engine.prestore(b"small") is None  # kept inline: nothing to write ahead


async def test_store_failure_answers_unavailable(engine: Engine) -> None:
    engine.ctx.writer.close()
    outcome = await INBOXES["inbox"](_orm())
    assert outcome.status == "unavailable" and outcome.message_id is None


async def test_restart_resumes_queued_deliveries(runtime_project: Path) -> None:
    ctx = open_context(runtime_project)
    first = Engine(ctx)
    await first.start()
    SCRIPTS["peer"] = ["retry"] * 2
    outcome = await INBOXES["inbox"](_orm())
    await first.stop()  # stopped while the message is still queued
    ctx.close()
    assert RECEIVED.get("peer") is None

    ctx = open_context(runtime_project)
    second = Engine(ctx)
    await second.start()
    try:
        await _until(lambda: ctx.messages.get(outcome.message_id).status == "sent")
        assert len(RECEIVED["peer"]) == 1
    finally:
        await second.stop()
        ctx.close()


async def test_topics_connect_channels(runtime_project: Path) -> None:
    (runtime_project / "channels" / "inbox.yaml").write_text(
        "name: inbox\nsource: {kind: test-inbox}\ndestinations: [{name: bus, kind: topic, topic: order.accepted}]\n"
    )
    (runtime_project / "channels" / "orders.yaml").write_text(
        "name: orders\nsource: {kind: topic, topic: 'order.*'}\n"
        "destinations: [{name: peer, kind: test-scripted, label: peer}]\n"
    )
    async with running(runtime_project) as eng:
        ctx = eng.ctx
        record = json.dumps({"type": "order", "accession": "A1"}).encode() + b"\n"
        await INBOXES["inbox"](Inbound(raw=record, kind="record", peer="p", decoded=None))
        await _until(lambda: RECEIVED.get("peer"))
        assert json.loads(RECEIVED["peer"][0]) == {"type": "order", "accession": "A1"}
        channels = sorted(m.channel for m in ctx.messages.list())
        assert channels == ["inbox", "orders"]  # stored in both, each encrypted under its own key


async def test_reprocess_runs_a_dead_message_again_linked_and_audited(runtime_project: Path) -> None:
    from engine.runtime.reprocess import reprocess

    async with running(runtime_project) as eng:
        ctx = eng.ctx
        SCRIPTS["peer"] = ["fail"]
        raw = b"MSH|^~\\&|RIS|HOSP|RB|HOSP|20261121||ORM^O01|C9|P|2.3.1\rPID|1||MRN1\r"
        from engine.runtime.reprocess import decode

        outcome = await INBOXES["inbox"](decode("hl7v2", raw, "127.0.0.1:1"))
        await _until(lambda: ctx.messages.get(outcome.message_id).status == "dead")
        [result] = await reprocess(ctx, [outcome.message_id], "user:analyst")
        assert result.status == "accepted" and result.new != outcome.message_id
        # Reprocessing works from another process: the running engine's worker finds the new
        # delivery at its next poll of the store (POLL_S), not through an in-process wake-up.
        await _until(lambda: ctx.messages.get(result.new).status == "sent", timeout=POLL_S * 2 + 1)
        assert RECEIVED["peer"] == [raw]
        audit = AuditRow.__table__
        with ctx.db.connect() as conn:
            row = conn.execute(select(audit).where(audit.c.action == "message.reprocessed")).one()
        assert json.loads(row.record_ids) == sorted([result.new, outcome.message_id])
        assert row.actor == "user:analyst"


async def test_application_ack_goes_to_the_return_destination(runtime_project: Path) -> None:
    from engine.hl7v2 import Message
    from engine.runtime.reprocess import decode

    (runtime_project / "channels" / "inbox.yaml").write_text(
        "name: inbox\nsource: {kind: test-inbox}\napplication_ack: acks\n"
        "destinations:\n  - {name: peer, kind: test-scripted, label: peer}\n"
        "  - {name: acks, kind: test-scripted, label: acks}\n"
    )
    async with running(runtime_project) as eng:
        ctx = eng.ctx

        def enhanced(control: str, msh16: str) -> bytes:
            return f"MSH|^~\\&|RIS|HOSP|RB|HOSP|20261121||ORM^O01|{control}|P|2.5.1|||AL|{msh16}\rPID|1\r".encode()

        await INBOXES["inbox"](decode("hl7v2", enhanced("APP1", "AL"), "127.0.0.1:1"))
        await INBOXES["inbox"](decode("hl7v2", enhanced("APP2", "ER"), "127.0.0.1:1"))  # no error: no ACK
        await _until(lambda: len(RECEIVED.get("peer", [])) == 2 and RECEIVED.get("acks"))
        [ack] = [Message.parse(body) for body in RECEIVED["acks"]]
        assert (ack.get("MSA-1"), ack.get("MSA-2"), ack.get("MSH-9.1")) == ("AA", "APP1", "ACK")
        assert all(b"MSA" not in body for body in RECEIVED["peer"])  # the return route carries only ACKs
        kinds = sorted(m.kind for m in ctx.messages.list())
        assert kinds == ["hl7v2 ACK", "hl7v2 ORM^O01", "hl7v2 ORM^O01"]


async def test_strict_channel_rejects_a_message_off_its_structure(runtime_project: Path) -> None:
    from engine.runtime.reprocess import decode

    (runtime_project / "channels" / "inbox.yaml").write_text("name: inbox\nstrict: true\nsource: {kind: test-inbox}\n")
    async with running(runtime_project) as eng:
        ctx = eng.ctx
        good = (Path(__file__).resolve().parents[2] / "samples" / "hl7" / "orm-o01-ct-head.hl7").read_bytes()
        no_pid = b"\r".join(s for s in good.split(b"\r") if not s.startswith(b"PID"))
        assert (await INBOXES["inbox"](decode("hl7v2", good, "p"))).status == "accepted"
        outcome = await INBOXES["inbox"](decode("hl7v2", no_pid, "p"))
        assert outcome.status == "invalid" and outcome.problem.code == 100
        assert outcome.problem.text == "message structure: ValidationError: Missing required child ORM_O01_PATIENT.PID"
        assert ctx.messages.get(outcome.message_id).status == "error"


async def test_duplicate_recognised_after_a_restart(runtime_project: Path) -> None:
    async with running(runtime_project):
        first = await INBOXES["inbox"](_orm("R1", "same"))
    async with running(runtime_project) as eng:  # a new process would load the window from the store
        assert eng.running["inbox"].channel.recent.complete
        again = await INBOXES["inbox"](_orm("R1", "same"))
        assert again.status == "duplicate" and again.message_id == first.message_id
        assert (await INBOXES["inbox"](_orm("R2", "same"))).status == "accepted"
