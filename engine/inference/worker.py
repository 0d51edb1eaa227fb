"""Runs inference jobs: claims due jobs (most urgent first, within each model's concurrency cap),
reads the study back from the vault, de-identifies it for an external model (recording the
disclosure first), calls the model under its timeout, applies the live thresholds, and records
the result — sealed, with the raw model output and the UID crosswalk — in one transaction with
the job's completion and, for an active model version, the queued outputs (a transactional
outbox). Failures retry with backoff (a model's Retry-After honoured) up to max_attempts, then the
job is dead. A job whose engine died is taken up again; a cancelled job's late result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

from engine.core.clock import utcnow
from engine.core.errors import RadbridgeError, RetryableError
from engine.core.ids import new_id
from engine.core.records import InferenceResult
from engine.core.result import Result
from engine.correlation.keys import patient_key
from engine.deid import DicomDeidentifier, reidentify_uids
from engine.deid import method as deid_method
from engine.inference.clients import build_client
from engine.inference.config import InferenceConfig
from engine.inference.inputs import JobInput, digest, stored_instances
from engine.inference.jobs import JobRow, Jobs, backoff
from engine.inference.models import ModelClient, ModelConfig, StudyInput
from engine.inference.registry import Registry, effective_thresholds
from engine.inference.thresholds import apply_thresholds
from engine.store.leases import holder_dead
from engine.store.tables import Disclosure
from engine.store.writer import StaleWrite, WriteItem

log = logging.getLogger("radbridge.inference")
GRACE = timedelta(seconds=30)  # a running job's lease outlives its timeout by this much
_disclosures = Disclosure.__table__


class Worker:
    def __init__(self, config: InferenceConfig, channel: str, rt: Any, jobs: Jobs, registry: Registry,
                 destinations: list[str], wake_outputs: Callable[[], None], leases: Any) -> None:  # fmt: skip
        self.config, self.channel, self.rt = config, channel, rt
        self.jobs, self.registry = jobs, registry
        self.destinations, self.wake_outputs = destinations, wake_outputs
        self.holder: str = getattr(leases, "holder", None) or f"local/{new_id()}"
        self.actor = f"service:inference/{channel}"
        self._clients: dict[tuple[str, str], ModelClient] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._event = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._deid: DicomDeidentifier | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run_forever(), name=f"inference worker {self.channel}")

    def wake(self) -> None:
        self._event.set()

    async def stop(self) -> None:
        """Stop taking jobs; jobs in flight are interrupted and queued again (not counted as attempts)."""
        self._stopping = True
        self._event.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._tasks.items())
        for _, task in tasks:
            task.cancel()
        for job_id, task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            job = await asyncio.to_thread(self.jobs.get, job_id)
            if job is not None and job.state == "running" and job.holder == self.holder:
                await self._requeue(job, "engine stopping", counted=False)
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()

    def abandon(self, job_id: str) -> None:
        """The job was cancelled: stop its model call (its result would be dropped anyway)."""
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()

    async def _run_forever(self) -> None:
        await asyncio.to_thread(self.jobs.reconcile)
        while not self._stopping:
            self._event.clear()
            try:
                await self.recover()
                await self.claim()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.error("inference %s: worker round failed: %s", self.channel, type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), self.config.poll_s)

    # -- claiming -------------------------------------------------------------------------------

    def _model(self, job: JobRow) -> ModelConfig | None:
        return next((m for m in self.config.models if m.name == job.model and m.version == job.model_version), None)

    def _audit(self, action: str, job: JobRow, outcome: str = "success", *, also: tuple[str, ...] = (),
               **detail: Any) -> dict[str, Any]:  # fmt: skip
        return self.rt.audit.event(action, actor=self.actor, outcome=outcome,
                                   record_ids=[job.id, job.study_id, *also],
                                   indexes={"study_uid": job.study_uid_idx} if job.study_uid_idx else None,
                                   detail={"channel": self.channel, "model": job.model, "version": job.model_version,
                                           "trigger": job.trigger, **detail})  # fmt: skip

    async def claim(self) -> int:
        """Start as many due jobs as there are free workers and model slots; returns how many."""
        free = self.config.workers - len(self._tasks)
        if free <= 0:
            return 0
        now = utcnow()
        due = await asyncio.to_thread(self.jobs.due, now, free * 4)
        counts = await asyncio.to_thread(self.jobs.running_counts) if due else {}
        started = 0
        for job in due:
            if started >= free:
                break
            model = self._model(job)
            if model is None or job.channel != self.channel:
                continue  # another inference channel's job, or a model this configuration no longer declares
            if counts.get((job.model, job.model_version), 0) >= model.concurrency:
                continue
            running = job.but(state="running", attempts=job.attempts + 1, due_at=None, holder=self.holder,
                              lease_until=now + timedelta(seconds=model.timeout_s) + GRACE, started_at=now)  # fmt: skip
            item = self.jobs.save(job, running).extend(self.jobs.take_slot(job, model.concurrency))
            item.audit.append(self._audit("inference.started", running, attempt=running.attempts))
            try:
                await self.rt.writer.awrite(item)
            except StaleWrite:
                continue  # taken by another node, cancelled, or the model is at its cap
            counts[(job.model, job.model_version)] = counts.get((job.model, job.model_version), 0) + 1
            running = running.but(revision=job.revision + 1)
            self._tasks[job.id] = asyncio.create_task(self._run(running, model), name=f"inference job {job.id}")
            started += 1
        return started

    async def recover(self) -> int:
        """Queue again the running jobs whose engine died (lease run out, or its process gone here)."""
        now, found = utcnow(), 0
        for job in await asyncio.to_thread(self.jobs.running):
            if job.id in self._tasks:
                continue
            if job.lease_until is None or job.lease_until < now or (job.holder and holder_dead(job.holder)):
                found += await self._requeue(job, "engine stopped during the job", counted=True)
        return found

    async def _requeue(self, job: JobRow, reason: str, *, counted: bool) -> int:
        model = self._model(job)
        dead = counted and model is not None and job.attempts >= model.max_attempts
        attempts = job.attempts if counted else max(job.attempts - 1, 0)
        after = job.but(state="dead" if dead else "queued", due_at=None if dead else utcnow(), holder=None,
                        lease_until=None, attempts=attempts, error=reason)  # fmt: skip
        item = self.jobs.save(job, after).extend(self.jobs.free_slot(job))
        item.audit.append(self._audit("inference.interrupted", job, "failure", reason=reason, dead=dead))
        try:
            await self.rt.writer.awrite(item)
        except StaleWrite:
            return 0
        return 1

    # -- running --------------------------------------------------------------------------------

    def client(self, model: ModelConfig) -> ModelClient:
        key = (model.name, model.version)
        if key not in self._clients:
            self._clients[key] = build_client(model, self.rt.project.root)
        return self._clients[key]

    def _deidentifier(self) -> DicomDeidentifier:
        if self._deid is None:
            profile = self.config.deid
            self._deid = DicomDeidentifier(profile, self.rt.keyring.derived_key(f"deid:{profile.project}"))
        return self._deid

    def _input(self, model: ModelConfig, job: JobRow) -> JobInput:
        instances = stored_instances(self.rt.db, self.rt.messages.read, job.study_id)
        if not model.external:
            return JobInput(instances, digest(instances))
        deid, out, crosswalk, blocked = self._deidentifier(), [], {}, 0
        for data in instances:
            cleaned, outcome = deid.apply_bytes(data)
            if cleaned is None:
                blocked += 1
                continue
            out.append(cleaned)
            crosswalk.update(outcome.uids)
        if not out:
            raise RadbridgeError(f"job {job.id}: every instance was blocked by de-identification (burned-in text)")
        return JobInput(out, digest(out), deid_method(self.config.deid), crosswalk, blocked)

    async def _disclose(self, model: ModelConfig, job: JobRow, study: dict[str, Any], inp: JobInput) -> None:
        """Record the disclosure (per patient, blind-indexed) before anything leaves."""
        patient = patient_key(self.rt.index, str(study.get("patient_id") or ""))
        host = urlparse(getattr(model, "url", "")).hostname or "?"
        row = {"id": new_id(), "patient_idx": patient, "recipient": f"{model.name}@{model.version} {host}"[:200],
               "purpose": "inference", "method": inp.method, "study_id": job.study_id, "job_id": job.id,
               "items": len(inp.instances), "at": utcnow()}  # fmt: skip
        item = WriteItem(inserts=[(_disclosures, row)])
        item.audit.append(self.rt.audit.event(
            "disclosure.recorded", actor=self.actor, record_ids=[row["id"], job.id, job.study_id],
            indexes={"mrn": patient}, detail={"recipient": row["recipient"], "method": inp.method,
                                              "items": row["items"], "blocked": inp.blocked, "purpose": "inference"},
        ))  # fmt: skip
        await self.rt.writer.awrite(item)

    async def _run(self, job: JobRow, model: ModelConfig) -> None:
        started = time.monotonic()
        try:
            request = json.loads(await asyncio.to_thread(self.rt.messages.read, job.request_message, "raw"))
            study = dict(request.get("fields") or {})
            inp = await asyncio.to_thread(self._input, model, job)
            if model.external:
                await self._disclose(model, job, study, inp)
            facts = {k: str(study.get(k) or "") for k in ("modality", "body_part", "procedure_code")}
            called = time.monotonic()
            output = await asyncio.wait_for(
                self.client(model).infer(StudyInput(job.id, inp.instances, facts)), model.timeout_s
            )  # fmt: skip
            model_ms = round((time.monotonic() - called) * 1000)
            if (output.result.model, output.result.version) != (model.name, model.version):
                raise RadbridgeError(f"job {job.id}: the model answered as another model or version")
            row = await asyncio.to_thread(self.registry.get, model.name, model.version)
            result = apply_thresholds(output.result, effective_thresholds(model, row))
            if inp.crosswalk:
                result = Result.model_validate(reidentify_uids(result.model_dump(), inp.crosswalk))
            await self._complete(job, model, study, result, output.raw, inp, row.state if row else "shadow", started,
                                 model_ms)
        except asyncio.CancelledError:
            raise
        except (RetryableError, TimeoutError, OSError) as exc:
            await self._fail(job, model, exc, retry=True)
        except Exception as exc:  # noqa: BLE001 - permanent: bad content, garbage, a model bug
            await self._fail(job, model, exc, retry=False)
        finally:
            self._tasks.pop(job.id, None)
            self._event.set()

    async def _complete(self, job: JobRow, model: ModelConfig, study: dict[str, Any], result: Result, raw: bytes,
                        inp: JobInput, state: str, started: float, model_ms: int) -> None:  # fmt: skip
        clinical = state == "active"
        topic = "inference.completed" if clinical else "inference.shadow"
        fields = {
            "job_id": job.id, "study_id": job.study_id, "study_uid": study.get("study_uid"),
            "accessions": study.get("accessions") or [], "orders": study.get("orders") or [],
            **{k: study.get(k) for k in ("patient_id", "patient_id_issuer", "patient_name", "birth_date", "sex",
                                         "modality", "body_part", "procedure_code", "procedure_text", "priority")},
            "model": model.name, "version": model.version, "trigger": job.trigger, "clinical": clinical,
            "critical": any(f.critical for f in result.findings), "result": result.model_dump(mode="json"),
            "completed_at": utcnow().isoformat(),
        }  # fmt: skip
        record = InferenceResult.model_validate(fields).model_dump(mode="json", exclude_none=True)
        body = json.dumps({"type": "result", "topic": topic, "fields": record}, sort_keys=True, separators=(",", ":"))
        destinations = self.destinations if (clinical or self.config.emit_shadow) else []
        parts = {"model-output": raw}
        if inp.crosswalk:
            parts["crosswalk"] = json.dumps(inp.crosswalk, sort_keys=True).encode()
        message_id, item = self.rt.messages.receive(
            self.channel, f"record {topic}", body.encode(), direction="out", destinations=destinations,
            status="queued" if destinations else "received", parts=parts,
        )  # fmt: skip
        output_digest = hashlib.sha256(raw).hexdigest()
        done = job.but(state="completed", result_message=message_id, clinical=clinical, input_digest=inp.digest,
                       output_digest=output_digest, finished_at=utcnow(), holder=None, lease_until=None, error=None)
        item.extend(self.jobs.save(job, done)).extend(self.jobs.free_slot(job))
        ms = round((time.monotonic() - started) * 1000)
        item.audit.append(self._audit(
            "inference.completed", job, also=(message_id,), input_digest=inp.digest,
            output_digest=output_digest, ms=ms, model_ms=model_ms, clinical=clinical, findings=len(result.findings),
            critical=fields["critical"], instances=len(inp.instances), method=inp.method,
        ))  # fmt: skip
        try:
            await self.rt.writer.awrite(item)
        except StaleWrite:  # cancelled meanwhile, or another engine took the job over: record nothing
            log.info("inference %s: job %s changed while running; its result is dropped", self.channel, job.id)
            return
        if destinations:
            self.wake_outputs()

    async def _fail(self, job: JobRow, model: ModelConfig, exc: BaseException, *, retry: bool) -> None:
        # Our own errors name ids and fields only; anything else is reduced to its class name.
        text = f"{type(exc).__name__}: {exc}" if isinstance(exc, RadbridgeError) else type(exc).__name__
        again = retry and job.attempts < model.max_attempts
        delay = backoff(job.attempts, self.config.backoff_s, self.config.backoff_max_s)
        retry_after = getattr(exc, "retry_after", None)
        if again and retry_after:
            delay = max(delay, timedelta(seconds=float(retry_after)))
        after = job.but(state="queued" if again else "dead", due_at=utcnow() + delay if again else None, holder=None,
                        lease_until=None, error=text[:500], finished_at=None if again else utcnow())  # fmt: skip
        item = self.jobs.save(job, after).extend(self.jobs.free_slot(job))
        item.audit.append(self._audit("inference.failed", job, "failure", error=text[:500], attempt=job.attempts,
                                      retry_in_s=delay.total_seconds() if again else None, dead=not again))  # fmt: skip
        try:
            await self.rt.writer.awrite(item)
        except StaleWrite:
            return
        log.warning("inference %s: job %s attempt %d failed (%s)%s", self.channel, job.id, job.attempts,
                    type(exc).__name__, "; retrying" if again else "; dead")  # fmt: skip
