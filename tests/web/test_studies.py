"""Studies and inference jobs over real HTTP: lists and details without patient data (audited), and
retrying or cancelling a job with the same rules and audit entry as `radbridge jobs retry|cancel`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from engine.core.ids import new_id
from engine.inference.jobs import Jobs
from engine.store.tables import AuditRow, InferenceJob
from engine.store.writer import WriteItem
from tests import phi
from tests.web.conftest import Web
from tests.web.worklist_seed import FRACTURE, ICH, Seed

PLACEHOLDER = "00000000-0000-7000-8000-000000000000"


def audit(web: Web, action: str) -> list[AuditRow]:
    with web.ctx.db.connect() as conn:
        return list(conn.execute(select(AuditRow).where(AuditRow.action == action).order_by(AuditRow.seq)).all())


def dead_job(web: Web, study_id: str) -> str:
    now = datetime.now(UTC)
    job_id = new_id()
    web.ctx.writer.write(WriteItem(inserts=[(InferenceJob.__table__, {
        "id": job_id, "study_id": study_id, "study_uid_idx": None, "content_hash": "c" * 64, "model": "ich-ct",
        "model_version": "1.2.0", "state": "dead", "priority": 3, "attempts": 3, "due_at": None, "holder": None,
        "lease_until": None, "channel": "inference", "trigger": "neuro/head-ct", "request_message": new_id(),
        "result_message": None, "clinical": None, "input_digest": None, "output_digest": None,
        "error": "RetryableError: model server 503", "revision": 4, "created_at": now - timedelta(minutes=5),
        "started_at": now - timedelta(minutes=4), "finished_at": now - timedelta(minutes=1), "updated_at": now,
    })]))  # fmt: skip
    return job_id


def test_studies_list_and_detail_carry_no_patient_data_and_are_audited(web: Web) -> None:
    seed = Seed(web.ctx)
    ready = seed.study(priority="stat")
    report_id, job_id = seed.result(ready, findings=[(ICH, 0.95, True), (FRACTURE, 0.6, False)])
    held = seed.study(state="held")
    client = web.session("technologist")
    listed = client.get("/api/studies")
    assert listed.status_code == 200
    assert {s["id"]: s["state"] for s in listed.json()["studies"]} == {ready.study_id: "ready", held.study_id: "held"}
    assert [s["id"] for s in client.get("/api/studies", params={"state": "held"}).json()["studies"]] == [held.study_id]
    assert len(client.get("/api/studies", params={"limit": 1}).json()["studies"]) == 1
    assert client.get("/api/studies", params={"state": "nonsense"}).status_code == 422
    assert client.get("/api/studies", params={"limit": 0}).status_code == 422
    detail = client.get(f"/api/studies/{ready.study_id}")
    assert detail.status_code == 200
    body = detail.json()
    assert [(o["id"], o["state"], o["priority"]) for o in body["orders"]] == [(ready.order_ids[0], "ready", "stat")]
    assert [(j["id"], j["state"], j["model"], j["version"]) for j in body["jobs"]] == [
        (job_id, "completed", "ich-ct", "1.2.0")
    ]
    assert [(r["report_id"], r["status"], r["critical"]) for r in body["reports"]] == [(report_id, "preliminary", True)]
    assert body["patient"]["masked"] is True and set(body["patient"].values()) == {"•••••", True}
    assert body["content"] == {"instances": 1, "series": 1, "modalities": ["CT"], "body_parts": ["HEAD"]}
    for text in (listed.text, detail.text):
        assert phi.leaks_in_bytes(text.encode()) == []
    assert client.get(f"/api/studies/{PLACEHOLDER}").status_code == 404
    entries = audit(web, "study.viewed")
    assert sorted(json.loads(entries[0].record_ids)) == sorted([ready.study_id, held.study_id])
    assert json.loads(entries[-1].record_ids) == [ready.study_id] and entries[-1].actor == "user:technologist"
    # the pages
    html = web.session("technologist", accept_html=True)
    page = html.get("/studies")
    assert page.status_code == 200 and ready.study_id in page.text and held.study_id in page.text
    page = html.get(f"/studies/{ready.study_id}")
    assert page.status_code == 200 and job_id in page.text and report_id in page.text
    assert phi.leaks_in_bytes(page.content) == []
    assert html.get(f"/studies/{PLACEHOLDER}").status_code == 404
    assert web.session("auditor").get("/api/studies").status_code == 403


def test_jobs_list_and_detail(web: Web) -> None:
    seed = Seed(web.ctx)
    study = seed.study()
    _, job_id = seed.result(study, findings=[(ICH, 0.95, True), (FRACTURE, 0.6, False)])
    dead = dead_job(web, study.study_id)
    client = web.session("radiologist")
    assert [j["id"] for j in client.get("/api/jobs").json()["jobs"]] == [dead, job_id]
    assert [j["id"] for j in client.get("/api/jobs", params={"state": "dead"}).json()["jobs"]] == [dead]
    detail = client.get(f"/api/jobs/{job_id}").json()
    assert [(f["code"], f["score"], f["critical"]) for f in detail["findings"]] == [
        ("1386000", 0.95, True), ("263204007", 0.6, False),
    ]  # fmt: skip
    assert detail["state"] == "completed" and detail["took_s"] == 4.0
    assert phi.leaks_in_bytes(json.dumps(detail).encode()) == []
    [viewed] = audit(web, "inference.viewed")
    assert viewed.actor == "user:radiologist" and job_id in json.loads(viewed.record_ids)
    assert client.get(f"/api/jobs/{dead}").json()["error"] == "RetryableError: model server 503"
    assert client.get(f"/api/jobs/{PLACEHOLDER}").status_code == 404
    assert web.session("auditor").get("/api/jobs").status_code == 403
    page = web.session("technologist", accept_html=True).get("/jobs")
    assert page.status_code == 200 and dead in page.text and "/retry" not in page.text  # no jobs.manage


def test_retry_and_cancel_follow_the_cli_rules_and_are_audited(web: Web) -> None:
    seed = Seed(web.ctx)
    study = seed.study()
    _, done = seed.result(study)
    dead = dead_job(web, study.study_id)
    admin = web.session("admin")
    reason = {"reason": "model server back after maintenance"}
    assert web.session("radiologist").post(f"/api/jobs/{dead}/retry", json=reason).status_code == 403
    assert admin.post(f"/api/jobs/{dead}/retry", json={}).status_code == 422  # a reason is required
    response = admin.post(f"/api/jobs/{dead}/retry", json=reason)
    assert response.status_code == 200 and response.json() == {"id": dead, "state": "queued"}
    job = Jobs(web.ctx.db).get(dead)
    assert job is not None and (job.state, job.attempts, job.finished_at) == ("queued", 0, None) and job.due_at
    assert admin.post(f"/api/jobs/{dead}/retry", json=reason).status_code == 409  # queued: not again
    assert admin.post(f"/api/jobs/{done}/cancel", json=reason).status_code == 409  # completed: too late
    assert admin.post(f"/api/jobs/{dead}/cancel", json={"reason": "duplicate study"}).status_code == 200
    job = Jobs(web.ctx.db).get(dead)
    assert job is not None and job.state == "cancelled" and job.due_at is None
    assert admin.post(f"/api/jobs/{PLACEHOLDER}/cancel", json=reason).status_code == 404
    [retried] = audit(web, "inference.retried")
    [cancelled] = audit(web, "inference.cancelled")
    assert (retried.actor, retried.purpose, sorted(json.loads(retried.record_ids))) == (
        "user:admin", "operations", sorted([dead, study.study_id]),
    )  # fmt: skip
    assert web.ctx.audit.open_detail(retried.id, retried.detail) == {
        "model": "ich-ct",
        "version": "1.2.0",
        "was": "dead",
        "reason": reason["reason"],
    }  # fmt: skip  (the free-text reason sealed, never in a clear column)
    assert web.ctx.audit.open_detail(cancelled.id, cancelled.detail)["was"] == "queued"  # type: ignore[index]
    # the page's forms: retry the cancelled job, then back to the list; a refused change says why
    page = web.session("integration_analyst", accept_html=True)
    assert f'action="/jobs/{dead}/retry"' in page.get("/jobs").text
    response = page.post(f"/jobs/{dead}/retry", data={"reason": "try once more"})
    assert response.status_code == 303 and response.headers["location"] == "/jobs"
    refused = page.post(f"/jobs/{done}/cancel", data={"reason": "too late"})
    assert refused.status_code == 409 and "only queued or running jobs can be cancelled" in refused.text
    assert len(audit(web, "inference.retried")) == 2
