"""The radiologist's worklist: ready studies, most urgent first (the rule: engine/outputs/worklist.py),
live over server-sent events, with feedback on each AI finding and a deliberate, audited reveal of
who the patient is.

Auditing the view (`worklist.viewed`, the study ids listed as record ids): the page and the JSON
list are audited on every request. The live refresh (/worklist/rows, fetched on each `changed`
event) is audited unless this node wrote an entry for the same user less than a minute ago that
already names every study now listed: a worklist that only reorders, or gains an AI result or a
verdict, is not re-audited more than once a minute, while a study newly listed always is.

The event stream works across engine nodes sharing one store: each node polls a cheap fingerprint
of the worklist (engine.outputs.worklist.version) at most once a second, whatever the number of
streams open, and each stream sends `changed` when it moves.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from engine.outputs.feedback import VERDICTS, Feedback, FeedbackRow
from engine.outputs.worklist import Identity, Row, Worklist, version
from engine.security.access import MASK, AccessDenied, Principal
from engine.web.auth import Need, peer, site_of, still_signed_in
from engine.web.pages import render
from engine.web.site import Site

router = APIRouter()
VIEW, FEEDBACK = Need("worklist.view"), Need("findings.feedback")
POLL_S = 1.0  # how often the store's worklist fingerprint is read (per node, not per stream)
RECHECK_S = 60.0  # how often a stream checks that its session or token still holds
HEARTBEAT_S = 15.0  # a comment line, so proxies keep an idle stream open
STREAM_S = 30 * 60.0  # then the stream ends; EventSource reconnects (and catches up with Last-Event-ID)
RETRY_MS = 2000  # the browser's reconnection delay
AUDIT_QUIET_S = 60.0  # live refreshes listing nothing new are audited at most once a minute per user
LIMIT = 200


class Watch:
    """The worklist fingerprint, read from the store at most once per POLL_S in this process."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._value: tuple[Any, ...] = ()

    def current(self) -> str:
        with self._lock:  # one reader queries; the others wait for its answer
            if time.monotonic() - self._at >= POLL_S * 0.9:
                self._value = version(self.db)
                self._at = time.monotonic()
            return hashlib.sha256(repr(self._value).encode()).hexdigest()[:16]


class _Audited:
    """username -> (when, study ids) of the last worklist.viewed this node wrote for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, frozenset[str]]] = {}

    def needed(self, username: str, ids: list[str], live: bool) -> bool:
        now, listed = time.monotonic(), frozenset(ids)
        with self._lock:
            last = self._last.get(username)
            if live and last is not None and now - last[0] < AUDIT_QUIET_S and listed <= last[1]:
                return False
            self._last[username] = (now, listed)
            return True


def _state(site: Site) -> tuple[Worklist, Watch, _Audited]:
    """Per-site state, built once: the worklist repository (with its cache), the watch, the audit memo."""
    found = site.extras.get("worklist")
    if found is None:
        found = (Worklist(site.ctx.db, site.ctx.messages), Watch(site.ctx.db), _Audited())
        site.extras["worklist"] = found
    return found  # type: ignore[no-any-return]


def worklist_of(site: Site) -> Worklist:
    return _state(site)[0]


def _rows(request: Request, who: Principal, *, live: bool) -> list[Row]:
    """The worklist for this caller, its view audited (see the module docstring for the live refresh)."""
    site = site_of(request)
    worklist, _, audited = _state(site)
    rows = worklist.rows(site.clock(), username=who.username, limit=LIMIT)
    ids = [r.study_id for r in rows]
    if audited.needed(who.username, ids, live):
        site.ctx.audit.record("worklist.viewed", actor=who.actor, peer=peer(request), record_ids=ids,
                              detail={"rows": len(ids), "live": live})  # fmt: skip
    return rows


def _identity_json(identity: Identity | None) -> dict[str, Any]:
    if identity is None:
        return {"name": MASK, "mrn": MASK, "accession": MASK, "masked": True}
    return {"name": identity.patient_name, "mrn": identity.patient_id, "accession": ", ".join(identity.accessions),
            "masked": False}  # fmt: skip


def row_json(row: Row, now: datetime, identity: Identity | None = None) -> dict[str, Any]:
    return {
        "study_id": row.study_id,
        "priority": row.priority,
        "ordered_priority": row.ordered_priority,
        "why": {k: v for k, v in vars(row.why).items() if v is not None},
        "modality": row.modality,
        "procedure": {"code": row.procedure_code, "text": row.procedure_text},
        "complete_at": row.complete_at.isoformat(),
        "waiting_s": row.waiting_s(now),
        "orders": list(row.orders),
        "ai_status": row.ai_status,
        "reports": [
            {"report_id": r.report_id, "model": r.model, "version": r.version, "job_id": r.job_id, "status": r.status,
             "revision": r.revision, "critical": r.critical,
             "findings": [{"system": f.system, "code": f.code, "display": f.display, "score": f.score,
                           "critical": f.critical, "feedback": f.feedback, "feedback_earlier": f.feedback_earlier}
                          for f in r.findings]}
            for r in row.reports
        ],
        "patient": _identity_json(identity),
    }  # fmt: skip


@router.get("/api/worklist", tags=["worklist"])
def worklist_json(request: Request, who: Principal = Depends(VIEW)) -> dict[str, Any]:
    """Studies ready for reading, most urgent first; why each has its priority; the AI reports and your
    feedback on their findings. Patient identity is masked (reveal: POST /api/worklist/{id}/reveal)."""
    now = site_of(request).clock()
    return {"rows": [row_json(r, now) for r in _rows(request, who, live=False)]}


@router.get("/worklist", include_in_schema=False)
def worklist_page(request: Request, who: Principal = Depends(VIEW)) -> Response:
    return render(request, "worklist.html", rows=_rows(request, who, live=False), revealed={})


@router.get("/worklist/rows", include_in_schema=False)
def worklist_rows(request: Request, who: Principal = Depends(VIEW)) -> Response:
    """The table body the page refreshes on each `changed` event."""
    return render(request, "_worklist_rows.html", rows=_rows(request, who, live=True), revealed={})


@router.get("/api/worklist/events", tags=["worklist"])
async def worklist_events(request: Request, who: Principal = Depends(VIEW)) -> StreamingResponse:
    """Server-sent events: `changed` whenever the worklist changes (on any engine node sharing the
    store); a comment every 15 s; the stream ends after 30 minutes and the browser reconnects."""
    _, watch, _ = _state(site_of(request))
    since = request.headers.get("last-event-id")

    async def stream() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        started = beat = loop.time()
        last = await asyncio.to_thread(watch.current)
        yield f"retry: {RETRY_MS}\nid: {last}\n\n"  # sets the id the browser sends back on reconnecting
        if since is not None and since != last:
            yield f"event: changed\nid: {last}\ndata: {{}}\n\n"  # changed while it was away
        checked = started
        while loop.time() - started < STREAM_S:
            await asyncio.sleep(POLL_S)
            if await request.is_disconnected():
                break
            if loop.time() - checked >= RECHECK_S:  # signed out, idled out or revoked: the stream ends
                checked = loop.time()
                if not await asyncio.to_thread(still_signed_in, request):
                    break
            current = await asyncio.to_thread(watch.current)
            if current != last:
                last, beat = current, loop.time()
                yield f"event: changed\nid: {current}\ndata: {{}}\n\n"
            elif loop.time() - beat >= HEARTBEAT_S:
                beat = loop.time()
                yield ": keep-alive\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


# -- reveal --------------------------------------------------------------------------------------


def _reveal(request: Request, who: Principal, study_id: str) -> Identity | None:
    """The study's patient, after the access check and its audit entry (AccessDenied -> 403)."""
    site = site_of(request)
    identity = worklist_of(site).identity(study_id)
    if identity is not None:
        site.grants.reveal(who, "phi.reveal", [study_id], site.clock(), purpose="treatment", peer=peer(request))
    return identity


@router.post("/api/worklist/{study_id}/reveal", tags=["worklist"])
def reveal_json(study_id: str, request: Request, who: Principal = Depends(VIEW)) -> Response:
    """Patient name, MRN and accession numbers of one study in clear: needs phi.reveal (the role, or a
    break-glass grant in force); every reveal, and every refusal, is audited."""
    try:
        identity = _reveal(request, who, study_id)
    except AccessDenied:
        return JSONResponse({"error": "your role may not reveal patient identity (phi.reveal)"}, status_code=403)
    if identity is None:
        return JSONResponse({"error": "no such study"}, status_code=404)
    return JSONResponse({"study_id": study_id, "patient": _identity_json(identity)})


@router.post("/worklist/{study_id}/reveal", include_in_schema=False)
def reveal_page(study_id: str, request: Request, who: Principal = Depends(VIEW)) -> Response:
    """The worklist again, this one row's patient shown (until the next live refresh masks it again)."""
    try:
        identity = _reveal(request, who, study_id)
    except AccessDenied:
        return render(request, "denied.html", status_code=403, message="Your role may not reveal patient identity.")
    rows = _rows(request, who, live=False)
    if identity is None:
        return render(request, "worklist.html", status_code=404, rows=rows, revealed={}, message="No such study.")
    return render(request, "worklist.html", rows=rows, revealed={study_id: identity})


# -- feedback ------------------------------------------------------------------------------------


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    report_id: str = Field(max_length=120, description="The AI report (study id/model), as the worklist lists it.")
    code: str = Field(max_length=64, description="The finding's code.")
    verdict: Literal["agree", "disagree", "not_applicable"]


def _give(request: Request, who: Principal, study_id: str, report_id: str, code: str, verdict: str) -> str | None:
    """Store (replacing the caller's earlier verdict on the finding) and audit; an error text, or None."""
    site = site_of(request)
    worklist = worklist_of(site)
    report = worklist.report(report_id)
    if report is None or report.study_id != study_id:
        return "no such AI report on this study"
    if code not in {f.code for f in worklist.findings(report.message_id)}:
        return "the AI report has no finding with this code"
    row: FeedbackRow = Feedback.row(report_id, study_id, report.job_id, report.model, report.version, code, verdict,
                                    who.username, site.clock())  # fmt: skip
    item = Feedback(site.ctx.db).give(row)
    item.audit.append(site.ctx.audit.event(
        "finding.feedback", actor=who.actor, peer=peer(request), record_ids=[study_id, report_id],
        detail={"verdict": verdict, "model": report.model, "version": report.version, "code": code,
                "job": report.job_id},
    ))  # fmt: skip
    site.ctx.writer.write(item)
    return None


@router.post("/api/worklist/{study_id}/feedback", tags=["worklist"])
def feedback_json(study_id: str, body: FeedbackIn, request: Request, who: Principal = Depends(FEEDBACK)) -> Response:
    """Agree, disagree or not applicable on one AI finding; a new verdict replaces your earlier one
    (the audit trail keeps both)."""
    problem = _give(request, who, study_id, body.report_id, body.code, body.verdict)
    if problem:
        return JSONResponse({"error": problem}, status_code=404)
    return JSONResponse({"study_id": study_id, "report_id": body.report_id, "code": body.code,
                         "verdict": body.verdict})  # fmt: skip


@router.post("/worklist/{study_id}/feedback", include_in_schema=False)
def feedback_form(
    study_id: str,
    request: Request,
    report_id: Annotated[str, Form(max_length=120)],
    code: Annotated[str, Form(max_length=64)],
    verdict: Annotated[str, Form(max_length=16)],
    who: Principal = Depends(FEEDBACK),
) -> Response:
    if verdict not in VERDICTS:
        return JSONResponse({"error": "invalid request", "problems": [{"field": "verdict"}]}, status_code=422)
    problem = _give(request, who, study_id, report_id, code, verdict)
    if problem:
        rows = _rows(request, who, live=False)
        return render(request, "worklist.html", status_code=404, rows=rows, revealed={}, message=problem.capitalize())
    return RedirectResponse(f"/worklist#study-{study_id}", status_code=303)
