"""Correlation through the running engine: DICOM instances into an assembling channel, orders and
patient events on their topics, timers in the store. Every case ends in at most one study.ready,
nothing lost, across restarts, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.core.component import Inbound
from engine.correlation.repo import Repo
from engine.dicom import read_header
from engine.security import keyring
from tests import phi
from tests.conftest import write_project
from tests.correlation.instances import instance
from tests.world import EngineWorld

QUIET = 0.3
WAIT = 0.6
STUDY = "1.2.826.0.1.3680043.10.999.1"


def _project(root: Path, store_url: str | None, *, then: str = "proceed", late: str = "retrigger",
             check: str = "[patient_id, issuer]") -> Path:  # fmt: skip
    write_project(root, store_url=store_url)
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    (root / "channels" / "images.yaml").write_text(
        textwrap.dedent(f"""\
        name: images
        source: {{kind: topic, topic: test.dicom}}
        study: {{quiet_s: {QUIET}, late_series: {late}}}
        """)
    )
    (root / "channels" / "correlation.yaml").write_text(
        textwrap.dedent(f"""\
        name: correlation
        source:
          kind: correlation
          sweep_s: 0.05
          patient_check: {check}
          unmatched_study: {{wait_s: {WAIT}, then: {then}}}
          order_timeout_s: 3600
        destinations:
          - {{name: events, kind: topic, retry: {{backoff_s: 0.05}}}}
        """)
    )
    (root / "channels" / "watch.yaml").write_text("name: watch\nsource: {kind: topic, topic: 'study.*'}\n")
    return root


class World(EngineWorld):
    async def image(self, n: int, *, study: str = STUDY, series: int = 1, **kw: str) -> None:
        raw = instance(study, f"{study}.{series}", f"{study}.{series}.{n}", **kw)
        header = read_header(raw)
        assert self.engine is not None
        outcomes = await self.engine.topics.publish(
            "test.dicom", Inbound(raw=raw, kind="dicom", peer="test", decoded=header, dedup=header.sop_instance_uid)
        )
        assert [o.status for o in outcomes] in (["accepted"], ["duplicate"])

    async def order(self, event: str = "accepted", accession: str = phi.ACCESSION, **fields: str) -> None:
        body = {"event": event, "accession": accession, "patient_id": phi.MRN, "patient_id_issuer": "GENHOSP",
                "priority": "stat", "procedure_code": "CTHEAD", **fields}  # fmt: skip
        await self.record("order", f"order.{event}", body)

    async def record(self, type_: str, topic: str, fields: dict[str, str]) -> None:
        raw = json.dumps({"fields": fields, "topic": topic, "type": type_}, sort_keys=True).encode()
        assert self.engine is not None
        outcomes = await self.engine.topics.publish(
            topic, Inbound(raw=raw, kind="record", peer="test", decoded=json.loads(raw), dedup=raw.hex()[:40])
        )
        assert [o.status for o in outcomes] == ["accepted"] or [o.status for o in outcomes] == ["duplicate"]

    def emitted(self, topic: str = "study.ready") -> list[dict]:
        assert self.ctx is not None
        out = []
        for view in self.ctx.messages.list(channel="correlation", limit=500):
            if view.kind == f"record {topic}":
                out.append(json.loads(self.ctx.messages.read(view.id))["fields"])
        return out

    def delivered(self, topic: str = "study.ready") -> int:
        assert self.ctx is not None
        return sum(1 for v in self.ctx.messages.list(channel="watch", limit=500) if v.kind.startswith("record"))

    def study_state(self, study_id: str) -> str | None:
        assert self.ctx is not None
        row = Repo(self.ctx.db).study_by_id(study_id)
        return row.state if row else None

    def study(self) -> object:
        assert self.ctx is not None
        [row] = Repo(self.ctx.db).studies()
        return row


@pytest.fixture
async def world(tmp_path: Path, store_url: str | None, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    options = getattr(request, "param", {})
    w = World(_project(tmp_path / "p", store_url, **options))
    await w.start()
    yield w
    await w.stop()


async def test_order_then_images_gives_one_ready_with_routing_facts(world: World) -> None:
    await world.order()
    for n in range(3):
        await world.image(n)
    await world.until(lambda: len(world.emitted()) == 1)
    [ready] = world.emitted()
    assert ready["instances"] == 3 and ready["modality"] == "CT" and ready["priority"] == "stat"
    assert ready["procedure_code"] == "CTHEAD" and ready["matched"] and not ready["partial"]
    assert ready["orders"][0]["accession"] == phi.ACCESSION
    await asyncio.sleep(QUIET * 2)
    assert len(world.emitted()) == 1
    assert world.study().state == "ready"


async def test_images_then_order(world: World) -> None:
    for n in range(2):
        await world.image(n)
    await world.until(lambda: world.study().state == "waiting")
    assert world.emitted() == []
    await world.order()
    await world.until(lambda: len(world.emitted()) == 1)
    assert world.emitted()[0]["trigger"] == "order"
    await asyncio.sleep(WAIT * 1.5)
    assert len(world.emitted()) == 1


@pytest.mark.parametrize("world", [{"then": "hold"}], indirect=True)
async def test_unmatched_study_is_held_by_policy(world: World) -> None:
    await world.image(1)
    await world.until(lambda: world.study().state == "held")
    assert world.study().reason == "no-order" and world.emitted() == []


async def test_unmatched_study_proceeds_after_wait(world: World) -> None:
    await world.image(1)
    await world.until(lambda: len(world.emitted()) == 1)
    assert world.emitted()[0]["matched"] is False


async def test_order_cancelled_before_stability_stops_it(world: World) -> None:
    await world.order()
    await world.image(1)
    await world.order("cancelled")
    await world.until(lambda: world.study().state == "cancelled")
    await asyncio.sleep(WAIT)
    assert world.emitted() == []


async def test_late_series_retriggers_once_and_duplicates_never(world: World) -> None:
    await world.order()
    await world.image(1)
    await world.until(lambda: len(world.emitted()) == 1)
    await world.image(1)  # the same instance again: recognised, nothing new
    await asyncio.sleep(QUIET * 2)
    assert len(world.emitted()) == 1
    await world.image(1, series=2)  # a late series: new content
    await world.until(lambda: len(world.emitted()) == 2)
    assert world.emitted()[0]["trigger"] == "late-series" and world.emitted()[0]["instances"] == 2


@pytest.mark.parametrize("world", [{"late": "ignore"}], indirect=True)
async def test_late_series_ignored_by_policy(world: World) -> None:
    await world.order()
    await world.image(1)
    await world.until(lambda: len(world.emitted()) == 1)
    await world.image(1, series=2)
    await world.until(lambda: world.study().instances == 2)
    assert len(world.emitted()) == 1


async def test_duplicate_notifications_and_republished_orders_are_recognised(world: World) -> None:
    await world.order()
    await world.order()  # the very same record again (a retried publish)
    note = {"event": "study.stable", "study_uid": STUDY, "source": "webhook"}
    await world.image(1)
    for _ in range(3):
        outcomes = await world.engine.topics.publish(  # type: ignore[union-attr]
            "study.notified",
            Inbound(raw=json.dumps(note).encode(), kind="record", peer="t", decoded=note, dedup="n1"),
        )
        assert outcomes[0].status in ("accepted", "duplicate")
    await world.until(lambda: len(world.emitted()) == 1)
    await asyncio.sleep(QUIET * 2)
    assert len(world.emitted()) == 1


async def test_patient_mismatch_holds_and_emits_nothing(world: World) -> None:
    await world.order(patient_id="MRN-OTHER-0001")
    await world.image(1)
    await world.until(lambda: world.study().state == "held")
    assert world.study().reason == "patient-mismatch"
    await asyncio.sleep(WAIT * 1.5)
    assert world.emitted() == []
    with world.ctx.db.connect() as conn:  # type: ignore[union-attr]
        actions = set(conn.exec_driver_sql("SELECT action FROM audit_log").scalars())
    assert "correlation.mismatch" in actions


async def test_merge_rekeys_pending_orders(world: World) -> None:
    await world.order(patient_id="MRN-OLD-0001")
    merge = {"event": "merged", "patient_id": phi.MRN, "prior_patient_id": "MRN-OLD-0001"}
    await world.record("patient", "patient.merged", merge)
    await world.image(1)
    await world.until(lambda: len(world.emitted()) == 1)
    assert world.emitted()[0]["matched"] is True


async def test_one_study_two_accessions_waits_for_both_orders(world: World) -> None:
    await world.order(accession="ACC-A")
    await world.image(1, accession="ACC-A", extra_accession="ACC-B")
    await world.until(lambda: world.study().state == "waiting")
    await world.order(accession="ACC-B")
    await world.until(lambda: len(world.emitted()) == 1)
    assert sorted(o["accession"] for o in world.emitted()[0]["orders"]) == ["ACC-A", "ACC-B"]


async def test_order_change_after_ready_emits_update_not_ready(world: World) -> None:
    await world.order()
    await world.image(1)
    await world.until(lambda: len(world.emitted()) == 1)
    await world.order("changed", priority="routine")
    await world.until(lambda: len(world.emitted("study.updated")) == 1)
    assert len(world.emitted()) == 1 and world.emitted("study.updated")[0]["priority"] == "routine"


@pytest.mark.parametrize("step", ["after-order", "after-images", "while-waiting", "after-ready"])
async def test_restart_in_the_middle_yields_exactly_one_ready(world: World, step: str) -> None:
    if step == "while-waiting":
        await world.image(1)
        await world.until(lambda: world.study().state == "waiting")
        await world.restart()
        await world.order()
    else:
        await world.order()
        if step == "after-order":
            await world.restart()
        await world.image(1)
        if step == "after-images":
            await world.restart()
        if step == "after-ready":
            await world.until(lambda: len(world.emitted()) == 1)
            await world.restart()
    await world.until(lambda: len(world.emitted()) == 1)
    await world.until(lambda: world.delivered() >= 1)
    await asyncio.sleep(WAIT * 1.5)
    assert len(world.emitted()) == 1


async def test_no_phi_in_the_store_files_after_correlation(world: World, tmp_path: Path) -> None:
    await world.order()
    await world.image(1)
    await world.until(lambda: len(world.emitted()) == 1)
    await world.stop()
    assert phi.leaks_in_tree(tmp_path / "p") == {}


async def test_studies_cli_masks_phi_unless_asked_and_audits(world: World) -> None:
    from typer.testing import CliRunner

    from engine.cli import app

    await world.order()
    await world.image(1)
    await world.until(lambda: len(world.emitted()) == 1)
    study_id = world.study().id
    runner = CliRunner()
    listed = runner.invoke(app, ["studies", "list", "--root", str(world.root)])
    assert listed.exit_code == 0 and f"{study_id} images ready instances=1" in listed.output
    shown = runner.invoke(app, ["studies", "show", study_id, "--root", str(world.root)])
    assert shown.exit_code == 0 and "state: ready" in shown.output and "order " in shown.output
    assert phi.leaks_in_bytes(shown.output.encode()) == []
    unmasked = runner.invoke(app, ["studies", "show", study_id, "--phi", "--reason", "qa", "--root", str(world.root)])
    assert phi.MRN in unmasked.output and phi.ACCESSION in unmasked.output
    with world.ctx.db.connect() as conn:  # type: ignore[union-attr]
        assert conn.exec_driver_sql("SELECT count(*) FROM audit_log WHERE action = 'study.viewed'").scalar() == 1
    missing = runner.invoke(app, ["studies", "show", "nope", "--root", str(world.root)])
    assert missing.exit_code == 1 and "no study nope" in missing.output


@pytest.mark.parametrize("case", ["cancelled", "mismatch", "late-series"])
async def test_restart_in_the_middle_of_the_other_cases(world: World, case: str) -> None:
    if case == "cancelled":
        await world.order()
        await world.image(1)
        await world.order("cancelled")
        await world.restart()
        await world.until(lambda: world.study().state == "cancelled")
        expected = 0
    elif case == "mismatch":
        await world.order(patient_id="MRN-OTHER-0001")
        await world.image(1)
        await world.restart()
        await world.until(lambda: world.study().state == "held")
        expected = 0
    else:
        await world.order()
        await world.image(1)
        await world.until(lambda: len(world.emitted()) == 1)
        await world.image(1, series=2)
        await world.restart()
        await world.until(lambda: len(world.emitted()) == 2)
        expected = 2
    await asyncio.sleep(WAIT * 1.5)
    assert len(world.emitted()) == expected


async def test_bad_input_is_kept_and_changes_nothing(world: World) -> None:
    assert world.engine is not None and world.ctx is not None
    # An order naming neither accession nor placer number: stored (sealed), audited, nothing registered.
    await world.record("order", "order.accepted", {"event": "accepted", "patient_id": phi.MRN})
    # A cancellation of an order nobody placed.
    await world.order("cancelled", accession="ACC-NEVER-PLACED")
    # Something that is not a DICOM instance, sent to the assembling channel: refused and kept.
    note = {"event": "study.stable", "source": "x"}
    [outcome] = await world.engine.topics.publish(
        "test.dicom", Inbound(raw=json.dumps(note).encode(), kind="record", peer="t", decoded=note, dedup="bad-1")
    )
    assert outcome.status == "refused" and outcome.problem is not None
    assert "takes DICOM instances only" in outcome.problem.text
    kept = world.ctx.messages.get(outcome.message_id)  # type: ignore[arg-type]
    assert kept is not None and kept.status == "error"
    with world.ctx.db.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM orders").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM studies").scalar() == 0
        failures = dict(conn.exec_driver_sql(
            "SELECT action, count(*) FROM audit_log WHERE outcome = 'failure' GROUP BY action").all())  # fmt: skip
    assert failures.get("order.ignored") == 1 and failures.get("order.cancelled") == 1
    stored = [v.kind for v in world.ctx.messages.list(channel="correlation")]
    assert stored.count("record order.accepted") == 1 and stored.count("record order.cancelled") == 1


async def test_purged_header_instance_uses_another_and_a_fully_purged_study_is_dropped(world: World) -> None:
    """Retention may crypto-shred an open study's instances: the study goes on with a header it still
    has, and is dropped (audited) when none is left — never an evaluation failing at every sweep."""
    from sqlalchemy import delete, select

    from engine.store.tables import AuditRow, DataKeyRow

    assert world.ctx is not None
    await world.order()
    await world.image(0)
    await world.image(1)
    [study] = Repo(world.ctx.db).studies()
    with world.ctx.db.begin() as conn:  # the header instance's data key is gone (crypto-shredded)
        conn.execute(delete(DataKeyRow.__table__).where(DataKeyRow.__table__.c.record_id == study.header_message))
    await world.until(lambda: len(world.emitted()) == 1)
    assert world.emitted()[0]["instances"] == 2
    other = "1.2.826.0.1.3680043.10.999.77"
    await world.image(0, study=other)
    [second] = [s for s in Repo(world.ctx.db).studies() if s.id != study.id]
    gone = Repo(world.ctx.db).instance_messages(second.key)
    with world.ctx.db.begin() as conn:
        for message_id in gone:
            conn.execute(delete(DataKeyRow.__table__).where(DataKeyRow.__table__.c.record_id == message_id))
    await world.until(lambda: world.study_state(second.id) == "dropped")
    with world.ctx.db.connect() as conn:
        reasons = conn.execute(select(AuditRow.action).where(AuditRow.action == "study.dropped")).all()
    assert len(reasons) == 1
