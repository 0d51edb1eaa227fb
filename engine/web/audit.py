"""The audit trail in the browser and the API: filter, page, verify the chain.

Auditors must never see patient data, and an entry's sealed detail may hold some (a break-glass
reason, an error text naming a patient, a free-text note). So the detail is shown field by field:
only fields known to hold codes, ids, counts, times or configuration names are shown; every other
field keeps its name and shows a mask. Who, what, which record ids, when and outcome are shown as
they are, and the purpose of use (a code; free text is sealed in the detail and masked).
Every query is itself audited (`audit.viewed`, with the filters); every verification too
(`audit.verified`), the same check `radbridge audit verify` runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from engine.audit import query
from engine.audit.codes import PURPOSE_CODES
from engine.audit.log import OUTCOMES
from engine.audit.verify import Verification, verify
from engine.core.clock import iso
from engine.core.errors import IntegrityError
from engine.security.access import MASK, Principal
from engine.web.auth import Need, peer, site_of
from engine.web.pages import render

router = APIRouter()
VIEW, VERIFY = Need("audit.view"), Need("audit.verify")
_LAST_VERIFY = "governance.audit.verify"  # site.extras key: this process's last verification

# Detail fields that hold no PHI wherever they appear: codes, ids, counts, times, configuration names.
SAFE_FIELDS = frozenset({
    "attempt", "blocked", "channel", "checkpoints", "config", "destination", "disclosures", "entries", "event",
    "expires_at", "failed_logins", "failures", "files", "filters", "format", "from", "grant", "items", "kek",
    "limit", "messages", "method", "minutes", "model", "nodes", "part", "password", "permission", "recipient",
    "replaced", "rewrapped", "role", "route", "scopes", "since", "skipped", "source", "state", "to", "totp",
    "trigger", "until", "user", "version", "via", "was_locked_until", "pass", "attention", "fail", "not_passing",
    "after", "ok", "outputs", "cached", "verdict", "code", "job", "status", "type", "reprocess_of", "flags",
    "issuer", "amr", "provider_error",
})  # fmt: skip
# Fields safe only in some actions (elsewhere the same name may carry free text).
SAFE_BY_ACTION = {"audit.verified": frozenset({"problem"})}
# A refusal's reason is a code ("bad_password", "revoked"); a successful action's reason is free text.
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def shown_purpose(action: str, purpose: str | None) -> str | None:
    """The audit log writes only codes to the purpose column (free text goes to the sealed detail as
    purpose_text, masked below); anything else is from before that rule and is masked."""
    if purpose is None:
        return None
    return purpose if purpose in PURPOSE_CODES else MASK


def shown_detail(action: str, outcome: str, detail: dict[str, Any] | None) -> dict[str, Any]:
    """The detail as an auditor may see it: safe fields as they are, every other one masked."""
    shown: dict[str, Any] = {}
    for key, value in (detail or {}).items():
        safe = key in SAFE_FIELDS or key in SAFE_BY_ACTION.get(action, ())
        code = key == "reason" and outcome != "success" and isinstance(value, str) and bool(_CODE.match(value))
        shown[key] = value if safe or code else MASK
    return shown


class BadFilter(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def _bound(value: str | None, name: str) -> str | None:
    """An ISO 8601 date or time (naive means UTC) in the engine's text form of ts."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadFilter(name, "an ISO 8601 date or time, e.g. 2026-01-15 or 2026-01-15T08:30") from None
    return iso(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


@dataclass
class Asked:
    filters: query.Filters
    limit: int
    after: str | None


def _asked(action: str, actor: str, outcome: str, since: str, until: str, record: str, limit: int,
           after: str) -> Asked:  # fmt: skip
    if outcome and outcome not in OUTCOMES:
        raise BadFilter("outcome", f"one of {', '.join(OUTCOMES)}")
    if after and query.parse_cursor(after) is None:
        raise BadFilter("after", "a cursor node:seq from a previous page")
    filters = query.Filters(action=action.strip() or None, actor=actor.strip() or None, outcome=outcome or None,
                            since=_bound(since, "since"), until=_bound(until, "until"),
                            record=record.strip() or None)  # fmt: skip
    return Asked(filters, max(1, min(limit, query.MAX_LIMIT)), after or None)


def _entry(request: Request, e: query.Entry) -> dict[str, Any]:
    ctx = site_of(request).ctx
    try:
        detail: dict[str, Any] | None = shown_detail(e.action, e.outcome, ctx.audit.open_detail(e.id, e.detail))
    except IntegrityError:
        detail = {"unreadable": "the sealed detail failed authentication"}
    return {"node": e.node, "seq": e.seq, "id": e.id, "ts": e.ts, "actor": e.actor, "peer": e.peer,
            "action": e.action, "outcome": e.outcome, "purpose": shown_purpose(e.action, e.purpose),
            "record_ids": e.record_ids, "indexes": e.indexes, "detail": detail, "cursor": e.cursor}  # fmt: skip


def _search(request: Request, who: Principal, asked: Asked) -> tuple[list[dict[str, Any]], str | None]:
    """One page of entries, the cursor of the next, and the query audited."""
    site = site_of(request)
    found = query.search(site.ctx.db, asked.filters, asked.limit + 1, query.parse_cursor(asked.after))
    more = len(found) > asked.limit
    found = found[: asked.limit]
    site.ctx.audit.record(
        "audit.viewed", actor=who.actor, peer=peer(request),
        record_ids=[asked.filters.record] if asked.filters.record else [],
        detail={"filters": asked.filters.as_dict(), "limit": asked.limit, "after": asked.after,
                "entries": len(found)},
    )  # fmt: skip
    return [_entry(request, e) for e in found], found[-1].cursor if more and found else None


def _verify(request: Request, who: Principal) -> dict[str, Any]:
    site = site_of(request)
    ctx = site.ctx
    result: Verification = verify(ctx.db, ctx.keyring.verify_key, ctx.keyring.signing_key_id)
    summary = {"ok": result.ok, "entries": result.entries, "nodes": result.nodes, "checkpoints": result.checkpoints,
               "last_checkpoint": result.last_checkpoint, "problem": result.problem}  # fmt: skip
    ctx.audit.record(
        "audit.verified",
        actor=who.actor,
        outcome="success" if result.ok else "failure",
        peer=peer(request),
        detail={k: v for k, v in summary.items() if k != "last_checkpoint"},
    )
    summary["verified_at"], summary["verified_by"] = iso(site.clock()), who.actor
    site.extras[_LAST_VERIFY] = summary
    return summary


def last_verification(request: Request) -> dict[str, Any] | None:
    """This process's last verification, else what the newest `audit.verified` entry recorded."""
    site = site_of(request)
    if _LAST_VERIFY in site.extras:
        return dict(site.extras[_LAST_VERIFY])
    entry = query.last(site.ctx.db, "audit.verified")
    if entry is None:
        return None
    try:
        detail = site.ctx.audit.open_detail(entry.id, entry.detail) or {}
    except IntegrityError:
        detail = {}
    return {"ok": entry.outcome == "success", "entries": detail.get("entries"), "nodes": detail.get("nodes"),
            "checkpoints": detail.get("checkpoints"), "last_checkpoint": None, "problem": detail.get("problem"),
            "verified_at": entry.ts, "verified_by": entry.actor}  # fmt: skip


def _problem(exc: BadFilter) -> JSONResponse:
    problems = [{"field": exc.field, "problem": exc.problem}]
    return JSONResponse({"error": "invalid request", "problems": problems}, status_code=422)


@dataclass(frozen=True)
class FilterForm:
    """The audit filters as typed (query parameters of the API and the page alike)."""

    action: str = ""
    actor: str = ""
    outcome: str = ""
    since: str = ""
    until: str = ""
    record: str = ""
    limit: int = 50
    after: str = ""

    def fields(self) -> dict[str, str]:
        return {"action": self.action, "actor": self.actor, "outcome": self.outcome, "since": self.since,
                "until": self.until, "record": self.record}  # fmt: skip


def filter_form(
    action: str = "",
    actor: str = "",
    outcome: str = "",
    since: str = "",
    until: str = "",
    record: str = "",
    limit: Annotated[int, Query(ge=1, le=query.MAX_LIMIT)] = 50,
    after: str = "",
) -> FilterForm:
    return FilterForm(action, actor, outcome, since, until, record, limit, after)


@router.get("/api/audit", tags=["audit"])
def audit_entries(request: Request, f: FilterForm = Depends(filter_form), who: Principal = Depends(VIEW)) -> Response:
    """Audit entries, newest first: who, what, which record ids, when, outcome, purpose, and the detail
    fields that hold no PHI (others masked). `action` ending in "." is a prefix; `record` is one record id;
    `since`/`until` are ISO times (UTC unless given); page on with `after` = the `next` of the last page.
    The query is itself audited (`audit.viewed`)."""
    try:
        asked = _asked(f.action, f.actor, f.outcome, f.since, f.until, f.record, f.limit, f.after)
    except BadFilter as exc:
        return _problem(exc)
    entries, next_cursor = _search(request, who, asked)
    return JSONResponse({"entries": entries, "next": next_cursor, "filters": asked.filters.as_dict()})


@router.get("/api/audit/verify", tags=["audit"])
def audit_verify(request: Request, who: Principal = Depends(VERIFY)) -> dict[str, Any]:
    """Verify every node's hash chain and signed checkpoints (as `radbridge audit verify`): ok, entries
    checked, checkpoints, the last checkpoint's time, or the first problem found. Audited (`audit.verified`)."""
    return _verify(request, who)


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, f: FilterForm = Depends(filter_form), who: Principal = Depends(VIEW)) -> Response:
    site = site_of(request)
    form, limit = f.fields(), f.limit
    values: dict[str, Any] = {"form": form, "limit": limit, "entries": [], "next_url": None, "message": None,
                              "outcomes": OUTCOMES, "actions": query.actions(site.ctx.db),
                              "actors": [f"user:{u.username}" for u in site.users.all()],
                              "verification": last_verification(request)}  # fmt: skip
    try:
        asked = _asked(f.action, f.actor, f.outcome, f.since, f.until, f.record, f.limit, f.after)
    except BadFilter as exc:
        values["message"] = str(exc)
        return render(request, "audit.html", status_code=422, **values)
    values["entries"], next_cursor = _search(request, who, asked)
    if next_cursor:
        kept = {k: v for k, v in form.items() if v}
        values["next_url"] = "/audit?" + urlencode({**kept, "limit": limit, "after": next_cursor})
    return render(request, "audit.html", **values)


@router.post("/audit/verify", include_in_schema=False)
def audit_verify_page(request: Request, who: Principal = Depends(VERIFY)) -> Response:
    _verify(request, who)
    return RedirectResponse("/audit#verification", status_code=303)
