"""The worklist over real HTTP: the ordering rule, masked identity (and its audited reveal), feedback on
AI findings, the audit of every view (live refreshes throttled), and the live event stream — on one
node, across two nodes sharing PostgreSQL, and end to end with the real pipeline (correlation, the
built-in reference model, outputs) where a study raised to stat by a critical finding reaches the top
of an open worklist within seconds of its result."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select, update

from engine.core.component import Inbound
from engine.dicom import read_header
from engine.inference.jobs import Jobs
from engine.outputs.feedback import Feedback
from engine.runtime.context import open_context
from engine.security import keyring
from engine.store.tables import AiReport, AuditRow
from engine.store.writer import WriteItem
from tests import phi
from tests.conftest import fresh_postgres_database, write_project
from tests.inference.test_jobs import World, project
from tests.inference.volumes import BLEED_5ML, head_ct, part10
from tests.outputs.test_outputs import OUTPUTS
from tests.web.conftest import Web, open_web_context
from tests.web.worklist_seed import FRACTURE, ICH, Seed, web_over

PLACEHOLDER = "00000000-0000-7000-8000-000000000000"


def audit(web: Web, action: str) -> list[AuditRow]:
    with web.ctx.db.connect() as conn:
        return list(conn.execute(select(AuditRow).where(AuditRow.action == action).order_by(AuditRow.seq)).all())


def detail(web: Web, entry: AuditRow) -> dict:
    return web.ctx.audit.open_detail(entry.id, entry.detail) or {}


def assert_no_phi(text: str) -> None:
    assert phi.leaks_in_bytes(text.encode()) == [], "patient identity in a masked response"


def rows(client: httpx.Client) -> list[dict]:
    response = client.get("/api/worklist")
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def test_ordering_rule(web: Web) -> None:
    """Effective priority (the higher of ordered and AI-raised) first, then the longest waiting; a raise
    by a withdrawn AI report does not count; cancelled, held and already-read studies are not listed."""
    seed = Seed(web.ctx)
    raised = seed.study(priority="routine", waited_min=30)
    seed.result(raised, raise_to="stat")
    ordered_stat = seed.study(priority="stat", waited_min=10)
    older_stat = seed.study(priority="stat", waited_min=60)
    routine_old = seed.study(priority="routine", waited_min=120)
    urgent = seed.study(priority="urgent", waited_min=5)
    recalled = seed.study(priority="routine", waited_min=100)
    seed.result(recalled, raise_to="stat", status="withdrawn")
    cancelled = seed.study(priority="stat", waited_min=200, order_state="cancelled")
    held = seed.study(priority="stat", waited_min=200, state="held")
    no_order = seed.study(waited_min=1, with_order=False)
    listed = rows(web.session("radiologist"))
    order = [r["study_id"] for r in listed]
    assert order == [older_stat.study_id, raised.study_id, ordered_stat.study_id, urgent.study_id,
                     routine_old.study_id, recalled.study_id, no_order.study_id]  # fmt: skip
    assert cancelled.study_id not in order and held.study_id not in order
    top = {r["study_id"]: r for r in listed}
    why = top[raised.study_id]["why"]
    assert top[raised.study_id]["priority"] == "stat" and top[raised.study_id]["ordered_priority"] == "routine"
    assert why["source"] == "ai" and (why["model"], why["version"], why["code"]) == ("ich-ct", "1.2.0", "1386000")
    assert why["text"] == "AI ich-ct 1.2.0: Intracranial hemorrhage (score 0.95)"
    assert top[ordered_stat.study_id]["why"] == {"source": "order", "text": "ordered stat"}
    assert top[recalled.study_id]["priority"] == "routine" and top[recalled.study_id]["ai_status"] == "withdrawn"
    assert top[raised.study_id]["ai_status"] == "preliminary" and top[urgent.study_id]["ai_status"] == "none"
    assert top[raised.study_id]["procedure"] == {"code": "CTHEAD", "text": "CT head without contrast"}
    assert top[no_order.study_id]["procedure"]["text"] == "CT HEAD (from the images)"
    assert top[raised.study_id]["modality"] == "CT" and 29 * 60 <= top[raised.study_id]["waiting_s"] <= 31 * 60
    [report] = top[raised.study_id]["reports"]
    assert [(f["code"], f["score"], f["critical"], f["feedback"]) for f in report["findings"]] == [
        ("1386000", 0.95, True, None)
    ]
    # the page shows the same order, the raised row marked, with its reason
    page = web.session("radiologist", accept_html=True).get("/worklist").text
    positions = [page.index(f'id="study-{s.study_id}"') for s in (older_stat, raised, ordered_stat, urgent)]
    assert positions == sorted(positions)
    assert 'class="raised"' in page and "AI ich-ct 1.2.0: Intracranial hemorrhage (score 0.95)" in page
    assert 'data-live="/api/worklist/events" data-refresh="/worklist/rows"' in page


def test_a_final_report_takes_the_study_off_the_worklist(web: Web) -> None:
    seed = Seed(web.ctx)
    study = seed.study()
    report_id, _ = seed.result(study)
    assert [r["study_id"] for r in rows(web.session("technologist"))] == [study.study_id]
    stmt = update(AiReport.__table__).where(AiReport.__table__.c.report_id == report_id).values(final_status="F")
    web.ctx.writer.write(WriteItem(statements=[(stmt, {})]))
    assert rows(web.session("technologist")) == []


@pytest.mark.parametrize("role", ["technologist", "radiologist", "integration_analyst", "admin", "service"])
def test_identity_is_masked_in_every_view(web: Web, role: str) -> None:
    seed = Seed(web.ctx)
    study = seed.study()
    seed.result(study, raise_to="stat")
    client = web.token("service") if role == "service" else web.session(role)
    listed = rows(client)
    assert listed[0]["patient"] == {"name": "•••••", "mrn": "•••••", "accession": "•••••", "masked": True}
    texts = [client.get("/api/worklist").text, client.get(f"/api/studies/{study.study_id}").text,
             client.get("/api/studies").text]  # fmt: skip
    if role != "service":
        html = web.session(role, accept_html=True)
        texts += [
            html.get("/worklist").text,
            html.get("/worklist/rows").text,
            html.get(f"/studies/{study.study_id}").text,
        ]
    for text in texts:
        assert study.study_id in text
        assert_no_phi(text)


def test_reveal_is_for_phi_reveal_only_and_audited(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seed = Seed(web.ctx)
    first, second = seed.study(waited_min=20), seed.study(waited_min=10)
    response = web.session("radiologist").post(f"/api/worklist/{first.study_id}/reveal")
    assert response.status_code == 200
    assert response.json()["patient"] == {"name": f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}", "mrn": first.mrn,
                                          "accession": first.accession, "masked": False}  # fmt: skip
    # the page: that one row revealed, the other still masked; the page offers the form to radiologists only
    page = web.session("radiologist", accept_html=True).post(f"/worklist/{first.study_id}/reveal")
    assert page.status_code == 200 and first.accession in page.text and second.accession not in page.text
    assert f'action="/worklist/{second.study_id}/reveal"' in page.text
    assert "/reveal" not in web.session("technologist", accept_html=True).get("/worklist").text
    # a technologist is refused (403), and the refusal is audited too; an unknown study is 404
    assert web.session("technologist").post(f"/api/worklist/{first.study_id}/reveal").status_code == 403
    assert web.session("technologist", accept_html=True).post(f"/worklist/{first.study_id}/reveal").status_code == 403
    assert web.session("radiologist").post(f"/api/worklist/{PLACEHOLDER}/reveal").status_code == 404
    entries = audit(web, "phi.reveal")
    assert [(e.actor, e.outcome, json.loads(e.record_ids)) for e in entries] == [
        ("user:radiologist", "success", [first.study_id]),
        ("user:radiologist", "success", [first.study_id]),
        ("user:technologist", "denied", [first.study_id]),
        ("user:technologist", "denied", [first.study_id]),
    ]
    assert detail(web, entries[0])["permission"] == "phi.reveal"
    assert phi.leaks_in_bytes(caplog.text.encode()) == []  # revealed to the caller, never to a log


def test_feedback_is_stored_replaced_audited_and_shown(web: Web) -> None:
    seed = Seed(web.ctx)
    study = seed.study()
    report_id, job_id = seed.result(study, findings=[(ICH, 0.95, True), (FRACTURE, 0.6, False)], raise_to="stat")
    radiologist = web.session("radiologist")
    url = f"/api/worklist/{study.study_id}/feedback"
    response = radiologist.post(url, json={"report_id": report_id, "code": "1386000", "verdict": "agree"})
    assert response.status_code == 200, response.text
    [shown] = rows(radiologist)
    assert {f["code"]: f["feedback"] for f in shown["reports"][0]["findings"]} == {
        "1386000": "agree",
        "263204007": None,
    }
    assert {f["code"]: f["feedback"] for f in rows(web.session("technologist"))[0]["reports"][0]["findings"]} == {
        "1386000": None,
        "263204007": None,
    }  # fmt: skip  (each user sees their own verdicts)
    # a change replaces the verdict; the audit keeps both
    assert (
        radiologist.post(url, json={"report_id": report_id, "code": "1386000", "verdict": "disagree"}).status_code
        == 200
    )
    [stored] = Feedback(web.ctx.db).of_studies([study.study_id])
    assert (stored.verdict, stored.username, stored.job_id, stored.model, stored.version, stored.code) == (
        "disagree", "radiologist", job_id, "ich-ct", "1.2.0", "1386000",
    )  # fmt: skip
    entries = audit(web, "finding.feedback")
    assert [json.loads(e.record_ids) for e in entries] == [sorted([study.study_id, report_id])] * 2
    assert [detail(web, e)["verdict"] for e in entries] == ["agree", "disagree"]
    assert {k: v for k, v in detail(web, entries[0]).items() if k != "verdict"} == {
        "model": "ich-ct", "version": "1.2.0", "code": "1386000", "job": job_id,
    }  # fmt: skip
    # the page form: one more verdict on the other finding, then back to the worklist
    form = web.session("radiologist", accept_html=True)
    response = form.post(f"/worklist/{study.study_id}/feedback",
                         data={"report_id": report_id, "code": "263204007", "verdict": "not_applicable"})  # fmt: skip
    assert response.status_code == 303 and response.headers["location"].startswith("/worklist")
    assert "you: not applicable" in form.get("/worklist").text
    # refusals: a technologist may not (403, audited); unknown report or finding (404); a bad verdict (422)
    agree = {"report_id": report_id, "code": "1386000", "verdict": "agree"}
    assert web.session("technologist").post(url, json=agree).status_code == 403
    assert audit(web, "auth.denied")[-1].actor == "user:technologist"
    assert radiologist.post(url, json={**agree, "code": "999"}).status_code == 404
    other = seed.study()
    assert radiologist.post(f"/api/worklist/{other.study_id}/feedback", json=agree).status_code == 404
    assert radiologist.post(url, json={**agree, "verdict": "maybe"}).status_code == 422
    assert len(Feedback(web.ctx.db).of_studies([study.study_id])) == 2
    assert len(audit(web, "finding.feedback")) == 3


def test_views_are_audited_and_live_refreshes_throttled(web: Web) -> None:
    seed = Seed(web.ctx)
    first = seed.study()
    page = web.session("radiologist", accept_html=True)
    assert page.get("/worklist").status_code == 200
    [entry] = audit(web, "worklist.viewed")
    assert (entry.actor, json.loads(entry.record_ids)) == ("user:radiologist", [first.study_id])
    assert detail(web, entry) == {"rows": 1, "live": False}
    # live refreshes listing nothing new within the minute: not audited again
    for _ in range(3):
        assert page.get("/worklist/rows").status_code == 200
    assert len(audit(web, "worklist.viewed")) == 1
    # a study newly listed is audited at once, even within the minute
    second = seed.study()
    assert second.study_id in page.get("/worklist/rows").text
    entries = audit(web, "worklist.viewed")
    assert len(entries) == 2 and sorted(json.loads(entries[1].record_ids)) == sorted([first.study_id, second.study_id])
    assert detail(web, entries[1])["live"] is True
    # the page and the JSON list are audited every time, and per user
    page.get("/worklist")
    web.session("technologist").get("/api/worklist")
    entries = audit(web, "worklist.viewed")
    assert [e.actor for e in entries[2:]] == ["user:radiologist", "user:technologist"]
    assert all(e.outcome == "success" for e in entries)


def read_event(stream: httpx.Response, lines: object, deadline: float) -> dict[str, str]:
    """The next event block with a field (comments skipped), as field -> value."""
    block: dict[str, str] = {}
    for line in lines:  # type: ignore[attr-defined]
        if line == "":
            if block:
                return block
            continue
        if time.monotonic() > deadline:
            break
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        block[name] = value.strip()
    raise AssertionError(f"no event before the deadline (got {block})")


def test_event_stream_says_changed_on_a_new_result_and_on_feedback(web: Web) -> None:
    seed = Seed(web.ctx)
    study = seed.study()
    client = web.session("radiologist")
    with client.stream("GET", "/api/worklist/events", timeout=httpx.Timeout(10.0)) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        first = read_event(stream, lines, time.monotonic() + 5)
        assert first["retry"] == "2000" and first["id"]
        report_id, _ = seed.result(study, raise_to="stat")
        started = time.monotonic()
        changed = read_event(stream, lines, started + 5)
        assert changed["event"] == "changed" and changed["id"] != first["id"]
        assert time.monotonic() - started < 3.0
        other = web.session("radiologist")
        other.post(f"/api/worklist/{study.study_id}/feedback",
                   json={"report_id": report_id, "code": "1386000", "verdict": "agree"})  # fmt: skip
        started = time.monotonic()
        assert read_event(stream, lines, started + 5)["event"] == "changed"
        assert time.monotonic() - started < 3.0
    # reconnecting with an id from before a change: `changed` at once; with the current id: nothing
    headers = {"Last-Event-ID": first["id"]}
    with client.stream("GET", "/api/worklist/events", headers=headers, timeout=httpx.Timeout(10.0)) as stream:
        lines = stream.iter_lines()
        current = read_event(stream, lines, time.monotonic() + 5)["id"]
        assert read_event(stream, lines, time.monotonic() + 3)["event"] == "changed"
    with client.stream("GET", "/api/worklist/events", headers={"Last-Event-ID": current},
                       timeout=httpx.Timeout(2.5)) as stream:  # fmt: skip
        lines = stream.iter_lines()
        read_event(stream, lines, time.monotonic() + 5)
        with pytest.raises(httpx.ReadTimeout):
            read_event(stream, lines, time.monotonic() + 10)


def test_event_stream_needs_worklist_view(web: Web) -> None:
    with web.session("auditor").stream("GET", "/api/worklist/events") as stream:
        assert stream.status_code == 403
    with web.client().stream("GET", "/api/worklist/events") as stream:
        assert stream.status_code == 401


def test_a_change_on_another_node_reaches_the_stream(tmp_path: Path) -> None:
    """Two engine nodes share PostgreSQL: a result recorded by one reaches a worklist open on the other."""
    with fresh_postgres_database("radbridge_worklist") as url:
        ctx_a = open_web_context(tmp_path / "a", url)
        yaml = f"node: {{id: node-b}}\nkeys: {{source: file, file: keys/keyring.json}}\nstore: {{url: '{url}'}}\n"
        node_b = write_project(tmp_path / "b", yaml)
        shared = keyring.read_file(tmp_path / "a" / "keys" / "keyring.json")  # the same keys: one deployment
        keyring.write_file(shared, node_b / "keys" / "keyring.json")
        ctx_b = open_context(node_b)
        try:
            with web_over(ctx_a) as web:
                seed = Seed(ctx_b)
                study = seed.study()
                with web.session("radiologist").stream("GET", "/api/worklist/events") as stream:
                    lines = stream.iter_lines()
                    read_event(stream, lines, time.monotonic() + 5)
                    seed.result(study, raise_to="stat")
                    started = time.monotonic()
                    assert read_event(stream, lines, started + 5)["event"] == "changed"
                    assert time.monotonic() - started < 3.0
                [row] = rows(web.session("radiologist"))
                assert (row["study_id"], row["priority"]) == (study.study_id, "stat")
        finally:
            ctx_b.close()
            ctx_a.close()


def test_unknown_study_and_empty_worklist(web: Web) -> None:
    radiologist = web.session("radiologist", accept_html=True)
    assert "No study is waiting to be read." in radiologist.get("/worklist").text
    assert web.session("radiologist").get("/api/worklist").json() == {"rows": []}
    assert radiologist.post(f"/worklist/{PLACEHOLDER}/feedback",
                            data={"report_id": "x", "code": "y", "verdict": "agree"}).status_code == 404  # fmt: skip


# -- end to end: the real pipeline, the web app served over the running engine's context ------------

REFERENCE = (
    '    - {name: head-ct-hyperdensity, version: "1.0.0", kind: builtin, initial_state: active,\n'
    '       evidence: docs/reference-model.md, thresholds: {"1386000": {critical: 0.5, report: 0.1}}}'
)


class Pipeline(World):
    async def order(self, accession: str, priority: str = "routine") -> None:  # type: ignore[override]
        fields = {"event": "accepted", "accession": accession, "patient_id": phi.MRN, "priority": priority,
                  "patient_name": f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}", "procedure_code": "CTHEAD",
                  "procedure_text": "CT head without contrast"}  # fmt: skip
        raw = json.dumps({"fields": fields, "topic": "order.accepted", "type": "order"}, sort_keys=True).encode()
        assert self.engine is not None
        inbound = Inbound(raw=raw, kind="record", peer="test", decoded=json.loads(raw), dedup=raw.hex()[:40])
        assert [o.status for o in await self.engine.topics.publish("order.accepted", inbound)] == ["accepted"]

    async def head(self, accession: str, *, bleed: bool, seed: int) -> None:
        series = head_ct(shapes=(BLEED_5ML,) if bleed else (), seed=seed)
        assert self.engine is not None
        for raw in series.instances:
            ds = pydicom.dcmread(io.BytesIO(raw))
            ds.AccessionNumber = accession
            raw = part10(ds)
            header = read_header(raw)
            inbound = Inbound(raw=raw, kind="dicom", peer="test", decoded=header, dedup=header.sop_instance_uid)
            assert [o.status for o in await self.engine.topics.publish("test.dicom", inbound)] == ["accepted"]


def async_session(web: Web, role: str) -> httpx.AsyncClient:
    signed_in = web.session(role)
    return httpx.AsyncClient(base_url=web.url, headers=dict(signed_in.headers), cookies=signed_in.cookies, timeout=10)


async def next_event(lines: AsyncIterator[str], timeout: float) -> dict[str, str]:
    async def read() -> dict[str, str]:
        block: dict[str, str] = {}
        async for line in lines:
            if line == "" and block:
                return block
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                block[name] = value.strip()
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(read(), timeout)


async def test_end_to_end_a_critical_finding_reaches_the_top_of_an_open_worklist(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    root = project(tmp_path / "p", None, REFERENCE, "head-ct-hyperdensity")
    (root / "channels" / "outputs.yaml").write_text(OUTPUTS)
    world = Pipeline(root)
    await world.start()
    try:
        assert world.ctx is not None
        with web_over(world.ctx) as web:
            radiologist = async_session(web, "radiologist")

            async def listed() -> list[dict]:
                response = await radiologist.get("/api/worklist")
                assert response.status_code == 200
                return response.json()["rows"]

            # a routine head CT without a finding: on the worklist, routine, its AI result preliminary
            await world.order(f"{phi.ACCESSION}A")
            await world.head(f"{phi.ACCESSION}A", bleed=False, seed=5)
            deadline = time.monotonic() + 60
            while not [r for r in await listed() if r["ai_status"] == "preliminary"]:
                assert time.monotonic() < deadline, "the first study's result never reached the worklist"
                await asyncio.sleep(0.2)
            [normal] = await listed()
            assert normal["priority"] == "routine" and normal["reports"][0]["findings"] == []
            # the worklist open in a browser: its event stream; then a routine head CT holding a 5 mL bleed
            async with radiologist.stream("GET", "/api/worklist/events", timeout=httpx.Timeout(90)) as stream:
                lines = stream.aiter_lines()
                await next_event(lines, 5)
                await world.order(f"{phi.ACCESSION}B")
                await world.head(f"{phi.ACCESSION}B", bleed=True, seed=6)
                deadline = time.monotonic() + 90
                while True:
                    assert (await next_event(lines, max(1.0, deadline - time.monotonic())))["event"] == "changed"
                    rows_now = await listed()
                    if rows_now[0]["study_id"] != normal["study_id"] and rows_now[0]["priority"] == "stat":
                        seen_at = datetime.now(UTC)
                        break
            top, second = rows_now
            assert second["study_id"] == normal["study_id"]
            [job] = [j for j in Jobs(world.ctx.db).of_study(top["study_id"]) if j.state == "completed"]
            assert job.finished_at is not None
            finished = job.finished_at.replace(tzinfo=UTC) if job.finished_at.tzinfo is None else job.finished_at
            assert (seen_at - finished).total_seconds() < 5, "the raised study took too long to reach the top"
            assert top["ordered_priority"] == "routine" and top["why"]["source"] == "ai"
            assert top["why"]["model"] == "head-ct-hyperdensity" and top["why"]["version"] == "1.0.0"
            assert top["why"]["display"] == "Intracranial hemorrhage" and top["why"]["score"] >= 0.5
            assert_no_phi(json.dumps(rows_now))
            # the radiologist agrees, then changes their mind; monitoring follows
            [report] = top["reports"]
            url = f"/api/worklist/{top['study_id']}/feedback"
            verdict = {"report_id": report["report_id"], "code": "1386000", "verdict": "agree"}
            assert (await radiologist.post(url, json=verdict)).status_code == 200
            monitored = (await radiologist.get("/api/models/monitoring")).json()["versions"]
            [reference] = [v for v in monitored if v["name"] == "head-ct-hyperdensity"]
            assert reference["state"] == "active"
            [week] = reference["weeks"]
            assert (week["processed"], week["positive"], week["critical"], week["agreement"]) == (2, 1, 1, 1.0)
            assert week["positive_rate"] == 0.5 and week["feedback"] == {"agree": 1, "disagree": 0, "not_applicable": 0}
            assert (await radiologist.post(url, json={**verdict, "verdict": "disagree"})).status_code == 200
            [reference] = [v for v in (await radiologist.get("/api/models/monitoring")).json()["versions"]
                           if v["name"] == "head-ct-hyperdensity"]  # fmt: skip
            assert reference["total"]["feedback"] == {"agree": 0, "disagree": 1, "not_applicable": 0}
            assert reference["total"]["agreement"] == 0.0
            # a technologist sees the same worklist masked, and may not give feedback
            technologist = async_session(web, "technologist")
            masked = await technologist.get("/api/worklist")
            assert [r["study_id"] for r in masked.json()["rows"]] == [top["study_id"], normal["study_id"]]
            assert_no_phi(masked.text)
            assert (await technologist.post(url, json=verdict)).status_code == 403
            await radiologist.aclose()
            await technologist.aclose()
    finally:
        await world.stop()
    assert phi.leaks_in_bytes(caplog.text.encode()) == []
