"""Model versions and their post-market monitoring.

Per version, from the registry: governance state (shadow, active, retired, recalled), evidence link,
jobs running, last change and by whom. Per version and ISO week: studies processed (completed jobs),
positive rate (results with at least one finding), critical rate, the radiologists' feedback and
the agreement rate agree / (agree + disagree) — what a drifting model shows first.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from engine.inference.registry import Registry, VersionRow
from engine.outputs.feedback import ResultFacts, Week, monitoring
from engine.security.access import Principal
from engine.web.auth import Need, site_of
from engine.web.pages import render
from engine.web.site import Site

router = APIRouter()
VIEW = Need("models.view")
Weeks = Annotated[int, Query(ge=1, le=104, description="How many weeks back (ISO weeks, newest first).")]


def _version_json(v: VersionRow) -> dict[str, Any]:
    return {"name": v.name, "version": v.version, "state": v.state, "evidence": v.evidence,
            "thresholds": v.thresholds, "running": v.running,
            "changed_at": v.changed_at.isoformat() if v.changed_at else None, "changed_by": v.changed_by}  # fmt: skip


def _facts(site: Site) -> ResultFacts:
    found = site.extras.get("models.facts")
    if found is None:
        found = site.extras["models.facts"] = ResultFacts(site.ctx.messages)
    return found  # type: ignore[no-any-return]


def _monitoring(site: Site, weeks: int) -> list[dict[str, Any]]:
    """Every registered version (and any version with jobs but no registry row), with its weeks."""
    since = site.clock() - timedelta(weeks=weeks)
    figures = monitoring(site.ctx.db, _facts(site), since)
    versions = {(v.name, v.version): v for v in Registry(site.ctx.db, site.ctx.writer, site.ctx.audit).all()}
    out = []
    for key in sorted(set(versions) | set(figures)):
        by_week = figures.get(key, {})
        total = Week("total")
        for week in by_week.values():
            total.add(week)
        known = versions.get(key)
        out.append({
            "name": key[0], "version": key[1], "state": known.state if known else "unregistered",
            "total": total.as_dict(),
            "weeks": [by_week[w].as_dict() for w in sorted(by_week, reverse=True)],
        })  # fmt: skip
    return out


@router.get("/api/models", tags=["models"])
def models_json(request: Request, who: Principal = Depends(VIEW)) -> dict[str, Any]:
    """Every model version in the registry: governance state, evidence, thresholds, jobs running, last change."""
    site = site_of(request)
    return {"models": [_version_json(v) for v in Registry(site.ctx.db, site.ctx.writer, site.ctx.audit).all()]}


@router.get("/api/models/monitoring", tags=["models"])
def monitoring_json(request: Request, weeks: Weeks = 12, who: Principal = Depends(VIEW)) -> dict[str, Any]:
    """Per model version and ISO week: studies processed, positive and critical rates, feedback counts
    and the agreement rate agree / (agree + disagree); null where there is nothing to divide by."""
    return {"weeks": weeks, "versions": _monitoring(site_of(request), weeks)}


@router.get("/models", include_in_schema=False)
def models_page(request: Request, weeks: Weeks = 12, who: Principal = Depends(VIEW)) -> Response:
    site = site_of(request)
    registry = {(v.name, v.version): v for v in Registry(site.ctx.db, site.ctx.writer, site.ctx.audit).all()}
    return render(request, "models.html", versions=_monitoring(site, weeks), registry=registry, weeks=weeks)
