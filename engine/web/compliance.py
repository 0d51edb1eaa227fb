"""Compliance evidence and the accounting of disclosures in the browser and the API (the web side of
`radbridge compliance report` and `radbridge disclosures`).

The report is the one engine/compliance/report.py builds: each HIPAA §164.312 safeguard and checklist
item with pass / attention / fail, why, and its evidence (configuration names, key ids, times, counts;
never patient data). Building it may take a while (the vulnerability scan, the SBOM), so it is kept
per process for a few minutes; "refresh" builds it again. Every report served is audited
(`compliance.reported`, as the command line does). The accounting of disclosures takes the patient
identifier in the request body, never the URL, finds the rows by its blind index, never shows it
back, and is audited (`disclosure.viewed`) with the reason given.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from engine.compliance import disclosures, pdf
from engine.compliance.evidence import SAFEGUARDS
from engine.compliance.report import ACTION, Report, audit_detail, build, render_html
from engine.security.access import Principal
from engine.web.auth import Need, peer, site_of
from engine.web.pages import render

router = APIRouter()
VIEW = Need("compliance.view")
CACHE_SECONDS = 300.0
VULN_TIMEOUT_S = 60.0  # a page waits for it: shorter than the command line's 120 s
_CACHE, _LOCK = "governance.compliance", "governance.compliance.lock"
_lock_guard = threading.Lock()


def _lock(site: Any) -> threading.Lock:
    with _lock_guard:
        return site.extras.setdefault(_LOCK, threading.Lock())  # type: ignore[no-any-return]


def report(request: Request, who: Principal, output: str, refresh: bool = False) -> tuple[Report, bool]:
    """The report (built now, or this process's copy from the last few minutes) and whether it was
    cached; serving it is audited."""
    site = site_of(request)
    with _lock(site):  # one build at a time: two auditors opening the page do not scan twice
        cached = site.extras.get(_CACHE)
        was_cached = cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS and not refresh
        if not was_cached:
            built = build(site.ctx, now=site.clock(), vuln_timeout_s=VULN_TIMEOUT_S)
            site.extras[_CACHE] = cached = (time.monotonic(), built)
    found: Report = cached[1]
    detail = audit_detail(found, {"web": output})
    detail["cached"] = was_cached
    site.ctx.audit.record(ACTION, actor=who.actor, peer=peer(request), record_ids=[found.config_hash], detail=detail)
    return found, was_cached


def as_json(found: Report, cached: bool) -> dict[str, Any]:
    items = [{"id": i.id, "title": i.title, "safeguard": i.safeguard, "safeguard_title": SAFEGUARDS[i.safeguard],
              "cite": i.cite, "status": i.status, "why": i.why, "evidence": i.details}
             for i in found.items]  # fmt: skip
    doc = {
        "engine_version": found.engine_version, "node": found.node, "config_hash": found.config_hash,
        "store": found.store, "generated_at": found.generated_at, "cached": cached, "counts": found.counts(),
        "summary": found.summary(),
        "safeguards": [{"id": key, "title": title, "items": [i.id for i in found.items if i.safeguard == key]}
                       for key, title in SAFEGUARDS.items()],
        "items": items,
    }  # fmt: skip
    return json.loads(json.dumps(doc, default=str))  # evidence may hold dates and paths


@router.get("/api/compliance", tags=["compliance"])
def compliance_api(request: Request, refresh: bool = False, who: Principal = Depends(VIEW)) -> dict[str, Any]:
    """The compliance report (as `radbridge compliance report`): each §164.312 safeguard and checklist item
    with status pass / attention / fail, why, and its evidence. Kept for 5 minutes; `refresh=true`
    builds it again. Audited (`compliance.reported`)."""
    return as_json(*report(request, who, "json", refresh))


@router.get("/compliance", include_in_schema=False)
def compliance_page(request: Request, who: Principal = Depends(VIEW)) -> Response:
    found, cached = report(request, who, "page")
    return render(request, "compliance.html", report=found, cached=cached, sections=found.sections(),
                  counts=found.counts())  # fmt: skip


@router.post("/compliance/refresh", include_in_schema=False)
def compliance_refresh(request: Request, who: Principal = Depends(VIEW)) -> Response:
    report(request, who, "page", refresh=True)
    return RedirectResponse("/compliance", status_code=303)


@router.get("/compliance.pdf", include_in_schema=False)
def compliance_pdf(request: Request, who: Principal = Depends(VIEW)) -> Response:
    """The report as PDF, printed by headless Chromium; 503 when none is installed."""
    browser = pdf.find_browser()
    if browser is None:
        return JSONResponse({"error": "PDF export needs headless Chromium, which is not installed on this host "
                                      "(Debian: apt-get install chromium; or set RADBRIDGE_CHROMIUM)"},
                            status_code=503)  # fmt: skip
    found, _ = report(request, who, "pdf")
    with tempfile.TemporaryDirectory(prefix="radbridge-report-") as tmp:
        out = Path(tmp) / "report.pdf"
        try:
            pdf.html_to_pdf(render_html(found), out, browser=browser)
        except pdf.PdfError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        content = out.read_bytes()
    name = f"radbridge-compliance-{found.generated_at[:10]}.pdf"
    return Response(content, media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip


# -- accounting of disclosures ---------------------------------------------------------------------


class DisclosureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(min_length=1, max_length=128, description="The patient identifier (MRN); never shown back.")
    reason: str = Field(min_length=1, max_length=500, description="Why the accounting is read (the audit's purpose).")


def _entries(request: Request, who: Principal, patient_id: str, reason: str) -> list[dict[str, Any]]:
    ctx = site_of(request).ctx
    found = disclosures.view(ctx, patient_id.strip(), who.actor, reason.strip())
    return [{"id": e.id, "at": e.at.isoformat() if isinstance(e.at, datetime) else e.at, "recipient": e.recipient,
             "purpose": e.purpose, "method": e.method, "items": e.items} for e in found]  # fmt: skip


@router.post("/api/disclosures", tags=["compliance"])
def disclosures_api(body: DisclosureRequest, request: Request, who: Principal = Depends(VIEW)) -> dict[str, Any]:
    """The accounting of disclosures for one patient (§164.528): date, recipient, purpose, method, items.
    The identifier goes in the body, is matched by blind index and never returned; the reading is audited
    (`disclosure.viewed`) with the reason as purpose of use."""
    entries = _entries(request, who, body.patient_id, body.reason)
    return {"disclosures": entries, "count": len(entries)}


@router.get("/disclosures", include_in_schema=False)
def disclosures_page(request: Request, who: Principal = Depends(VIEW)) -> Response:
    return render(request, "disclosures.html", entries=None)


@router.post("/disclosures", include_in_schema=False)
def disclosures_form(
    request: Request,
    patient_id: Annotated[str, Form(min_length=1, max_length=128)],
    reason: Annotated[str, Form(min_length=1, max_length=500)],
    who: Principal = Depends(VIEW),
) -> Response:
    # Rendered, not redirected: the result belongs to an identifier that must not go into a URL.
    entries = _entries(request, who, patient_id, reason)
    return render(request, "disclosures.html", entries=entries)
