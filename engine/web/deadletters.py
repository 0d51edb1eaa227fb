"""The dead-letter queue: deliveries that gave up, with retry and discard (engine.store.deadletters).

Retry puts the delivery back in its queue and wakes the destination's worker when this process runs
the channel (otherwise the engine's workers pick it up at their next poll). Discard gives it up for
good, with a reason (sealed in the audit entry: free text may name a patient). Reprocess runs the
message through its channel again as configured now (a new message, linked to the original) and
settles the original's dead deliveries as discarded ("reprocessed as NEW"), so nobody retries them
too and sends the same data twice.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from engine.runtime.reprocess import reprocess
from engine.security.access import Principal, allowed
from engine.store.deadletters import DeadLetter, DeadLetters
from engine.store.writer import StaleWrite
from engine.web.auth import Forbidden, Need, peer, site_of
from engine.web.pages import render
from engine.web.site import Site

router = APIRouter()
MANAGE = Need("dead_letters.manage")


class Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _repo(site: Site) -> DeadLetters:
    repo = site.extras.get("ops.dead_letters")
    if repo is None:
        repo = site.extras["ops.dead_letters"] = DeadLetters(site.ctx.db)
    return repo  # type: ignore[no-any-return]


def view(d: DeadLetter) -> dict[str, Any]:
    return {"message_id": d.message_id, "channel": d.channel, "destination": d.destination, "status": d.status,
            "kind": d.kind, "attempts": d.attempts, "last_error": d.last_error,
            "updated_at": d.updated_at.isoformat(), "received_at": d.received_at.isoformat()}  # fmt: skip


def _wake(site: Site, channel: str, destination: str) -> bool:
    """Wake the destination's worker if this process runs the channel; False otherwise."""
    running = site.engine.running.get(channel) if site.engine is not None else None
    woken = False
    for worker in running.workers if running is not None else []:
        if worker.name == destination:
            worker.wake()
            woken = True
    return woken


async def act(request: Request, who: Principal, message_id: str, destination: str, retry: bool,
              reason: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Retry or discard one dead delivery, audited in the same transaction; Refusal(404/409) otherwise."""
    site = site_of(request)
    repo = _repo(site)
    found = await asyncio.to_thread(repo.get, message_id, destination)
    if found is None:
        raise Refusal(404, "no such delivery")
    if found.status != "dead":
        raise Refusal(409, f"the delivery is {found.status}, not dead")
    item = await asyncio.to_thread(repo.retry if retry else repo.discard, message_id, destination)
    action = "dead_letter.retried" if retry else "dead_letter.discarded"
    detail: dict[str, Any] = {"channel": found.channel, "destination": destination, "attempts": found.attempts}
    if reason is not None:
        detail["reason"] = reason
    item.audit.append(site.ctx.audit.event(action, actor=who.actor, peer=peer(request), record_ids=[message_id],
                                           detail=detail))  # fmt: skip
    try:
        await site.ctx.writer.awrite(item)
    except StaleWrite as exc:
        raise Refusal(409, "the delivery changed meanwhile (another operator?): reload and look again") from exc
    woken = _wake(site, found.channel, destination) if retry else False
    return {"message_id": message_id, "destination": destination, "channel": found.channel,
            "status": "queued" if retry else "discarded", "woken": woken}  # fmt: skip


async def reprocess_dead(request: Request, who: Principal, message_id: str) -> str:
    """Reprocess the message of a dead delivery (needs messages.reprocess too); then discard every dead
    delivery of the original, audited with the new message's id. Returns the new id; Refusal otherwise."""
    site = site_of(request)
    if not allowed(who, "messages.reprocess", site.clock()):
        raise Forbidden("reprocessing needs messages.reprocess", "messages.reprocess")
    repo = _repo(site)
    dead = [d for d in await asyncio.to_thread(repo.of_message, message_id) if d.status == "dead"]
    if not dead:
        raise Refusal(404, "no dead delivery of that message")
    [result] = await reprocess(site.ctx, [message_id], who.actor)
    if result.new is None or result.status != "accepted":
        raise Refusal(409, f"reprocessing did not take the message ({result.status}); its dead letters stay")
    for d in dead:
        try:
            await act(request, who, message_id, d.destination, retry=False, reason=f"reprocessed as {result.new}")
        except Refusal:  # settled meanwhile by someone else: nothing left to do for it
            continue
    running = site.engine.running.get(dead[0].channel) if site.engine is not None else None
    for worker in running.workers if running is not None else []:
        worker.wake()  # the new message's deliveries go out now
    return result.new


# -- API --------------------------------------------------------------------------------------


@router.get("/api/dead-letters", tags=["dead letters"])
def list_dead_letters(
    request: Request,
    channel: Annotated[str | None, Query(max_length=128)] = None,
    destination: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
    who: Principal = Depends(MANAGE),
) -> dict[str, Any]:
    """Dead deliveries, newest first: message id, channel, destination, attempts, last error, when."""
    found = _repo(site_of(request)).list(channel=channel, destination=destination, limit=limit)
    return {"dead_letters": [view(d) for d in found]}


@router.post("/api/dead-letters/{message_id}/{destination}/retry", tags=["dead letters"])
async def retry_dead_letter(message_id: str, destination: str, request: Request,
                            who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    """Back in the queue: status queued, attempts 0, due now (the destination's worker is woken)."""
    try:
        return JSONResponse(await act(request, who, message_id, destination, retry=True))
    except Refusal as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)


class DiscardBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=3, max_length=500, description="why it is given up (sealed in the audit entry)")


@router.post("/api/dead-letters/{message_id}/{destination}/discard", tags=["dead letters"])
async def discard_dead_letter(message_id: str, destination: str, body: DiscardBody, request: Request,
                              who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    """Give the delivery up: status discarded; it leaves the queue, the message stays (reprocessable)."""
    try:
        return JSONResponse(await act(request, who, message_id, destination, retry=False, reason=body.reason))
    except Refusal as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)


@router.post("/api/dead-letters/{message_id}/reprocess", tags=["dead letters"])
async def reprocess_dead_letter(message_id: str, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    """Reprocess the message (a new one, through its channel as configured now) and discard its dead
    deliveries as "reprocessed as NEW". Needs messages.reprocess as well."""
    try:
        new = await reprocess_dead(request, who, message_id)
    except Refusal as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return JSONResponse({"original": message_id, "new": new})


# -- pages ------------------------------------------------------------------------------------

_DONE = {"retried": "Queued again", "discarded": "Discarded"}


@router.get("/dead-letters", include_in_schema=False)
def dead_letters_page(request: Request, channel: str = "", destination: str = "", done: str = "",
                      message: str = "", who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    found = _repo(site_of(request)).list(channel=channel or None, destination=destination or None)
    notice = None
    if done in _DONE and len(message) <= 200 and all(c.isalnum() or c in "-_./ " for c in message):
        notice = f"{_DONE[done]}: {message}."
    return render(request, "dead_letters.html", dead=[view(d) for d in found], notice=notice,
                  filters={"channel": channel, "destination": destination})  # fmt: skip


async def _page_act(request: Request, who: Principal, message_id: str, destination: str, retry: bool,
                    reason: str | None = None) -> Response:  # fmt: skip
    try:
        await act(request, who, message_id, destination, retry, reason)
    except Refusal as exc:
        site = site_of(request)
        found = await asyncio.to_thread(_repo(site).list)
        return render(request, "dead_letters.html", status_code=exc.status, dead=[view(d) for d in found],
                      notice=None, error=str(exc), filters={"channel": "", "destination": ""})  # fmt: skip
    done = "retried" if retry else "discarded"
    return RedirectResponse(f"/dead-letters?done={done}&message={message_id}%20to%20{destination}", status_code=303)


@router.post("/dead-letters/{message_id}/{destination}/retry", include_in_schema=False)
async def retry_page(message_id: str, destination: str, request: Request,
                     who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    return await _page_act(request, who, message_id, destination, retry=True)


@router.post("/dead-letters/{message_id}/{destination}/discard", include_in_schema=False)
async def discard_page(message_id: str, destination: str, request: Request,
                       reason: Annotated[str, Form(min_length=3, max_length=500)],
                       who: Principal = Depends(MANAGE)) -> Response:  # fmt: skip
    return await _page_act(request, who, message_id, destination, retry=False, reason=reason)


@router.post("/dead-letters/{message_id}/reprocess", include_in_schema=False)
async def reprocess_page(message_id: str, request: Request, who: Principal = Depends(MANAGE)) -> Response:
    try:
        new = await reprocess_dead(request, who, message_id)
    except Refusal as exc:
        found = await asyncio.to_thread(_repo(site_of(request)).list)
        return render(request, "dead_letters.html", status_code=exc.status, dead=[view(d) for d in found],
                      notice=None, error=str(exc), filters={"channel": "", "destination": ""})  # fmt: skip
    target = f"/messages/{new}?reprocessed_from={message_id}"
    return RedirectResponse(target if allowed(who, "messages.view", site_of(request).clock()) else "/dead-letters",
                            status_code=303)  # fmt: skip
