"""Studies and inference jobs: the operators' view of what came in, what was matched and what ran.

Nothing here shows patient identity: studies are listed by their record ids, states, counts and
times; a study's page names its orders (ids, states, priorities), jobs and AI reports, with its
identifiers masked. Every look at a study is audited (`study.viewed`), at a job's findings too
(`inference.viewed`, as `radbridge jobs show` does). Retrying and cancelling a job follow
`radbridge jobs retry|cancel`: the same states allowed, the same audit entry, a reason required (free
text, so it goes into the sealed detail; the entry's purpose is the code `operations`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from engine.correlation.repo import Repo, StudyRow
from engine.inference.jobs import JobRow, Jobs, JobStateConflict, operator_change
from engine.outputs.reports import Reports
from engine.security.access import MASK, Principal
from engine.store.writer import StaleWrite
from engine.web.auth import Need, peer, site_of
from engine.web.pages import render
from engine.web.site import Site

router = APIRouter()
STUDIES, JOBS, MANAGE = Need("studies.view"), Need("jobs.view"), Need("jobs.manage")
StudyState = Literal["receiving", "stable", "waiting", "ready", "held", "dropped", "cancelled"]
JobState = Literal["queued", "running", "completed", "dead", "cancelled"]
Limit = Annotated[int, Query(ge=1, le=500)]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def study_json(s: StudyRow) -> dict[str, Any]:
    return {"id": s.id, "channel": s.channel, "state": s.state, "reason": s.reason, "instances": s.instances,
            "first_at": _iso(s.first_at), "last_at": _iso(s.last_at), "stable_due": _iso(s.stable_due),
            "wait_due": _iso(s.wait_due), "updated_at": _iso(s.updated_at)}  # fmt: skip


def job_json(j: JobRow) -> dict[str, Any]:
    took = (j.finished_at - j.started_at).total_seconds() if j.finished_at and j.started_at else None
    return {"id": j.id, "study_id": j.study_id, "model": j.model, "version": j.model_version, "state": j.state,
            "priority": j.priority, "attempts": j.attempts, "trigger": j.trigger, "channel": j.channel,
            "clinical": j.clinical, "error": j.error, "created_at": _iso(j.created_at),
            "started_at": _iso(j.started_at), "finished_at": _iso(j.finished_at), "took_s": took}  # fmt: skip


def _study_detail(site: Site, study: StudyRow) -> dict[str, Any]:
    repo = Repo(site.ctx.db)
    content = repo.content(study.key)
    orders = [{"id": o.id, "state": o.state, "priority": o.priority, "updated_at": _iso(o.updated_at)}
              for o in repo.orders_of_study(study.key)]  # fmt: skip
    reports = [{"report_id": r.report_id, "model": r.model, "version": r.version, "job_id": r.job_id,
                "status": r.status, "revision": r.revision, "critical": r.critical, "final_status": r.final_status,
                "updated_at": _iso(r.updated_at)} for r in Reports(site.ctx.db).of_study(study.id)]  # fmt: skip
    return {
        **study_json(study),
        "content": {"instances": content.count, "series": content.series, "modalities": list(content.modalities),
                    "body_parts": list(content.body_parts)},
        "released": study.triggered_hash is not None and study.triggered_hash == content.hash,
        "patient": {"name": MASK, "mrn": MASK, "accession": MASK, "study_uid": MASK, "masked": True},
        "orders": orders,
        "jobs": [job_json(j) for j in Jobs(site.ctx.db).of_study(study.id)],
        "reports": reports,
    }  # fmt: skip


def _audit_studies(request: Request, who: Principal, ids: list[str]) -> None:
    site_of(request).ctx.audit.record("study.viewed", actor=who.actor, peer=peer(request), record_ids=ids)


# -- studies -------------------------------------------------------------------------------------


@router.get("/api/studies", tags=["studies"])
def studies_json(request: Request, state: StudyState | None = None, limit: Limit = 50,
                 who: Principal = Depends(STUDIES)) -> dict[str, Any]:  # fmt: skip
    """Studies, newest first: ids, states, instance counts and times (no patient data)."""
    found = Repo(site_of(request).ctx.db).studies(state=state, limit=limit)
    _audit_studies(request, who, [s.id for s in found])
    return {"studies": [study_json(s) for s in found]}


@router.get("/api/studies/{study_id}", tags=["studies"])
def study_detail_json(study_id: str, request: Request, who: Principal = Depends(STUDIES)) -> Response:
    """One study: state, content, the orders matched (ids, states, priorities), its inference jobs and
    AI reports. Identifiers masked."""
    site = site_of(request)
    study = Repo(site.ctx.db).study_by_id(study_id)
    if study is None:
        return JSONResponse({"error": "no such study"}, status_code=404)
    _audit_studies(request, who, [study.id])
    return JSONResponse(_study_detail(site, study))


@router.get("/studies", include_in_schema=False)
def studies_page(request: Request, state: StudyState | None = None, limit: Limit = 100,
                 who: Principal = Depends(STUDIES)) -> Response:  # fmt: skip
    found = Repo(site_of(request).ctx.db).studies(state=state, limit=limit)
    _audit_studies(request, who, [s.id for s in found])
    return render(request, "studies.html", studies=found, state=state, states=StudyState.__args__)


@router.get("/studies/{study_id}", include_in_schema=False)
def study_page(study_id: str, request: Request, who: Principal = Depends(STUDIES)) -> Response:
    site = site_of(request)
    study = Repo(site.ctx.db).study_by_id(study_id)
    if study is None:
        return render(request, "study.html", status_code=404, study=None)
    _audit_studies(request, who, [study.id])
    return render(request, "study.html", study=_study_detail(site, study))


# -- jobs ----------------------------------------------------------------------------------------


class JobChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=3, max_length=500, description="Why: recorded with who in the audit entry.")


def _findings(site: Site, job: JobRow) -> list[dict[str, Any]]:
    if not job.result_message:
        return []
    record = json.loads(site.ctx.messages.read(job.result_message, "raw"))
    return [{"system": f["system"], "code": f["code"], "display": f.get("display"), "score": f["score"],
             "critical": bool(f.get("critical"))} for f in record["fields"]["result"]["findings"]]  # fmt: skip


def change_job(site: Site, who: Principal, job_id: str, to: str, reason: str, peer_: str | None) -> tuple[int, str]:
    """`radbridge jobs cancel|retry` over HTTP: (status, message)."""
    jobs = Jobs(site.ctx.db)
    job = jobs.get(job_id)
    if job is None:
        return 404, "no such job"
    try:
        item = operator_change(jobs, job, to, now=site.clock(), event=site.ctx.audit.event, actor=who.actor,
                               reason=reason, peer=peer_)  # fmt: skip
        site.ctx.writer.write(item)
    except JobStateConflict as exc:
        return 409, str(exc).replace(f"job {job.id}", "the job")
    except StaleWrite:
        return 409, "the job changed meanwhile: look again"
    return 200, to


@router.get("/api/jobs", tags=["jobs"])
def jobs_json(request: Request, state: JobState | None = None, limit: Limit = 50,
              who: Principal = Depends(JOBS)) -> dict[str, Any]:  # fmt: skip
    """Inference jobs, newest first: model and version, study id, state, attempts, trigger, time taken, last error."""
    return {"jobs": [job_json(j) for j in Jobs(site_of(request).ctx.db).list(state=state, limit=limit)]}


@router.get("/api/jobs/{job_id}", tags=["jobs"])
def job_detail_json(job_id: str, request: Request, who: Principal = Depends(JOBS)) -> Response:
    """One job with its digests and its result's findings by code and score (audited: inference.viewed)."""
    site = site_of(request)
    job = Jobs(site.ctx.db).get(job_id)
    if job is None:
        return JSONResponse({"error": "no such job"}, status_code=404)
    out = {**job_json(job), "input_digest": job.input_digest, "output_digest": job.output_digest,
           "request_message": job.request_message, "result_message": job.result_message, "findings": []}  # fmt: skip
    if job.result_message:
        try:
            out["findings"] = _findings(site, job)
        except LookupError:  # purged by retention
            out["findings"] = None
        site.ctx.audit.record("inference.viewed", actor=who.actor, peer=peer(request),
                              record_ids=[job.id, job.result_message])  # fmt: skip
    return JSONResponse(out)


def _change_json(request: Request, who: Principal, job_id: str, to: str, reason: str) -> Response:
    status, text = change_job(site_of(request), who, job_id, to, reason, peer(request))
    return JSONResponse({"id": job_id, "state": text} if status == 200 else {"error": text}, status_code=status)


@router.post("/api/jobs/{job_id}/retry", tags=["jobs"])
def retry_json(job_id: str, body: JobChange, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Queue a dead or cancelled job again, with a fresh attempt count."""
    return _change_json(request, who, job_id, "queued", body.reason)


@router.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_json(job_id: str, body: JobChange, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Cancel a queued or running job (a running one's result is dropped)."""
    return _change_json(request, who, job_id, "cancelled", body.reason)


@router.get("/jobs", include_in_schema=False)
def jobs_page(request: Request, state: JobState | None = None, limit: Limit = 100,
              who: Principal = Depends(JOBS)) -> Response:  # fmt: skip
    found = Jobs(site_of(request).ctx.db).list(state=state, limit=limit)
    return render(request, "jobs.html", jobs=found, state=state, states=JobState.__args__, message=None)


def _change_page(request: Request, who: Principal, job_id: str, to: str, reason: str) -> Response:
    status, text = change_job(site_of(request), who, job_id, to, reason, peer(request))
    if status == 200:
        return RedirectResponse("/jobs", status_code=303)
    found = Jobs(site_of(request).ctx.db).list(limit=100)
    return render(request, "jobs.html", status_code=status, jobs=found, state=None, states=JobState.__args__,
                  message=text[:1].upper() + text[1:] + ".")  # fmt: skip


@router.post("/jobs/{job_id}/retry", include_in_schema=False)
def retry_page(job_id: str, request: Request, reason: Annotated[str, Form(min_length=3, max_length=500)],
               who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    return _change_page(request, who, job_id, "queued", reason)


@router.post("/jobs/{job_id}/cancel", include_in_schema=False)
def cancel_page(job_id: str, request: Request, reason: Annotated[str, Form(min_length=3, max_length=500)],
                who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    return _change_page(request, who, job_id, "cancelled", reason)
