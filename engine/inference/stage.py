"""The inference stage (source kind `inference`): routes each ready study to its models and keeps
their jobs (engine.inference.worker runs them).

`study.ready` → the rule sets choose models → one queued job per (study content, model version)
that is active or in shadow, in the same transaction as the stored record and the audit entries
(`inference.requested`, or `inference.unrouted` for a study no rule takes: kept, status filtered).
A repeated study.ready for the same content finds its jobs and adds none. `study.cancelled`
cancels the study's open jobs once none of its orders is still active; `study.updated` carries a
new order priority to its queued jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from engine.core.clock import utcnow
from engine.core.component import ComponentContext, Inbound, Outcome, Problem, Sink
from engine.core.ids import new_id
from engine.core.registry import register
from engine.correlation.repo import Repo as CorrelationRepo
from engine.inference.config import InferenceConfig
from engine.inference.jobs import RANK, JobRow, Jobs
from engine.inference.registry import Registry
from engine.inference.rules import route
from engine.inference.worker import Worker
from engine.store.writer import WriteItem

log = logging.getLogger("radbridge.inference")
EVER = datetime(2000, 1, 1, tzinfo=UTC)  # a study's content is routed once, however late its study.ready repeats


@register("source", "inference")
class InferenceStage:
    Config = InferenceConfig

    def __init__(self, config: InferenceConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx
        self.channel = ctx.channel
        self.actor = f"service:inference/{ctx.channel}"
        self.rt: Any = None
        self.destinations: list[str] = []
        self.wake: Callable[[], None] = lambda: None
        self.worker: Worker | None = None
        self._lock = asyncio.Lock()

    def bind(self, runtime: Any, destinations: list[str], wake: Callable[[], None], leases: Any, *_: Any) -> None:
        """Called by the engine: built-in stages work on the store directly, unlike connectors."""
        self.rt, self.destinations, self.wake = runtime, destinations, wake
        self.jobs = Jobs(runtime.db)
        self.registry = Registry(runtime.db, runtime.writer, runtime.audit)
        self.worker = Worker(self.config, self.channel, runtime, self.jobs, self.registry, destinations, wake, leases)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, sink: Sink) -> list[str]:
        if self.rt is None or self.ctx.topics is None or self.worker is None:
            raise RuntimeError("the inference stage runs inside the engine")
        await asyncio.to_thread(self.registry.register, self.config.models, self.actor)
        for topic in self.config.topics:
            self.ctx.topics.subscribe(topic, self.receive)
        self.worker.start()
        models = ", ".join(f"{m.name} {m.version}" for m in self.config.models)
        return [f"inference of {', '.join(self.config.topics)} with {models}"]

    async def stop(self) -> None:
        unsubscribe = getattr(self.ctx.topics, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(self.receive)
        if self.worker is not None:
            await self.worker.stop()

    # -- events ---------------------------------------------------------------------------------

    async def receive(self, inbound: Inbound) -> Outcome:
        try:
            async with self._lock:
                return await asyncio.to_thread(self._receive, inbound)
        except Exception as exc:  # noqa: BLE001 - the publisher keeps the record and retries
            log.error("inference %s: event not applied: %s", self.channel, type(exc).__name__)
            return Outcome("unavailable", problem=Problem("inference could not store the event; retry later"))

    def _receive(self, inbound: Inbound) -> Outcome:
        data = inbound.decoded if isinstance(inbound.decoded, dict) else json.loads(inbound.raw)
        topic, fields = str(data.get("topic") or ""), dict(data.get("fields") or {})
        if topic == "study.ready":
            return self._on_ready(inbound, fields)
        if topic == "study.cancelled":
            return self._on_cancelled(fields)
        if topic == "study.updated":
            return self._on_updated(fields)
        return Outcome("filtered")

    def _event(self, action: str, record_ids: list[str], outcome: str = "success", **detail: Any) -> dict[str, Any]:
        return self.rt.audit.event(action, actor=self.actor, outcome=outcome, record_ids=record_ids,
                                   detail={"channel": self.channel, **detail})  # fmt: skip

    def _on_ready(self, inbound: Inbound, study: dict[str, Any]) -> Outcome:
        rt = self.rt
        study_id, content = str(study.get("study_id") or ""), str(study.get("content_hash") or "")
        if not study_id or not content:
            return Outcome("invalid", problem=Problem("study.ready without study_id or content_hash"))
        control = rt.index("control_id", f"{self.channel}|{study_id}|{content}")
        for message_id, _ in rt.messages.same_control(control, EVER):
            return Outcome("duplicate", message_id=message_id)  # this content was routed before
        routes = route(self.config.rule_sets, study)
        states = {(v.name, v.version): v.state for v in self.registry.all()}
        now = utcnow()
        uid_idx = rt.index("study_uid", study["study_uid"]) if study.get("study_uid") else None
        message_id = new_id()
        item = WriteItem()
        requested = []
        for r in routes:
            for model in self.config.versions(r.model):
                state = states.get((model.name, model.version), model.initial_state)
                if state in ("retired", "recalled"):
                    continue
                job = JobRow(
                    id=new_id(), study_id=study_id, study_uid_idx=uid_idx, content_hash=content, model=model.name,
                    model_version=model.version, state="queued", priority=RANK.get(str(study.get("priority")), 3),
                    attempts=0, due_at=now, holder=None, lease_until=None, channel=self.channel, trigger=r.trigger,
                    request_message=message_id, result_message=None, clinical=None, input_digest=None,
                    output_digest=None, error=None, revision=0, created_at=now, started_at=None, finished_at=None,
                    updated_at=now,
                )  # fmt: skip
                item.extend(self.jobs.new(job))
                requested.append(job)
                item.audit.append(rt.audit.event(
                    "inference.requested", actor=self.actor, record_ids=[job.id, study_id, message_id],
                    indexes={"study_uid": uid_idx} if uid_idx else None,
                    detail={"channel": self.channel, "trigger": r.trigger, "model": model.name,
                            "version": model.version, "state": state, "external": model.external},
                ))  # fmt: skip
        status = "received" if requested else "filtered"
        error = None if requested else ("no rule matched" if not routes else "every chosen model version is retired")
        _, stored = rt.messages.receive(
            self.channel, "record study.ready", inbound.raw, status=status, error=error, message_id=message_id,
            indexes={"control_id": control, **({"study_uid": uid_idx} if uid_idx else {})},
        )  # fmt: skip
        item = stored.extend(item)
        if not requested:
            facts = {"modality": study.get("modality"), "body_part": study.get("body_part")}
            item.audit.append(self._event("inference.unrouted", [study_id, message_id], reason=error, **facts))
        rt.writer.write(item)
        if requested and self.worker is not None:
            self.worker.wake()
        return Outcome("accepted" if requested else "filtered", message_id=message_id)

    def _on_cancelled(self, fields: dict[str, Any]) -> Outcome:
        study_id = str(fields.get("study_id") or "")
        repo = CorrelationRepo(self.rt.db)
        study = repo.study_by_id(study_id)
        standing = study is not None and any(
            o.state not in ("cancelled", "expired") for o in repo.orders_of_study(study.key)
        )
        if standing:
            return Outcome("accepted")  # another order of the study still stands: its jobs go on
        cancelled = 0
        for job in self.jobs.of_study(study_id):
            if job.state in ("queued", "running") and self.cancel(job, "order cancelled"):
                cancelled += 1
        log.info("inference %s: study %s cancelled, %d job(s) stopped", self.channel, study_id, cancelled)
        return Outcome("accepted")

    def cancel(self, job: JobRow, reason: str) -> bool:
        """Cancel an open job (guarded: False if it finished meanwhile); a running one is stopped."""
        item = self.jobs.save(job, job.but(state="cancelled", due_at=None, holder=None, lease_until=None,
                                           finished_at=utcnow(), error=reason))  # fmt: skip
        if job.state == "running":
            item.extend(self.jobs.free_slot(job))
        item.audit.append(self.rt.audit.event(
            "inference.cancelled", actor=self.actor, record_ids=[job.id, job.study_id],
            indexes={"study_uid": job.study_uid_idx} if job.study_uid_idx else None,
            detail={"channel": self.channel, "model": job.model, "version": job.model_version, "reason": reason,
                    "was": job.state},
        ))
        try:
            self.rt.writer.write(item)
        except Exception:  # noqa: BLE001 - StaleWrite: it completed or moved on; nothing to cancel
            return False
        if self.worker is not None:
            self.worker.abandon(job.id)
        return True

    def _on_updated(self, fields: dict[str, Any]) -> Outcome:
        priority = RANK.get(str(fields.get("priority") or ""), None)
        if priority is None:
            return Outcome("accepted")
        for job in self.jobs.of_study(str(fields.get("study_id") or "")):
            if job.state == "queued" and job.priority != priority:
                try:
                    self.rt.writer.write(self.jobs.save(job, job.but(priority=priority)))
                except Exception:  # noqa: BLE001 - claimed meanwhile: it runs at the old priority
                    continue
        return Outcome("accepted")
