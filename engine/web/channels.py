"""Channels: what is configured, what runs, what each listener's TLS is, and how the messages and
delivery queues stand — and starting or stopping a channel in the running engine.

The statistics are counts from the store (engine.store.stats), never content. Start and stop act on
the Engine this process runs (`radbridge run` serves the web in the engine's own event loop, so
these endpoints are async and run there); a web server without channels answers 409. A stop lasts
until the engine restarts or reloads its channels (SIGHUP), which start every enabled channel again.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from engine.compliance.transport import Endpoint, endpoints
from engine.config import LoadedChannel
from engine.core.errors import RadbridgeError
from engine.security.access import Principal, allowed
from engine.store.stats import ChannelStats, channel_stats
from engine.store.tables import STATUSES
from engine.web.auth import Need, peer, site_of
from engine.web.breakglass import in_force_now
from engine.web.pages import render
from engine.web.site import Site

log = logging.getLogger("radbridge.web")
router = APIRouter()
VIEW, OPERATE = Need("channels.view"), Need("channels.operate")
DELIVERY_STATES = ("queued", "sent", "dead", "discarded")
# The dashboard's time windows; the last day by default ("all" reads every message row: slow on a big store).
WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "all": None}


class ChannelActionError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def tls_label(endpoint: Endpoint | None) -> str:
    """What the dashboard says about a listener or a connection: mTLS, TLS 1.2+ (or 1.3), plaintext."""
    if endpoint is None:
        return "-"
    if not endpoint.tls:
        return "plaintext"
    if endpoint.mutual:
        return "mTLS"
    return f"TLS {endpoint.min_version}{'+' if endpoint.min_version == '1.2' else ''}"


def _endpoint_view(endpoint: Endpoint) -> dict[str, Any]:
    status, why = endpoint.judge()  # the compliance report's judgement, not a second one
    return {"host": endpoint.host, "port": endpoint.port, "tls": endpoint.tls, "min_version": endpoint.min_version,
            "mutual": endpoint.mutual, "label": tls_label(endpoint), "status": status, "why": why,
            "peers": endpoint.peers or None}  # fmt: skip


def channel_views(site: Site, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every channel of the project, with its state, endpoints and counts."""
    project = site.ctx.project
    now = site.clock()
    found, _skipped = endpoints(project)
    by_where = {e.where: e for e in found}
    stats = channel_stats(site.ctx.db, since)
    running = site.engine.running if site.engine is not None else {}
    out = []
    for loaded in project.channels:
        cfg = loaded.config
        name = cfg.name
        counted = stats.get(name, ChannelStats(name))
        source = by_where.get(f"channel {name} source ({loaded.source_kind})")
        destinations = []
        configured = [(d.name, d.kind) for d in loaded.destinations]
        names = [n for n, _ in configured]
        # deliveries to destinations no longer in the file still count (and may still be dead)
        configured += [(d, None) for d in sorted(counted.queues) if d not in names]
        for dest, kind in configured:
            queue = counted.queues.get(dest)
            client = by_where.get(f"channel {name} destination {dest} ({kind})") if kind else None
            destinations.append({
                "name": dest, "kind": kind, "configured": kind is not None,
                "deliveries": {s: (queue.counts.get(s, 0) if queue else 0) for s in DELIVERY_STATES},
                "oldest_queued": queue.oldest_queued if queue else None,
                "oldest_queued_at": queue.oldest_queued_at.isoformat() if queue and queue.oldest_queued_at else None,
                "oldest_queued_age_s": round(queue.age_s(now), 1) if queue and queue.oldest_queued_at else None,
                "connection": _endpoint_view(client) if client else None,
            })  # fmt: skip
        live = running.get(name)
        out.append({
            "name": name,
            "description": cfg.description,
            "enabled": cfg.enabled,
            "running": live is not None,
            "source": loaded.source_kind,
            "listens": list(live.listens) if live is not None else [],
            "listener": _endpoint_view(source) if source is not None and source.role == "listener" else None,
            "messages": {s: counted.messages.get(s, 0) for s in STATUSES},  # by current state
            "total": sum(counted.messages.values()),  # every message received in the window
            "destinations": destinations,
        })  # fmt: skip
    return out


def _loaded(site: Site, name: str) -> LoadedChannel | None:
    return next((c for c in site.ctx.project.channels if c.config.name == name), None)


def _lock(site: Site) -> asyncio.Lock:
    """One start/stop at a time: two clicks must not start a channel's listener twice."""
    lock = site.extras.get("ops.channel_lock")
    if lock is None:
        lock = site.extras["ops.channel_lock"] = asyncio.Lock()
    return lock  # type: ignore[no-any-return]


async def change(request: Request, who: Principal, name: str, start: bool) -> bool:
    """Start or stop `name`; True when its state changed. ChannelActionError(404/409/500) otherwise."""
    site = site_of(request)
    loaded = _loaded(site, name)
    if loaded is None:
        raise ChannelActionError(404, "no such channel")
    engine = site.engine
    if engine is None:
        raise ChannelActionError(409, "channels are not run by this process: start or stop them where the engine runs")
    action = "channel.started" if start else "channel.stopped"
    async with _lock(site):
        if (name in engine.running) == start:
            return False
        if start and not loaded.config.enabled:
            raise ChannelActionError(409, "the channel is disabled in its file (enabled: false): enable it there")
        try:
            if start:
                await engine.start_channel(loaded, site.ctx.project)
            else:
                await engine.stop_channel(name, hold=True)
        except (OSError, RadbridgeError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            await site.ctx.audit.arecord(action, actor=who.actor, outcome="failure", peer=peer(request),
                                         record_ids=[name], detail={"error": reason})  # fmt: skip
            verb = "started" if start else "stopped"
            raise ChannelActionError(500, f"the channel could not be {verb}: {reason}") from exc
        await site.ctx.audit.arecord(action, actor=who.actor, peer=peer(request), record_ids=[name])
    log.info("channel %s %s from the web (the audit entry says by whom)", name, "started" if start else "stopped")
    return True


# -- API --------------------------------------------------------------------------------------


@router.get("/api/channels", tags=["channels"])
def list_channels(
    request: Request,
    since: Annotated[datetime | None, Query(description="count messages received since (ISO 8601)")] = None,
    who: Principal = Depends(VIEW),
) -> dict[str, Any]:
    """Every channel: enabled, running, source kind, listening addresses and TLS, message counts per
    status, and per destination its deliveries per status and the age of its oldest queued message."""
    site = site_of(request)
    since = _aware(since)
    return {"since": since.isoformat() if since else None, "engine": site.engine is not None,
            "channels": channel_views(site, since)}  # fmt: skip


async def _api_change(request: Request, who: Principal, name: str, start: bool) -> Response:
    try:
        changed = await change(request, who, name, start)
    except ChannelActionError as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    running = name in site_of(request).engine.running  # type: ignore[union-attr]
    return JSONResponse({"name": name, "running": running, "changed": changed})


@router.post("/api/channels/{name}/stop", tags=["channels"])
async def stop_channel(name: str, request: Request, who: Principal = Depends(OPERATE)) -> Response:
    """Stop the channel's source and its delivery workers (an attempt in progress finishes first).
    Messages already stored stay queued and go out when it starts again."""
    return await _api_change(request, who, name, start=False)


@router.post("/api/channels/{name}/start", tags=["channels"])
async def start_channel(name: str, request: Request, who: Principal = Depends(OPERATE)) -> Response:
    """Start a stopped channel (an enabled one) with the configuration loaded now."""
    return await _api_change(request, who, name, start=True)


# -- pages ------------------------------------------------------------------------------------


def _page(request: Request, window: str, message: str | None = None, status_code: int = 200) -> Response:
    site = site_of(request)
    seconds = WINDOWS.get(window)
    window = window if window in WINDOWS else "24h"
    since = datetime.fromtimestamp(site.clock().timestamp() - seconds, UTC) if seconds else None
    who = request.state.principal
    # The dashboard's break-glass panel: who is elevated right now, for those who review it.
    in_force = in_force_now(request) if allowed(who, "break_glass.review", site.clock()) else None
    return render(request, "channels.html", status_code=status_code, channels=channel_views(site, since),
                  window=window, windows=list(WINDOWS), engine_here=site.engine is not None, message=message,
                  statuses=("received", "sent", "queued", "error", "dead"), in_force=in_force)  # fmt: skip


@router.get("/channels", include_in_schema=False)
def channels_page(request: Request, window: str = "24h", who: Principal = Depends(VIEW)) -> Response:
    return _page(request, window)


async def _page_change(request: Request, who: Principal, name: str, start: bool) -> Response:
    try:
        await change(request, who, name, start)
    except ChannelActionError as exc:
        if exc.status == 404:
            return render(request, "_ops_notfound.html", status_code=404, message="No such channel.")
        return await asyncio.to_thread(_page, request, "all", str(exc), exc.status)
    return RedirectResponse("/channels", status_code=303)


@router.post("/channels/{name}/stop", include_in_schema=False)
async def stop_channel_page(name: str, request: Request, who: Principal = Depends(OPERATE)) -> Response:
    return await _page_change(request, who, name, start=False)


@router.post("/channels/{name}/start", include_in_schema=False)
async def start_channel_page(name: str, request: Request, who: Principal = Depends(OPERATE)) -> Response:
    return await _page_change(request, who, name, start=True)
