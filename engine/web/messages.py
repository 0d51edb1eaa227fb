"""Messages: browse stored messages (metadata), search by identifier, look at one masked, reveal it
(audited), reprocess.

Minimum necessary: lists carry metadata only (ids, kinds, states, sizes, errors written without PHI).
One message's HL7 v2 content is shown masked — every field the HL7 de-identification treats as a Safe
Harbor identifier (engine.deid.hl7.RULES, the one list) and every field of a segment it has no table
for reads MASK — and even that masked reading is audited (`message.viewed`, masked). The content in
clear takes messages.reveal_phi, a stated purpose, and goes through the break-glass-aware reveal
(`phi.reveal`). Identifiers to search for travel only in POST bodies, searched through their blind
index, never by reading content.
"""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.deid.hl7 import RULES
from engine.hl7v2 import Hl7ParseError, Message
from engine.runtime.reprocess import Reprocessed, reprocess
from engine.security.access import MASK, AccessDenied, Principal, allowed
from engine.store.messages import MessageView
from engine.store.stats import part_sizes
from engine.store.tables import STATUSES
from engine.web.auth import Forbidden, Need, peer, site_of
from engine.web.pages import render
from engine.web.site import Site

router = APIRouter()
VIEW, REVEAL, REPROCESS = Need("messages.view"), Need("messages.reveal_phi"), Need("messages.reprocess")
Reason = Literal["operations", "treatment", "emergency", "payment"]  # purposes of use (engine.audit.codes)
REASONS: tuple[str, ...] = get_args(Reason)
SEARCH_KINDS = ("accession", "mrn", "study_uid")
MAX_LIMIT = 500
_HEADERS = frozenset({"MSH", "BHS", "FHS"})  # field 1 is the separator, field 2 the encoding characters
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
Status = Literal[STATUSES]  # type: ignore[valid-type]


# -- masking ----------------------------------------------------------------------------------


def _lines(raw: bytes) -> tuple[list[str], str]:
    """Segments and field separator, from a parse when the message parses, else tolerantly."""
    try:
        parsed = Message.parse(raw)
        return parsed.text.split("\r"), parsed.encoding.field
    except Hl7ParseError:
        text = raw.decode("utf-8", "replace")
        lines = [line for line in re.split(r"\r\n|\r|\n", text) if line]
        return lines, text[3] if text.startswith("MSH") and len(text) > 3 else "|"


def masked_hl7(raw: bytes) -> list[dict[str, Any]]:
    """Each segment with its fields (index 0 is field 1), Safe Harbor fields replaced by MASK.
    An empty field stays empty (that it is empty tells nothing); a line that is not a segment is
    masked whole, name included."""
    lines, fs = _lines(raw)
    out = []
    for line in lines:
        name = line[:3]
        if not _SEGMENT_ID.fullmatch(name) or (len(line) > 3 and line[3] != fs):
            out.append({"name": MASK, "fields": [], "masked": [], "text": MASK})
            continue
        fields = line.split(fs)[1:]
        if name in _HEADERS:
            fields.insert(0, fs)
        rules = RULES.get(name)  # None: a segment de-identification drops whole (NK1, IN1, Z...)
        masked = []
        for n, value in enumerate(fields, start=1):
            if name in _HEADERS and n <= 2:
                continue
            if value and (rules is None or n in rules):
                fields[n - 1] = MASK
                masked.append(n)
        text = name + (fs + fs.join(fields[1:]) if name in _HEADERS else "".join(fs + f for f in fields))
        out.append({"name": name, "fields": fields, "masked": masked, "text": text})
    return out


def _text(data: bytes) -> str | None:
    """Readable text of a part (HL7, JSON), or None for binary (DICOM)."""
    if b"\x00" in data[:4096]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return Message.parse(data).text  # HL7 in its declared charset
        except Hl7ParseError:
            return None


def is_hl7(view: MessageView) -> bool:
    return view.kind.startswith("hl7v2")


# -- views ------------------------------------------------------------------------------------


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _iso(value: datetime | None) -> str | None:
    return _aware(value).isoformat() if value is not None else None  # type: ignore[union-attr]


def meta(view: MessageView) -> dict[str, Any]:
    """A message's metadata: what lists show. Never content."""
    return {
        "id": view.id, "channel": view.channel, "direction": view.direction, "kind": view.kind,
        "status": view.status, "received_at": _iso(view.received_at), "updated_at": _iso(view.updated_at),
        "size": view.size, "error": view.error,
        "deliveries": [{"destination": d, "status": s, "attempts": n} for d, s, n in view.deliveries],
    }  # fmt: skip


def detail(site: Site, who: Principal, view: MessageView, request: Request, content: bool = True) -> dict[str, Any]:
    """Metadata, part sizes and, for HL7 v2, the masked content (the read is audited)."""
    sizes = part_sizes(site.ctx.db, view.id)
    found = {**meta(view), "config_hash": view.config_hash,
             "parts": [{"name": p, "size": sizes.get(p)} for p in view.parts], "content": None}  # fmt: skip
    if content and is_hl7(view) and "raw" in view.parts:
        try:
            raw = site.ctx.messages.read(view.id, "raw")
        except LookupError:  # its data key was purged (retention): nothing left to show
            return found
        site.ctx.audit.record("message.viewed", actor=who.actor, peer=peer(request), record_ids=[view.id],
                              detail={"masked": True, "part": "raw"})  # fmt: skip
        found["content"] = {"part": "raw", "masked": True, "segments": masked_hl7(raw)}
    return found


def reveal_part(site: Site, who: Principal, view: MessageView, part: str, reason: str, request: Request) -> dict:
    """The part in clear: permitted (role or break-glass) and audited as a reveal, then as a view."""
    if not allowed(who, "messages.view", site.clock()):  # break-glass adds reveals, never the view itself
        raise Forbidden("your role may not see stored messages: messages.view is not permitted", "messages.view")
    if part not in view.parts:
        raise LookupError(part)
    try:
        site.grants.reveal(who, "messages.reveal_phi", [view.id], purpose=reason, peer=peer(request))
    except AccessDenied as exc:
        raise Forbidden("messages.reveal_phi is not permitted", "messages.reveal_phi") from exc
    data = site.ctx.messages.read(view.id, part)
    site.ctx.audit.record("message.viewed", actor=who.actor, peer=peer(request), purpose=reason,
                          record_ids=[view.id], detail={"masked": False, "part": part})  # fmt: skip
    text = _text(data)
    if text is None:
        return {"id": view.id, "part": part, "encoding": "base64", "size": len(data),
                "content": base64.b64encode(data).decode()}  # fmt: skip
    return {"id": view.id, "part": part, "encoding": "text", "size": len(data), "content": text.replace("\r", "\n")}


def search(site: Site, who: Principal, kind: str, value: str, channel: str | None, status: str | None,
           limit: int, request: Request) -> list[MessageView]:  # fmt: skip
    """By blind index only; audited with the index (never the identifier)."""
    idx = site.ctx.index(kind, value)
    found = site.ctx.messages.list(channel=channel or None, status=status or None, index=(kind, idx), limit=limit)
    site.ctx.audit.record(
        "message.searched", actor=who.actor, peer=peer(request), record_ids=[m.id for m in found],
        indexes={kind: idx}, detail={"results": len(found), "channel": channel, "status": status},
    )  # fmt: skip
    return found


async def run_reprocess(site: Site, who: Principal, views: list[MessageView]) -> list[Reprocessed]:
    """Through the runtime's reprocess (audited there); then wake the running channels' workers, so
    the new messages go out now rather than at the workers' next poll."""
    results = await reprocess(site.ctx, [v.id for v in views], who.actor)
    if site.engine is not None:
        for channel in {v.channel for v in views}:
            running = site.engine.running.get(channel)
            for worker in running.workers if running is not None else []:
                worker.wake()
    return results


def _results(results: list[Reprocessed]) -> list[dict[str, Any]]:
    return [{"original": r.original, "new": r.new, "status": r.status} for r in results]


def _not_found() -> JSONResponse:
    return JSONResponse({"error": "no such message"}, status_code=404)


# -- API --------------------------------------------------------------------------------------


@router.get("/api/messages", tags=["messages"])
def list_messages(
    request: Request,
    channel: Annotated[str | None, Query(max_length=128)] = None,
    status: Status | None = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="received before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    who: Principal = Depends(VIEW),
) -> dict[str, Any]:
    """Newest first; metadata only (ids, channel, kind, status, times, size, per-destination states, error)."""
    found = site_of(request).ctx.messages.list(channel=channel, status=status, since=_aware(since),
                                               until=_aware(until), limit=limit)  # fmt: skip
    return {"messages": [meta(m) for m in found]}


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accession: str | None = Field(None, min_length=1, max_length=64)
    mrn: str | None = Field(None, min_length=1, max_length=64)
    study_uid: str | None = Field(None, min_length=1, max_length=64)
    channel: str | None = Field(None, max_length=128)
    status: Status | None = None
    limit: int = Field(50, ge=1, le=MAX_LIMIT)

    @model_validator(mode="after")
    def _one(self) -> SearchBody:
        if sum(getattr(self, k) is not None for k in SEARCH_KINDS) != 1:
            raise ValueError("give exactly one of accession, mrn, study_uid")
        return self


@router.post("/api/messages/search", tags=["messages"])
def search_messages(body: SearchBody, request: Request, who: Principal = Depends(VIEW)) -> dict[str, Any]:
    """Messages carrying an identifier, found through its blind index (the identifier is never stored
    or logged; the audit entry `message.searched` holds its blind index)."""
    kind = next(k for k in SEARCH_KINDS if getattr(body, k) is not None)
    found = search(site_of(request), who, kind, getattr(body, kind), body.channel, body.status, body.limit, request)
    return {"messages": [meta(m) for m in found]}


@router.get("/api/messages/{message_id}", tags=["messages"])
def get_message(message_id: str, request: Request, who: Principal = Depends(VIEW)) -> Response:
    """Metadata, parts and sizes, and for HL7 v2 the content with its identifying fields masked."""
    site = site_of(request)
    view = site.ctx.messages.get(message_id)
    if view is None:
        return _not_found()
    return JSONResponse(detail(site, who, view, request))


class RevealBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    part: str = Field("raw", max_length=160)
    reason: Reason


@router.post("/api/messages/{message_id}/reveal", tags=["messages"])
def reveal_message(message_id: str, body: RevealBody, request: Request, who: Principal = Depends(REVEAL)) -> Response:
    """One part of the message in clear (text, or base64 for binary parts). Audited as `phi.reveal`
    and `message.viewed` with the stated purpose."""
    site = site_of(request)
    view = site.ctx.messages.get(message_id)
    if view is None:
        return _not_found()
    try:
        return JSONResponse(reveal_part(site, who, view, body.part, body.reason, request))
    except LookupError:
        return JSONResponse({"error": "the message has no such part"}, status_code=404)


@router.post("/api/messages/{message_id}/reprocess", tags=["messages"])
async def reprocess_message(message_id: str, request: Request, who: Principal = Depends(REPROCESS)) -> Response:
    """Run the stored message through its channel again, as a new message linked to this one."""
    site = site_of(request)
    view = await asyncio.to_thread(site.ctx.messages.get, message_id)
    if view is None:
        return _not_found()
    return JSONResponse({"results": _results(await run_reprocess(site, who, [view]))})


class ReprocessBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] | None = Field(None, min_length=1, max_length=MAX_LIMIT)
    channel: str | None = Field(None, max_length=128)
    status: Status | None = None
    limit: int = Field(100, ge=1, le=MAX_LIMIT)

    @model_validator(mode="after")
    def _chosen(self) -> ReprocessBody:
        if self.ids is None and self.channel is None and self.status is None:
            raise ValueError("give ids, or a channel and/or status to choose messages by")
        return self


@router.post("/api/messages/reprocess", tags=["messages"])
async def reprocess_messages(body: ReprocessBody, request: Request, who: Principal = Depends(REPROCESS)) -> Response:
    """Reprocess several messages: by id, or the newest `limit` of a channel and/or status."""
    site = site_of(request)
    if body.ids is not None:
        ids = list(dict.fromkeys(body.ids))
        views = await asyncio.to_thread(site.ctx.messages.list, ids=ids, limit=len(ids))
        missing = sorted(set(ids) - {v.id for v in views})
        if missing:
            return JSONResponse({"error": "no such message", "missing": missing}, status_code=404)
        views.sort(key=lambda v: v.id)  # oldest first: arrival order, as a queue would
    else:
        views = await asyncio.to_thread(site.ctx.messages.list, channel=body.channel, status=body.status,
                                        limit=body.limit)  # fmt: skip
        views.reverse()
    return JSONResponse({"results": _results(await run_reprocess(site, who, views) if views else [])})


# -- pages ------------------------------------------------------------------------------------


def _when(value: str) -> datetime | None:
    """A time from the filter form (datetime-local, taken as UTC); ValueError when unreadable."""
    return _aware(datetime.fromisoformat(value.strip())) if value.strip() else None


def _list_page(request: Request, found: list[MessageView] | None, filters: dict[str, str], searched: bool = False,
               message: str | None = None, status_code: int = 200) -> Response:  # fmt: skip
    site = site_of(request)
    return render(request, "messages.html", status_code=status_code, messages=[meta(m) for m in found or []],
                  filters=filters, searched=searched, message=message, statuses=STATUSES,
                  channels=[c.config.name for c in site.ctx.project.channels], kinds=SEARCH_KINDS)  # fmt: skip


@router.get("/messages", include_in_schema=False)
def messages_page(request: Request, channel: str = "", status: str = "", since: str = "", until: str = "",
                  who: Principal = Depends(VIEW)) -> Response:  # fmt: skip
    filters = {"channel": channel, "status": status, "since": since, "until": until}
    try:
        start, end = _when(since), _when(until)
    except ValueError:
        return _list_page(request, [], filters, message="Times are like 2026-11-21T10:15 (UTC).", status_code=422)
    found = site_of(request).ctx.messages.list(channel=channel or None, status=status if status in STATUSES else None,
                                               since=start, until=end, limit=100)  # fmt: skip
    return _list_page(request, found, filters)


@router.post("/messages/search", include_in_schema=False)
def search_page(
    request: Request,
    kind: Annotated[Literal["accession", "mrn", "study_uid"], Form()],
    value: Annotated[str, Form(min_length=1, max_length=64)],
    channel: Annotated[str, Form(max_length=128)] = "",
    who: Principal = Depends(VIEW),
) -> Response:
    """Renders the results here (no redirect): the identifier must not end up in a URL."""
    found = search(site_of(request), who, kind, value, channel or None, None, 100, request)
    return _list_page(request, found, {"channel": channel, "status": "", "since": "", "until": ""}, searched=True)


def _message_page(request: Request, who: Principal, message_id: str, revealed: dict | None = None,
                  notice: str | None = None, status_code: int = 200) -> Response:  # fmt: skip
    site = site_of(request)
    view = site.ctx.messages.get(message_id)
    if view is None:
        return render(request, "_ops_notfound.html", status_code=404, message="No such message.", back="/messages")
    m = detail(site, who, view, request, content=revealed is None)  # revealed: no second, masked read
    return render(request, "message.html", status_code=status_code, m=m,
                  revealed=revealed, notice=notice, reasons=REASONS)  # fmt: skip


@router.get("/messages/{message_id}", include_in_schema=False)
def message_page(message_id: str, request: Request, reprocessed_from: str = "",
                 who: Principal = Depends(VIEW)) -> Response:  # fmt: skip
    notice = None
    if re.fullmatch(r"[0-9a-f-]{36}", reprocessed_from):
        notice = f"Reprocessed message {reprocessed_from}: this is the new message {message_id}."
    return _message_page(request, who, message_id, notice=notice)


@router.post("/messages/{message_id}/reveal", include_in_schema=False)
def reveal_page(
    message_id: str,
    request: Request,
    reason: Annotated[Reason, Form()],
    part: Annotated[str, Form(max_length=160)] = "raw",
    who: Principal = Depends(REVEAL),
) -> Response:
    """The content in clear, rendered in the response to this POST (never behind a URL)."""
    site = site_of(request)
    view = site.ctx.messages.get(message_id)
    if view is None:
        return render(request, "_ops_notfound.html", status_code=404, message="No such message.", back="/messages")
    try:
        revealed = reveal_part(site, who, view, part, reason, request)
    except LookupError:
        return _message_page(request, who, message_id, notice="The message has no such part.", status_code=404)
    return _message_page(request, who, message_id, revealed=revealed)


@router.post("/messages/{message_id}/reprocess", include_in_schema=False)
async def reprocess_page(message_id: str, request: Request, who: Principal = Depends(REPROCESS)) -> Response:
    """One click (the page confirms first): reprocess, then show the new message."""
    site = site_of(request)
    view = await asyncio.to_thread(site.ctx.messages.get, message_id)
    if view is None:
        return render(request, "_ops_notfound.html", status_code=404, message="No such message.", back="/messages")
    result = (await run_reprocess(site, who, [view]))[0]
    if result.new is None:
        return await asyncio.to_thread(_message_page, request, who, message_id,
                                       notice=f"Not reprocessed: {result.status}.", status_code=409)  # fmt: skip
    return RedirectResponse(f"/messages/{result.new}?reprocessed_from={message_id}", status_code=303)
