"""The outputs stage through the running engine: an order and a CT study become a result from a
model served over real HTTP; the stage releases it, raises the worklist priority once, corrects it
after a late series, withdraws it when the order is cancelled or the model version recalled,
withholds shadow results, recognises the RIS echoing its own XO and links the final report."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.core.component import Inbound
from engine.dicom import read_header
from engine.outputs.reports import Reports
from engine.store.tables import AuditRow
from tests import phi
from tests.inference.http.servers import KServe, serve
from tests.inference.test_jobs import World, oip_model, project
from tests.inference.volumes import head_ct

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = """\
name: outputs
source: {kind: outputs, sweep_s: 0.1}
destinations:
  - {name: events, kind: topic, retry: {backoff_s: 0.05}}
"""


class Outputs(World):
    def out(self, topic: str) -> list[dict]:
        assert self.ctx is not None
        found = []
        for channel in ("results-watch", "worklist-watch"):
            for view in self.ctx.messages.list(channel=channel, limit=100):
                record = json.loads(self.ctx.messages.read(view.id))
                if record["topic"] == topic:
                    found.append(record["fields"])
        return sorted(found, key=lambda f: f.get("revision", 0))

    def actions(self, action: str) -> int:
        assert self.ctx is not None
        with self.ctx.db.connect() as conn:
            return len(conn.execute(select(AuditRow.seq).where(AuditRow.action == action)).all())

    async def late_series(self, study_uid: str) -> None:
        series = head_ct(slices=4, size=16, pixel_mm=8.0, slice_mm=10.0, noise_hu=0.0, study_uid=study_uid,
                         series_number=2)  # fmt: skip
        assert self.engine is not None
        for raw in series.instances:
            header = read_header(raw)
            inbound = Inbound(raw=raw, kind="dicom", peer="test", decoded=header, dedup=header.sop_instance_uid)
            await self.engine.topics.publish("test.dicom", inbound)

    async def record(self, topic: str, type_: str, fields: dict) -> None:
        raw = json.dumps({"fields": fields, "topic": topic, "type": type_}, sort_keys=True).encode()
        assert self.engine is not None
        await self.engine.topics.publish(topic, Inbound(raw=raw, kind="record", peer="test", decoded=json.loads(raw)))


@pytest.fixture
def kserve() -> KServe:
    return KServe(shape=[-1, 4, 8, 8], scores=[0.95, 0.3, 0.6])


@pytest.fixture
async def world(tmp_path: Path, store_url: str | None, kserve: KServe,
                request: pytest.FixtureRequest) -> AsyncIterator[Outputs]:  # fmt: skip
    options = getattr(request, "param", {})
    with serve(kserve.app()) as url:
        root = project(tmp_path / "p", store_url, oip_model(url, **options), "ich-ct")
        (root / "channels" / "outputs.yaml").write_text(OUTPUTS)
        for name, topic in (("results-watch", "result.*"), ("worklist-watch", "worklist.*")):
            text = f"name: {name}\nsource: {{kind: topic, topic: '{topic}'}}\n"
            (root / "channels" / f"{name}.yaml").write_text(text)
        w = Outputs(root)
        await w.start()
        yield w
        await w.stop()


async def test_release_priority_correction_and_withdrawal(world: Outputs) -> None:
    await world.order()
    instances = await world.study()
    await world.until(lambda: len(world.out("result.preliminary")) == 1)
    [first] = world.out("result.preliminary")
    assert (first["status"], first["revision"], first["critical"]) == ("preliminary", 1, True)
    assert first["orders"][0]["accession"] == phi.ACCESSION
    await world.until(lambda: len(world.out("worklist.priority")) == 1)
    [raised] = world.out("worklist.priority")
    assert (raised["priority"], raised["previous_priority"]) == ("stat", "routine")
    assert raised["update_id"].startswith("RB") and len(raised["update_id"]) == 20
    assert "ich-ct 1.2.0" in raised["reason"] and phi.MRN not in raised["reason"]
    # a late series: new content, a new job, a correction of the same report; no second update at stat
    await world.late_series(read_header(instances[0]).study_uid)
    await world.until(lambda: len(world.out("result.corrected")) == 1)
    [corrected] = world.out("result.corrected")
    assert (corrected["report_id"], corrected["revision"]) == (first["report_id"], 2)
    assert len(world.out("worklist.priority")) == 1
    # the order is cancelled after delivery: the report is withdrawn
    await world.order(event="cancelled")
    await world.until(lambda: len(world.out("result.withdrawn")) == 1)
    [withdrawn] = world.out("result.withdrawn")
    assert (withdrawn["report_id"], withdrawn["revision"], withdrawn["status"]) == (first["report_id"], 3, "withdrawn")
    assert world.ctx is not None
    [row] = Reports(world.ctx.db).of_study(first["study_id"])
    assert (row.status, row.revision) == ("withdrawn", 3)
    assert world.actions("result.released") == 1 and world.actions("result.corrected") == 1
    assert world.actions("priority.raised") == 1 and world.actions("result.withdrawn") == 1


async def test_echoed_xo_is_recognised_and_final_report_linked(world: Outputs) -> None:
    await world.order()
    await world.study()
    await world.until(lambda: len(world.out("worklist.priority")) == 1)
    # the RIS echoes the engine's XO as an order change at the raised priority
    await world.record("order.changed", "order", {"event": "changed", "order_control": "XO", "priority": "stat",
                                                  "accession": phi.ACCESSION, "patient_id": phi.MRN})  # fmt: skip
    await world.until(lambda: world.actions("priority.echo") == 1)
    assert len(world.out("worklist.priority")) == 1
    await world.record("report.final", "report", {"accession": phi.ACCESSION, "status": "F",
                                                  "text": "No acute intracranial abnormality."})  # fmt: skip
    await world.until(lambda: world.actions("report.linked") == 1)
    assert world.ctx is not None
    [first] = world.out("result.preliminary")
    [row] = Reports(world.ctx.db).of_study(first["study_id"])
    assert row.final_status == "F" and row.final_message is not None
    assert b"No acute" in world.ctx.messages.read(row.final_message)


async def test_recalled_model_version_withdraws_its_reports(world: Outputs) -> None:
    await world.order()
    await world.study()
    await world.until(lambda: len(world.out("result.preliminary")) == 1)
    assert world.ctx is not None
    from engine.inference.registry import Registry

    Registry(world.ctx.db, world.ctx.writer, world.ctx.audit).set_state("ich-ct", "1.2.0", "recalled", "user:qa",
                                                                        "field safety notice FSN-1")  # fmt: skip
    await world.until(lambda: len(world.out("result.withdrawn")) == 1)
    assert world.actions("model.recalled") == 1


async def test_shadow_results_are_withheld(world: Outputs) -> None:
    await world.order()
    await world.study()
    await world.until(lambda: len(world.out("result.preliminary")) == 1)
    [first] = world.out("result.preliminary")
    shadow = {**first, "job_id": "job-shadow", "version": "2.0.0-shadow", "clinical": False}
    await world.record("inference.completed", "result", shadow)
    await world.until(lambda: world.actions("result.withheld") == 1)
    assert len(world.out("result.preliminary")) == 1 and world.out("result.corrected") == []


async def test_result_after_every_order_was_cancelled_is_withheld(world: Outputs) -> None:
    await world.order()
    await world.study()
    await world.until(lambda: len(world.out("result.preliminary")) == 1)
    [first] = world.out("result.preliminary")
    await world.order(event="cancelled")
    await world.until(lambda: len(world.out("result.withdrawn")) == 1)
    late = {**first, "job_id": "job-late", "status": "preliminary", "revision": 1}
    await world.record("inference.completed", "result", late)
    await world.until(lambda: world.actions("result.withheld") == 1)
    assert len(world.out("result.corrected")) == 0


async def test_oru_and_priority_update_go_over_mllp_and_are_acked(tmp_path: Path, store_url: str | None,
                                                                  kserve: KServe) -> None:  # fmt: skip
    """The result channels as an analyst writes them: topic → mapping → MLLP destination, to an HL7
    peer that ACKs; the ORU carries OBR-25 P and one coded OBX per finding, the ORM carries ORC-1 XO."""
    from engine.hl7v2 import Message
    from tests.connectors.test_mllp_destination import ack_for, peer

    async with peer(ack_for("AA")) as ris:
        with serve(kserve.app()) as url:
            root = project(tmp_path / "p", store_url, oip_model(url), "ich-ct")
            (root / "channels" / "outputs.yaml").write_text(OUTPUTS)
            for name, topic, mapping in (("results-ris", "result.*", "result-to-oru.yaml"),
                                         ("worklist-ris", "worklist.priority", "priority-to-orm-xo.yaml")):  # fmt: skip
                (root / "channels" / f"{name}.yaml").write_text(
                    f"name: {name}\nsource: {{kind: topic, topic: '{topic}'}}\nmapping: mappings/{mapping}\n"
                    f"destinations:\n  - {{name: ris, kind: mllp, host: 127.0.0.1, port: {ris.port}, "
                    "retry: {backoff_s: 0.05}}\n"
                )
            shutil.copytree(REPO / "mappings", root / "mappings", dirs_exist_ok=True)
            world = Outputs(root)
            await world.start()
            try:
                await world.order()
                await world.study()
                await world.until(lambda: len(ris.frames) == 2)
                assert world.ctx is not None
                await world.until(lambda: all(v.status == "sent" for c in ("results-ris", "worklist-ris")
                                              for v in world.ctx.messages.list(channel=c)))  # fmt: skip
            finally:
                await world.stop()
    by_type = {}
    for frame in ris.frames:
        message = Message.parse(frame.decode())
        by_type[message.get("MSH-9.1")] = message
    oru, orm = by_type["ORU"], by_type["ORM"]
    assert oru.get("OBR-25") == "P" and oru.get("OBR-18") == phi.ACCESSION and oru.get("PID-3.1") == phi.MRN
    assert (oru.get("OBX[2]-3.1"), oru.get("OBX[2]-8"), oru.get("OBX[2]-11")) == ("1386000", "AA", "P")
    assert oru.get("OBX[2]-17.1") == "ich-ct" and oru.get("OBX[2]-17.2") == "1.2.0"
    assert orm.get("ORC-1") == "XO" and orm.get("ORC-7.6") == "S" and orm.get("MSH-10").startswith("RB")
