"""Break-glass review in the browser and the API (the web side of `radbridge users grants` and
`radbridge users review`); asking for break-glass is the caller's own page (engine/web/account.py).

Lists show who, when, how long, in force or not, reviewed by whom, and never the stated reason: it
is free text that may name a patient. A reviewer opens one grant's reason (and review note) with an
explicit POST, audited `auth.break_glass_listed` naming the grant, as `--reasons` is on the command
line. A review is by someone other than the holder, once (the store enforces both).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from engine.core.errors import PermanentError
from engine.security.access import Principal
from engine.store.breakglass import Grant
from engine.store.writer import StaleWrite
from engine.web.auth import Need, peer, site_of
from engine.web.pages import render

router = APIRouter()
REVIEW, MANAGE = Need("break_glass.review"), Need("users.manage")
RECENT = timedelta(days=30)  # reviewed grants shown on the page


class Review(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(min_length=1, max_length=2000, description="What the review found (sealed like the reason).")


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def state(grant: Grant, now: datetime) -> str:
    return "in_force" if grant.in_force(now) else "ended" if grant.ended_at else "expired"


def shown(grant: Grant, now: datetime) -> dict[str, Any]:
    """A grant as lists show it: no reason, no note."""
    return {"id": grant.id, "username": grant.username, "minutes": grant.minutes, "granted_at": grant.granted_at,
            "expires_at": grant.expires_at, "ended_at": grant.ended_at, "state": state(grant, now),
            "reviewed_by": grant.reviewed_by, "reviewed_at": grant.reviewed_at}  # fmt: skip


def in_force_now(request: Request) -> list[dict[str, Any]]:
    """The grants in force now (the dashboard's break-glass panel: render `_gov_break_glass_in_force.html`
    with `in_force` set to this)."""
    site = site_of(request)
    now = site.clock()
    return [shown(g, now) for g in site.grants.list(now, in_force=True)]


def _get(request: Request, grant_id: str) -> Grant:
    grant = site_of(request).grants.get(grant_id)
    if grant is None:
        raise Refused(404, "no such break-glass grant")
    return grant


def reasons(request: Request, who: Principal, grant_id: str) -> dict[str, Any]:
    """The stated reason and review note of one grant; the reading is audited."""
    site = site_of(request)
    grant = _get(request, grant_id)
    site.ctx.audit.record("auth.break_glass_listed", actor=who.actor, peer=peer(request), record_ids=[grant.id])
    return {"id": grant.id, "username": grant.username, "reason": grant.reason, "review_note": grant.review_note}


def review(request: Request, who: Principal, grant_id: str, note: str) -> None:
    site = site_of(request)
    grant = _get(request, grant_id)
    try:  # the store refuses a review by the holder, a second review and an empty note
        site.grants.review(grant.id, who.actor, note, site.clock())
    except StaleWrite:
        raise Refused(409, "the grant is already reviewed") from None
    except PermanentError as exc:
        status = 403 if "other than" in str(exc) else 409 if "already" in str(exc) else 422
        raise Refused(status, str(exc)) from None


def end(request: Request, who: Principal, grant_id: str) -> None:
    site = site_of(request)
    now = site.clock()
    grant = _get(request, grant_id)
    if not grant.in_force(now):
        raise Refused(409, f"the grant is not in force ({state(grant, now).replace('_', ' ')})")
    try:
        site.grants.end(grant.id, who.actor, now)
    except StaleWrite:
        raise Refused(409, "the grant was ended meanwhile") from None


def _json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value.isoformat() if isinstance(value, datetime) else value


def _refused(exc: Refused) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


# -- API -----------------------------------------------------------------------------------------


@router.get("/api/break-glass", tags=["break-glass"])
def grants_api(request: Request, in_force: bool = False, unreviewed: bool = False,
               who: Principal = Depends(REVIEW)) -> Response:  # fmt: skip
    """Break-glass grants, newest first: who, when, how long, in force, ended, reviewed by whom. Never the
    reason (POST /api/break-glass/{id}/reason reads it, audited)."""
    site = site_of(request)
    now = site.clock()
    grants = site.grants.list(now, in_force=in_force, unreviewed=unreviewed)
    return JSONResponse({"grants": _json([shown(g, now) for g in grants])})


@router.post("/api/break-glass/{grant_id}/reason", tags=["break-glass"])
def reason_api(grant_id: str, request: Request, who: Principal = Depends(REVIEW)) -> Response:
    """The grant's stated reason and review note: free text that may name a patient, so reading it is
    audited (`auth.break_glass_listed`)."""
    try:
        return JSONResponse(reasons(request, who, grant_id))
    except Refused as exc:
        return _refused(exc)


@router.post("/api/break-glass/{grant_id}/review", tags=["break-glass"])
def review_api(grant_id: str, body: Review, request: Request, who: Principal = Depends(REVIEW)) -> Response:
    """Record the review (by someone other than the holder; once). Audited `auth.break_glass_review`."""
    try:
        review(request, who, grant_id, body.note)
    except Refused as exc:
        return _refused(exc)
    return JSONResponse(_json(shown(_get(request, grant_id), site_of(request).clock())))


@router.post("/api/break-glass/{grant_id}/end", tags=["break-glass"])
def end_api(grant_id: str, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """End a grant in force before it expires (audited `auth.break_glass_ended`)."""
    try:
        end(request, who, grant_id)
    except Refused as exc:
        return _refused(exc)
    return JSONResponse(_json(shown(_get(request, grant_id), site_of(request).clock())))


# -- page ----------------------------------------------------------------------------------------


def _page(request: Request, message: str | None = None, status_code: int = 200,
          revealed: dict[str, Any] | None = None) -> Response:  # fmt: skip
    site = site_of(request)
    now = site.clock()
    grants = site.grants.list(now, since=now - RECENT)
    unreviewed = [shown(g, now) for g in site.grants.list(now, unreviewed=True)]
    return render(request, "break_glass.html", status_code=status_code, message=message, revealed=revealed,
                  in_force=in_force_now(request), unreviewed=unreviewed,
                  reviewed=[shown(g, now) for g in grants if g.reviewed_at is not None])  # fmt: skip


@router.get("/break-glass", include_in_schema=False)
def grants_page(request: Request, who: Principal = Depends(REVIEW)) -> Response:
    return _page(request)


@router.post("/break-glass/{grant_id}/reason", include_in_schema=False)
def reason_form(grant_id: str, request: Request, who: Principal = Depends(REVIEW)) -> Response:
    try:
        revealed = reasons(request, who, grant_id)
    except Refused as exc:
        return _page(request, str(exc), exc.status)
    return _page(request, revealed=revealed)  # in this response only, never in a URL


@router.post("/break-glass/{grant_id}/review", include_in_schema=False)
def review_form(grant_id: str, request: Request, note: Annotated[str, Form(min_length=1, max_length=2000)],
                who: Principal = Depends(REVIEW)) -> Response:  # fmt: skip
    try:
        review(request, who, grant_id, note)
    except Refused as exc:
        return _page(request, str(exc), exc.status)
    return RedirectResponse("/break-glass", status_code=303)


@router.post("/break-glass/{grant_id}/end", include_in_schema=False)
def end_form(grant_id: str, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    try:
        end(request, who, grant_id)
    except Refused as exc:
        return _page(request, str(exc), exc.status)
    return RedirectResponse("/break-glass", status_code=303)
