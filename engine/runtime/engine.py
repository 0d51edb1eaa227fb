"""The running engine: one Channel per enabled channel file, its source started, one delivery
worker per destination, all connected through the internal topics. Channels are reloaded one
at a time: a changed channel is stopped and started again while the others keep running."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from zoneinfo import ZoneInfo

from engine.config import LoadedChannel, Project
from engine.core import registry
from engine.core.component import ComponentContext, Source
from engine.core.errors import PermanentError
from engine.correlation.assembly import held_instances
from engine.deid import deidentify_hl7, load_profile
from engine.runtime.channel import Channel
from engine.runtime.context import Context
from engine.runtime.dedup import RecentMessages
from engine.runtime.delivery import DeliveryWorker
from engine.runtime.topics import TopicBus
from engine.runtime.transforms import build_transform
from engine.store.leases import Leases, holder_id
from engine.store.messages import Prestored
from engine.store.state import ChannelState

log = logging.getLogger("radbridge.engine")


@dataclass
class Running:
    loaded: LoadedChannel
    channel: Channel
    source: Source | None
    workers: list[DeliveryWorker]
    listens: list[str] = field(default_factory=list)


class Engine:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.topics = TopicBus()
        self.running: dict[str, Running] = {}
        self.held: set[str] = set()  # stopped by an operator: a reload does not start them again
        # Blob writes ahead of their messages (prestore): mostly waiting on fsync, so a few threads.
        self._writers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="prestore")
        ttl = timedelta(seconds=ctx.project.engine.store.lease_ttl_s)
        self.leases = Leases(ctx.db, holder_id(ctx.node), ttl)

    def component_context(self, channel: str) -> ComponentContext:
        async def audit(action: str, **fields: object) -> None:
            await self.ctx.audit.arecord(action, **fields)  # type: ignore[arg-type]

        return ComponentContext(
            channel=channel,
            root=self.ctx.project.root,
            audit=audit,
            site_tz=ZoneInfo(self.ctx.project.engine.site.timezone),
            topics=self.topics,
            state=ChannelState(self.ctx.db, self.ctx.writer, self.ctx.vault, channel),
            held_instances=held_instances(self.ctx.db, self.ctx.index),
            prestore=self.prestore,
        )

    def prestore(self, raw: bytes) -> Future[Prestored] | None:
        """Start sealing and writing a large payload in a worker thread (ComponentContext.prestore);
        None for one the store keeps inline (nothing to gain)."""
        if len(raw) <= self.ctx.messages.inline_max:
            return None
        return self._writers.submit(self.ctx.messages.prestore, raw)

    def build(self, loaded: LoadedChannel, project: Project) -> Running:
        """Everything a channel needs, constructed but not started (so the CLI can reprocess with it)."""
        cfg = loaded.config
        cctx = self.component_context(cfg.name)
        workers = []
        for ref, dest in zip(cfg.destinations, loaded.destinations, strict=True):
            destination = registry.build("destination", dest.kind, dest.config, cctx)
            workers.append(
                DeliveryWorker(
                    self.ctx,
                    cfg.name,
                    dest.name,
                    destination,
                    ref.retry,
                    ref.body,
                    self.leases,
                    outgoing=self._deidentify(ref.deidentify),
                )  # fmt: skip
            )
        transform = build_transform(loaded, project, self.ctx.index, self.ctx.db.dialect.name)
        source = registry.build("source", loaded.source_kind, loaded.source, cctx)
        channel = Channel(
            name=cfg.name,
            ctx=self.ctx,
            destinations=[d.name for d in loaded.destinations if d.name != cfg.application_ack],
            transform=transform,
            accepts=getattr(source, "accepts", None),
            application_ack=cfg.application_ack,
            strict=cfg.strict,
            recent=RecentMessages(self.ctx.db, cfg.name, timedelta(seconds=cfg.dedup_window_s)),
            dedup_window=timedelta(seconds=cfg.dedup_window_s),
            on_queued=lambda: [w.wake() for w in workers] and None,
        )
        bind = getattr(source, "bind", None)
        if bind is not None:  # a built-in stage (correlation) works on the store itself
            bind(self.ctx, channel.destinations, channel.on_queued, self.leases, self._late_series)
        return Running(loaded, channel, source, workers)

    def _deidentify(self, profile: str | None) -> Callable[[bytes], bytes] | None:
        """The HL7 Safe Harbor step of a destination that leaves the hospital (None: sent as stored)."""
        if profile is None:
            return None
        chosen = load_profile(None if profile == "basic" else self.ctx.project.root / profile)
        key = self.ctx.keyring.derived_key(f"deid:{chosen.project}")

        def deidentify(body: bytes) -> bytes:
            if not body.startswith(b"MSH"):
                raise PermanentError("de-identification applies to HL7 v2 messages only")
            text = deidentify_hl7(body.decode("utf-8", "surrogateescape"), chosen, key)
            return text.encode("utf-8", "surrogateescape")

        return deidentify

    def _late_series(self, channel: str) -> str:
        for loaded in self.ctx.project.channels:
            if loaded.config.name == channel and loaded.config.study is not None:
                return loaded.config.study.late_series
        return "retrigger"

    async def start_channel(self, loaded: LoadedChannel, project: Project) -> Running:
        self.held.discard(loaded.config.name)
        running = self.build(loaded, project)
        for worker in running.workers:
            worker.start()
        if running.source is not None:
            running.listens = await running.source.start(running.channel.ingest)
        self.running[loaded.config.name] = running
        log.info("channel %s started", loaded.config.name)
        return running

    async def stop_channel(self, name: str, *, hold: bool = False) -> None:
        """Stop a channel; `hold` (an operator's stop) keeps it stopped through reloads until started."""
        if hold:
            self.held.add(name)
        running = self.running.pop(name, None)
        if running is None:
            return
        if running.source is not None:
            await running.source.stop()
        for worker in running.workers:
            await worker.stop()
        log.info("channel %s stopped", name)

    async def start(self) -> list[str]:
        listens = []
        for loaded in self.ctx.project.channels:
            if loaded.config.enabled:
                running = await self.start_channel(loaded, self.ctx.project)
                listens += [f"{line} (channel {loaded.config.name})" for line in running.listens]
        return listens

    async def stop(self) -> None:
        for name in list(self.running):
            await self.stop_channel(name)
        self._writers.shutdown(wait=True)

    async def reload(self, project: Project) -> list[str]:
        """Restart only the channels whose files (channel or mapping) changed; returns their names."""
        old = {name: r.loaded for name, r in self.running.items()}
        new = {c.config.name: c for c in project.channels if c.config.enabled and c.config.name not in self.held}
        changed = []
        for name in sorted(set(old) | set(new)):
            before, after = old.get(name), new.get(name)
            if before is not None and after is not None and _files(before, self.ctx.project) == _files(after, project):
                continue
            changed.append(name)
            await self.stop_channel(name)
            if after is not None:
                await self.start_channel(after, project)
        self.ctx.project = project
        self.ctx.messages.config_hash = project.hash
        return changed


def _files(loaded: LoadedChannel, project: Project) -> tuple[str | None, ...]:
    mapping = loaded.config.mapping
    return (project.files.get(loaded.path), project.files.get(mapping) if mapping else None)
