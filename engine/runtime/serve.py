"""`radbridge run`: start the listeners and periodic sweeps, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import text

from engine import __version__
from engine.audit.forward import AuditForwarder, forwarder_from_settings
from engine.config import load_project
from engine.connectors.http.asgi import Config, Server
from engine.core.errors import ConfigError, RadbridgeError
from engine.runtime.context import Context, record_config
from engine.runtime.engine import Engine
from engine.security.tls import server_context_for
from engine.store.leases import Leases, holder_id
from engine.store.retention import PurgeReport, purge, sweep_orphan_blobs

log = logging.getLogger("radbridge")
ACTOR = "service:engine"
GRACE_S = 3.0  # how long a stop lets HTTP requests in progress finish


def model_callback(job_id: str, body: bytes, token: str) -> int:
    """A model's late result (upload models with `result: callback`) for the job awaiting it here."""
    from engine.inference.http.callbacks import UnknownCallback, callbacks

    try:
        callbacks.deliver(job_id, body, token)
    except UnknownCallback:
        return 404
    except RadbridgeError:
        return 422
    return 200


# Builds the HTTP application the listeners serve: (context, engine) -> ASGI app. The CLI passes the
# web layer's (the runtime does not import web: web is built on the runtime, not the other way).
WebFactory = Callable[[Context, Engine], Any]


def ready(ctx: Context) -> tuple[bool, dict[str, str]]:
    """Whether the engine can accept work, with a reason per failed check (GET /ready)."""
    checks = {}
    try:
        with ctx.db.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["store"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported as not ready
        checks["store"] = type(exc).__name__
    checks["writer"] = "ok" if ctx.writer.alive else "stopped"
    return all(v == "ok" for v in checks.values()), checks


async def _retention(ctx: Context) -> None:
    leases = Leases(ctx.db, holder_id(ctx.node), timedelta(hours=1))
    if not await asyncio.to_thread(leases.claim, "retention"):
        return
    try:
        report = await asyncio.to_thread(run_retention, ctx, "service:retention")
        log.info("retention: %d message(s) purged%s", report.messages, "" if report.scrubbed else "; scrub incomplete")
    finally:
        await asyncio.to_thread(leases.release, "retention")


def run_retention(ctx: Context, actor: str) -> PurgeReport:
    """Purge what the configuration's retention periods allow; then remove orphaned blob files."""
    project = ctx.project
    report = purge(
        ctx,
        channels={c.config.name: c.config.retention_days for c in project.channels},
        default_days=project.engine.retention.messages_days,
        batch_size=project.engine.retention.batch_size,
        actor=actor,
    )
    sweep_orphan_blobs(ctx.db, ctx.messages.blobs)
    return report


def _forwarder(ctx: Context) -> AuditForwarder | None:
    cfg, root = ctx.project.engine.audit.forward, ctx.project.root
    if cfg is None:
        return None
    return forwarder_from_settings(
        ctx.db, host=cfg.host, port=cfg.port, ca=str(root / cfg.ca),
        cert=cfg.cert and str(root / cfg.cert), key=cfg.key and str(root / cfg.key),
        state_path=root / cfg.state_file, node=ctx.node, facility=cfg.facility,
    )  # fmt: skip


async def reload(ctx: Context, engine: Engine) -> str:
    """SIGHUP: load and lint the project again; restart only the channels whose files changed.
    A project with problems is refused whole and the running channels stay as they are."""
    try:
        project = await asyncio.to_thread(load_project, ctx.project.root)
    except ConfigError as exc:
        ctx.audit.record("config.reload_refused", actor=ACTOR, outcome="failure", detail={"problems": str(exc)})
        return "reload refused: " + "; ".join(str(exc).splitlines()[:5])
    previous = ctx.project
    changed = await engine.reload(project)
    if project.hash != previous.hash:
        record_config(ctx, ACTOR)
    return f"reloaded: {', '.join(changed) or 'no channel changed'}"


async def serve(ctx: Context, web: WebFactory, announce: Callable[[str], None] = print) -> None:
    """Run until a stop signal; audits start, the configuration loaded, and stop."""
    engine_cfg = ctx.project.engine
    ctx.audit.record("engine.started", actor=ACTOR, detail={"version": __version__, "config": ctx.project.hash})
    record_config(ctx, ACTOR)

    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.add_job(
        ctx.checkpoint, "interval", seconds=engine_cfg.audit.checkpoint_interval_seconds, id="audit-checkpoint"
    )
    # Retention once a day, off-peak, in a worker thread (it blocks), by one engine at a time.
    scheduler.add_job(_retention, "cron", hour=3, minute=17, args=[ctx], id="retention", max_instances=1, coalesce=True)
    scheduler.start()

    engine = Engine(ctx)
    app = web(ctx, engine)
    servers = []
    for listener in engine_cfg.listeners:
        tls = None
        if listener.tls:
            tls = server_context_for(listener.tls, ctx.project.root, f"listener {listener.name}")
        # A stop does not wait for open event streams (an open worklist would hold it for up to 30 min).
        config = Config(app, tls, host=listener.host, port=listener.port, log_level="warning", access_log=False,
                        timeout_graceful_shutdown=GRACE_S)  # fmt: skip
        servers.append((listener, Server(config)))

    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    tasks = [asyncio.create_task(server.serve()) for _, server in servers]
    forwarder = _forwarder(ctx)
    forwarding = asyncio.create_task(forwarder.run(stop)) if forwarder else None
    try:
        while not all(server.started for _, server in servers):
            if any(t.done() for t in tasks):
                raise SystemExit("a listener failed to start (port in use?)")
            await asyncio.sleep(0.05)
        channel_listens = await engine.start()
        announce(f"radbridge {__version__} node {ctx.node} config {ctx.project.hash[:12]}")
        for listener, _ in servers:
            scheme = "https" if listener.tls else "http"
            announce(f"listening on {scheme}://{listener.host}:{listener.port} ({listener.name})")
        for line in channel_listens:
            announce(f"listening on {line}")
        announce(f"ready: {len(engine.running)} channel(s) running; Ctrl-C to stop, SIGHUP to reload channels")
        while not stop.is_set():
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload_requested.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if reload_requested.is_set() and not stop.is_set():
                reload_requested.clear()
                announce(await reload(ctx, engine))
    finally:
        await engine.stop()
        for _, server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        scheduler.shutdown(wait=False)
        ctx.audit.record("engine.stopped", actor=ACTOR)
        ctx.checkpoint()
        if forwarder and forwarding:
            forwarder.stop()
            await asyncio.gather(forwarding, return_exceptions=True)
            try:  # the last entries and the shutdown checkpoint leave the host too, if the collector is up
                await asyncio.wait_for(forwarder.forward_pending(), timeout=10)
            except (OSError, TimeoutError) as exc:
                log.warning(
                    "audit forwarding: collector unreachable at shutdown (%s); resumes next start", type(exc).__name__
                )
        announce("stopped")
