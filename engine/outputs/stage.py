"""The outputs stage (source kind `outputs`): what becomes of each AI result on its way out.

- `inference.completed` (an active model version's result) → `result.preliminary` the first time a
  study's report from that model goes out, `result.corrected` when a new result replaces it (a late
  series made a new study content); a shadow result or a study whose orders were all cancelled is
  withheld (audited). A result suggesting a higher priority than the latest known order priority
  raises it once per level: `worklist.priority`.
- `study.cancelled` (no order of the study stands any more) → `result.withdrawn` for each report
  already out; a model version recalled (`radbridge models recall`) → the same, found by a sweep.
- `order.changed` carrying the priority the engine raised (the RIS echoing its XO) is recognised
  and ignored; `report.final` (the radiologist's report) is linked to the study's AI reports.

Every record goes out through this channel's destinations as a queued message in the decision's
own transaction (a transactional outbox), so each revision leaves exactly once; the report row is
guarded on its version (another engine changing it makes this one decide again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from engine.core.clock import utcnow
from engine.core.component import ComponentContext, Inbound, Outcome, Problem
from engine.core.records import InferenceResult, PriorityUpdate
from engine.core.registry import register
from engine.core.result import PRIORITY_ORDER
from engine.core.sweeper import Sweeper, SweptStage
from engine.correlation.keys import keys
from engine.correlation.repo import OrderRow, Repo
from engine.outputs.config import OutputsConfig
from engine.outputs.reports import ReportRow, Reports
from engine.store.writer import WriteItem

log = logging.getLogger("radbridge.outputs")
ATTEMPTS = 5
STANDING = ("waiting", "matched", "ready", "held")


def _rank(priority: str | None) -> int:
    return PRIORITY_ORDER.index(priority) if priority in PRIORITY_ORDER else 0  # type: ignore[arg-type]


def update_id(study_id: str, level: str) -> str:
    """The id of the one update per (study, level); short enough for MSH-10, so an echo is known."""
    return "RB" + hashlib.sha256(f"{study_id}|{level}".encode()).hexdigest()[:18]


@register("source", "outputs")
class OutputsStage(SweptStage):
    label = "outputs"
    Config = OutputsConfig

    def __init__(self, config: OutputsConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx
        self.channel = ctx.channel
        self.actor = f"service:outputs/{ctx.channel}"
        self.rt: Any = None
        self.destinations: list[str] = []
        self.wake: Callable[[], None] = lambda: None
        self.leases: Any = None
        self._lock = asyncio.Lock()
        self._sweeper: Sweeper | None = None

    def bind(self, runtime: Any, destinations: list[str], wake: Callable[[], None], leases: Any, *_: Any) -> None:
        self.rt, self.destinations, self.wake, self.leases = runtime, destinations, wake, leases
        self.reports = Reports(runtime.db)
        self.repo = Repo(runtime.db)

    async def sweep_once(self) -> int:
        """Withdraw the reports of recalled model versions; returns how many."""
        found = await asyncio.to_thread(self.reports.of_recalled)
        for report in found:
            await self._apply(lambda item, r=report: self._withdraw(item, r, "model version recalled"))
        return len(found)

    # -- events ---------------------------------------------------------------------------------

    async def receive(self, inbound: Inbound) -> Outcome:
        data = inbound.decoded if isinstance(inbound.decoded, dict) else json.loads(inbound.raw)
        topic, fields = str(data.get("topic") or ""), dict(data.get("fields") or {})
        handlers = {"inference.completed": self._on_result, "study.cancelled": self._on_cancelled,
                    "order.changed": self._on_order_changed, "report.final": self._on_final_report}  # fmt: skip
        handler = handlers.get(topic)
        if handler is None:
            return Outcome("filtered")
        try:
            emitted = await self._apply(lambda item: handler(item, fields, inbound.raw))
        except Exception as exc:  # noqa: BLE001 - the publisher keeps the record and retries
            log.error("outputs %s: %s not applied: %s", self.channel, topic, type(exc).__name__)
            return Outcome("unavailable", problem=Problem("outputs could not store the event; retry later"))
        return Outcome("accepted" if emitted else "filtered")

    async def _apply(self, decide: Callable[[WriteItem], int]) -> int:
        """Decide from committed state and write it all as one transaction; decide again if a guarded
        row moved meanwhile. Returns how many records went out."""
        async with self._lock:
            for attempt in range(ATTEMPTS):
                item = WriteItem()
                emitted = await asyncio.to_thread(decide, item)
                if not (item.inserts or item.statements or item.audit or item.guards):
                    return 0
                try:
                    await self.rt.writer.awrite(item)
                except Exception:
                    if attempt == ATTEMPTS - 1:
                        raise
                    continue
                if emitted:
                    self.wake()
                return emitted
        return 0

    def _audit(self, item: WriteItem, action: str, record_ids: list[str], outcome: str = "success",
               **detail: Any) -> None:  # fmt: skip
        item.audit.append(self.rt.audit.event(action, actor=self.actor, outcome=outcome, record_ids=record_ids,
                                              detail={"channel": self.channel, **detail}))  # fmt: skip

    def _emit(self, item: WriteItem, topic: str, type_: str, fields: dict[str, Any]) -> str:
        body = json.dumps({"type": type_, "topic": topic, "fields": fields}, sort_keys=True, separators=(",", ":"))
        message_id, stored = self.rt.messages.receive(
            self.channel, f"record {topic}", body.encode(), direction="out", destinations=self.destinations,
            status="queued" if self.destinations else "received",
        )  # fmt: skip
        item.extend(stored)
        return message_id

    def _orders(self, study_id: str) -> list[OrderRow] | None:
        study = self.repo.study_by_id(study_id)
        return None if study is None else self.repo.orders_of_study(study.key)

    # -- results --------------------------------------------------------------------------------

    def _on_result(self, item: WriteItem, fields: dict[str, Any], raw: bytes = b"") -> int:
        record = InferenceResult.model_validate(fields)
        ids = [record.job_id, record.study_id]
        if not record.clinical:
            self._audit(item, "result.withheld", ids, reason="shadow model version", model=record.model)
            return 0
        orders = self._orders(record.study_id) or []
        if orders and not any(o.state in STANDING for o in orders):
            self._audit(item, "result.withheld", ids, reason="every order of the study is cancelled")
            return 0
        report_id = f"{record.study_id}/{record.model}"
        existing = self.reports.get(report_id)
        if existing is not None and existing.job_id == record.job_id:
            return 0  # this result went out already
        status = "preliminary" if existing is None else "corrected"
        revision = 1 if existing is None else existing.revision + 1
        out = record.model_copy(update={"status": status, "report_id": report_id, "revision": revision})
        message_id = self._emit(item, f"result.{status}", "result", out.model_dump(mode="json", exclude_none=True))
        now = utcnow()
        if existing is None:
            row = ReportRow(report_id, record.study_id, record.model, record.version, record.job_id, status, revision,
                            message_id, record.critical, None, None, 0, now, now)  # fmt: skip
            item.extend(Reports.new(row))
        else:
            item.extend(Reports.save(existing, existing.but(
                version=record.version, job_id=record.job_id, status=status, revision=revision,
                message_id=message_id, critical=record.critical,
            )))  # fmt: skip
        self._audit(item, f"result.{'released' if status == 'preliminary' else 'corrected'}", [*ids, message_id],
                    report=report_id, revision=revision, model=record.model, version=record.version,
                    critical=record.critical)  # fmt: skip
        return 1 + self._raise_priority(item, record, orders)

    def _raise_priority(self, item: WriteItem, record: InferenceResult, orders: list[OrderRow]) -> int:
        """One worklist.priority per (study, level), and never below the latest known order priority."""
        wanted = record.result.suggested_priority
        latest = max([record.priority or "routine", *(o.priority for o in orders if o.state in STANDING)], key=_rank)
        if not self.config.raise_priority or _rank(wanted) <= _rank(latest):
            return 0
        if wanted in self.reports.raised(record.study_id):
            return 0
        critical = [f for f in record.result.findings if f.critical] or record.result.findings
        why = "; ".join(f"{f.display} (score {f.score:.2f})" for f in critical[:3])
        update = PriorityUpdate(
            update_id=update_id(record.study_id, wanted), study_id=record.study_id, study_uid=record.study_uid,
            orders=record.orders, patient_id=record.patient_id, patient_id_issuer=record.patient_id_issuer,
            patient_name=record.patient_name, priority=wanted, previous_priority=latest,
            reason=f"AI {record.model} {record.version}: {why}"[:200], job_id=record.job_id, model=record.model,
            version=record.version, raised_at=utcnow(),
        )  # fmt: skip
        message_id = self._emit(item, "worklist.priority", "priority_update", update.model_dump(mode="json"))
        item.extend(Reports.raise_row(record.study_id, wanted, update.update_id, record.job_id, message_id))
        self._audit(item, "priority.raised", [record.job_id, record.study_id, message_id], level=wanted,
                    previous=latest, model=record.model, version=record.version)  # fmt: skip
        return 1

    # -- withdrawals ----------------------------------------------------------------------------

    def _withdraw(self, item: WriteItem, report: ReportRow, reason: str) -> int:
        current = self.reports.get(report.report_id)
        if current is None or current.status == "withdrawn":
            return 0
        fields = json.loads(self.rt.messages.read(current.message_id, "raw"))["fields"]
        revision = current.revision + 1
        out = InferenceResult.model_validate({**fields, "status": "withdrawn", "revision": revision})
        message_id = self._emit(item, "result.withdrawn", "result", out.model_dump(mode="json", exclude_none=True))
        item.extend(Reports.save(current, current.but(status="withdrawn", revision=revision, message_id=message_id)))
        self._audit(item, "result.withdrawn", [current.job_id, current.study_id, message_id], report=current.report_id,
                    revision=revision, reason=reason)  # fmt: skip
        return 1

    def _on_cancelled(self, item: WriteItem, fields: dict[str, Any], raw: bytes = b"") -> int:
        study_id = str(fields.get("study_id") or "")
        orders = self._orders(study_id) or []
        if any(o.state in STANDING for o in orders):
            return 0  # another order of the study still stands: its report stays
        return sum(self._withdraw(item, r, "order cancelled") for r in self.reports.of_study(study_id))

    # -- order echoes and final reports ----------------------------------------------------------

    def _study_of_order(self, fields: dict[str, Any]) -> str | None:
        text = {k: str(fields.get(k) or "") for k in ("accession", "placer_number", "filler_number")}
        pairs = keys(self.rt.index, accessions=[text["accession"]], placer=text["placer_number"],
                     filler=text["filler_number"])  # fmt: skip
        for order in self.repo.orders_by_keys(pairs):
            if order.study_key:
                study = self.repo.study(order.study_key)
                if study is not None:
                    return study.id
        return None

    def _on_order_changed(self, item: WriteItem, fields: dict[str, Any], raw: bytes = b"") -> int:
        if str(fields.get("order_control") or "").upper() != "XO":
            return 0
        study_id = self._study_of_order(fields)
        level = str(fields.get("priority") or "")
        if study_id and level in self.reports.raised(study_id):
            self._audit(item, "priority.echo", [study_id], level=level)  # the RIS confirming our own update
        return 0

    def _on_final_report(self, item: WriteItem, fields: dict[str, Any], raw: bytes = b"") -> int:
        """The radiologist's report, kept (sealed) and linked to the study's AI reports for agreement."""
        study_id = self._study_of_order(fields)
        reports = self.reports.of_study(study_id) if study_id else []
        status = str(fields.get("status") or "")[:8] or None
        message_id, stored = self.rt.messages.receive(self.channel, "record report.final", raw)
        item.extend(stored)
        for report in reports:
            item.extend(Reports.save(report, report.but(final_message=message_id, final_status=status)))
        self._audit(item, "report.linked", [message_id, *(r.report_id for r in reports)],
                    outcome="success" if reports else "failure", status=status, reports=len(reports))  # fmt: skip
        return 0
