"""The correlation stage (source kind `correlation`): the order registry and the matcher.

It reads order records, patient events and PACS notifications from internal topics, and its own
timers (quiet period, unmatched wait, order expiry: deadline columns in the store, swept by one
engine at a time under a lease). Each event is decided under one lock from committed state and
written as one transaction: the event itself (sealed), the changed rows (guarded on their
version, so a concurrent change makes it decide again), the audit entries and any record it
emits (`study.ready`, `study.linked`, `study.updated`, `study.cancelled`, `study.stable`) as a
queued message of this channel — a transactional outbox, so a record goes out exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from engine.core.clock import utcnow
from engine.core.component import ComponentContext, Inbound, Outcome, Problem, Sink
from engine.core.ids import new_id
from engine.core.registry import register
from engine.core.sweeper import Sweeper, SweptStage
from engine.correlation.config import CorrelationConfig
from engine.correlation.keys import keys, patient_key
from engine.correlation.match import patient_mismatch, ready_fields
from engine.correlation.repo import OrderRow, Repo, StudyRow
from engine.dicom import InstanceHeader, Notification
from engine.store.writer import WriteItem

log = logging.getLogger("radbridge.correlation")
DEDUP_WINDOW = timedelta(days=1)
ATTEMPTS = 5  # a decision re-made after a concurrent change (StaleWrite) or a conflicting insert


class Runtime(Protocol):
    """What the stage needs of the running engine (engine.runtime.context.Context)."""

    db: Any
    writer: Any
    audit: Any
    messages: Any
    index: Any


@dataclass
class _Candidate:
    row: OrderRow
    fields: dict[str, Any]


@dataclass
class Plan:
    """One decision in the making: drafts of the rows it changes, then one WriteItem."""

    item: WriteItem = field(default_factory=WriteItem)
    studies: dict[str, tuple[StudyRow, StudyRow]] = field(default_factory=dict)
    orders: dict[str, tuple[OrderRow | None, OrderRow, dict[str, Any], list[tuple[str, str]]]] = field(
        default_factory=dict
    )
    message_id: str | None = None
    emitted: int = 0
    duplicate: bool = False

    def study(self, row: StudyRow) -> StudyRow:
        return self.studies[row.key][1] if row.key in self.studies else row

    def set_study(self, before: StudyRow, after: StudyRow) -> None:
        orig = self.studies[before.key][0] if before.key in self.studies else before
        self.studies[before.key] = (orig, after)


@register("source", "correlation")
class Correlator(SweptStage):
    label = "correlation"
    Config = CorrelationConfig

    def __init__(self, config: CorrelationConfig, ctx: ComponentContext) -> None:
        self.config, self.ctx = config, ctx
        self.channel = ctx.channel
        self.actor = f"service:correlation/{ctx.channel}"
        self._lock = asyncio.Lock()
        self._sinks: list[Sink] = []
        self._sweeper: Sweeper | None = None
        self.rt: Runtime | None = None
        self.destinations: list[str] = []
        self.wake: Callable[[], None] = lambda: None
        self.leases: Any = None
        self.late_series: Callable[[str], str] = lambda channel: "retrigger"

    def bind(
        self,
        runtime: Runtime,
        destinations: list[str],
        wake: Callable[[], None],
        leases: Any,
        late_series: Callable[[str], str],
    ) -> None:
        """Called by the engine: built-in stages work on the store directly, unlike connectors."""
        self.rt, self.destinations, self.wake, self.leases = runtime, destinations, wake, leases
        self.late_series = late_series
        self.repo = Repo(runtime.db)

    async def sweep_once(self) -> int:
        """Fire every timer that has run out; returns how many were handled."""
        assert self.rt is not None
        due = await asyncio.to_thread(self.repo.due, utcnow())
        for kind, key in due:
            await self._apply(lambda plan, k=kind, x=key: self._on_timer(plan, k, x))
        return len(due)

    # -- events ---------------------------------------------------------------------------------

    async def receive(self, inbound: Inbound) -> Outcome:
        """A record from a topic: stored (sealed) and applied in one transaction."""
        try:
            plan = await self._apply(lambda plan: self._on_event(plan, inbound))
        except Exception as exc:  # noqa: BLE001 - the publisher keeps the record and retries
            log.error("correlation %s: event not applied: %s", self.channel, type(exc).__name__)
            return Outcome("unavailable", problem=Problem("correlation could not store the event; retry later"))
        return Outcome("duplicate" if plan.duplicate else "accepted", message_id=plan.message_id)

    async def _apply(self, decide: Callable[[Plan], None]) -> Plan:
        assert self.rt is not None
        async with self._lock:
            for attempt in range(ATTEMPTS):
                plan = Plan()
                await asyncio.to_thread(self._decide, plan, decide)
                if plan.duplicate:
                    return plan
                try:
                    await self.rt.writer.awrite(plan.item)
                except Exception as exc:
                    if attempt == ATTEMPTS - 1:
                        raise
                    log.info("correlation %s: re-deciding after %s", self.channel, type(exc).__name__)
                    continue
                if plan.emitted:
                    self.wake()
                return plan
        raise AssertionError("unreachable")

    def _decide(self, plan: Plan, decide: Callable[[Plan], None]) -> None:
        decide(plan)
        for before, after in plan.studies.values():
            if after != before:
                plan.item.extend(Repo.save_study(before, after))
        for before, after, _, pairs in plan.orders.values():
            if before is None:
                plan.item.extend(self.repo.new_order(after, pairs))
            elif after != before:
                plan.item.extend(Repo.save_order(before, after))
                if pairs:
                    plan.item.extend(self.repo.order_keys(after.id, pairs))

    def _audit(self, plan: Plan, action: str, record_ids: list[str], outcome: str = "success", **detail: Any) -> None:
        assert self.rt is not None
        plan.item.audit.append(
            self.rt.audit.event(
                action, actor=self.actor, outcome=outcome, record_ids=record_ids,
                detail={"channel": self.channel, **detail},
            )
        )  # fmt: skip

    def _on_event(self, plan: Plan, inbound: Inbound) -> None:
        rt = self.rt
        assert rt is not None
        data = inbound.decoded if isinstance(inbound.decoded, dict) else json.loads(inbound.raw)
        control_idx = rt.index("control_id", f"{self.channel}|{inbound.dedup}") if inbound.dedup else None
        mac = rt.index.content(inbound.raw)
        if control_idx:
            for message_id, earlier in rt.messages.same_control(control_idx, utcnow() - DEDUP_WINDOW):
                if earlier == mac:
                    plan.duplicate, plan.message_id = True, message_id
                    return
        is_record = "fields" in data and "type" in data
        fields = dict(data["fields"]) if is_record else dict(data)
        kind = f"record {data.get('topic') or data.get('type')}" if is_record else f"notification {data.get('event')}"
        indexes = {"control_id": control_idx} if control_idx else {}
        message_id, item = rt.messages.receive(
            self.channel, kind[:64], inbound.raw, status="received", content_mac=mac, indexes=indexes
        )
        plan.item.extend(item)
        plan.message_id = message_id
        self._audit(plan, "message.received", [message_id], peer=inbound.peer, type=kind)
        if is_record and data["type"] == "order":
            self._on_order(plan, fields, message_id)
        elif is_record and data["type"] == "patient":
            self._on_patient(plan, fields, message_id)
        elif not is_record and fields.get("study_uid"):
            self._on_notification(plan, Notification.from_json(json.dumps(fields)))

    # -- orders ---------------------------------------------------------------------------------

    def _order_pairs(self, fields: Mapping[str, Any]) -> list[tuple[str, str]]:
        assert self.rt is not None
        return keys(
            self.rt.index,
            accessions=[str(fields.get("accession") or "")],
            accession_issuer=str(fields.get("accession_issuer") or ""),
            study_uid=str(fields.get("study_uid") or ""),
            placer=str(fields.get("placer_number") or ""),
            filler=str(fields.get("filler_number") or ""),
        )

    def _on_order(self, plan: Plan, fields: dict[str, Any], message_id: str) -> None:
        rt = self.rt
        assert rt is not None
        now, event = utcnow(), fields.get("event")
        accession, placer = fields.get("accession"), fields.get("placer_number")
        if not (accession or placer):
            self._audit(plan, "order.ignored", [message_id], "failure", reason="no accession or placer number")
            return
        okey = rt.index("accession", accession) if accession else rt.index("placer", placer)
        existing = self.repo.order_by_key(okey)
        pairs = self._order_pairs(fields)
        if event == "cancelled":
            if existing is None:
                self._audit(plan, "order.cancelled", [message_id], "failure", reason="unknown order")
                return
            after = existing.but(state="cancelled", expires_at=None, message_id=message_id)
            plan.orders[existing.id] = (existing, after, fields, [])
            self._audit(plan, "order.cancelled", [existing.id, message_id], was=existing.state)
            if existing.state == "ready" and existing.study_key:
                study = self.repo.study(existing.study_key)
                if study is not None:
                    self._emit(plan, "study.cancelled", {"study_id": study.id, "order_id": existing.id}, [study.id])
            for study in self.repo.studies_by_keys(pairs):
                if study.state in ("waiting", "held"):
                    self._evaluate(plan, study, "order-cancelled")
            return
        priority = str(fields.get("priority") or "routine")
        mrn_idx = patient_key(rt.index, str(fields.get("patient_id") or ""))
        if existing is None:
            row = OrderRow(
                id=new_id(), key=okey, state="waiting", priority=priority, mrn_idx=mrn_idx, study_key=None,
                message_id=message_id, expires_at=now + timedelta(seconds=self.config.order_timeout_s), version=0,
                created_at=now, updated_at=now,
            )  # fmt: skip
            plan.orders[row.id] = (None, row, fields, pairs)
            self._audit(plan, "order.registered", [row.id, message_id], event=event, priority=priority)
        else:
            reopen = existing.state in ("cancelled", "expired")
            row = existing.but(
                priority=priority, mrn_idx=mrn_idx, message_id=message_id,
                state="waiting" if reopen else existing.state,
                expires_at=now + timedelta(seconds=self.config.order_timeout_s) if reopen else existing.expires_at,
            )  # fmt: skip
            plan.orders[row.id] = (existing, row, fields, pairs)
            self._audit(plan, "order.updated", [row.id, message_id], event=event, priority=priority)
            if existing.state == "ready" and existing.study_key:
                study = self.repo.study(existing.study_key)
                if study is not None:
                    update = {"study_id": study.id, "order_id": row.id, "priority": priority,
                              "procedure_code": fields.get("procedure_code"),
                              "procedure_text": fields.get("procedure_text")}  # fmt: skip
                    self._emit(plan, "study.updated", update, [study.id, row.id])
                return
        for study in self.repo.studies_by_keys(pairs):
            if study.state in ("waiting", "ready") or (study.state == "held" and study.reason != "patient-mismatch"):
                self._evaluate(plan, study, "order")

    def _on_patient(self, plan: Plan, fields: dict[str, Any], message_id: str) -> None:
        """A40 merge / A47 identifier change: pending orders of the prior id move to the new one."""
        rt = self.rt
        assert rt is not None
        prior, new = fields.get("prior_patient_id"), fields.get("patient_id")
        if fields.get("event") not in ("merged", "identifier_changed") or not prior or not new:
            return
        moved = 0
        for order in self.repo.orders_of_patient(patient_key(rt.index, str(prior))):
            if order.state not in ("waiting", "held"):
                continue
            record = json.loads(rt.messages.read(order.message_id, "raw"))
            record["fields"]["patient_id"] = new
            if fields.get("patient_id_issuer"):
                record["fields"]["patient_id_issuer"] = fields["patient_id_issuer"]
            raw = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
            rekeyed_id, item = rt.messages.receive(self.channel, "record order.rekeyed", raw, status="received")
            plan.item.extend(item)
            after = order.but(mrn_idx=patient_key(rt.index, str(new)), message_id=rekeyed_id,
                              state="waiting" if order.state == "held" else order.state)  # fmt: skip
            plan.orders[order.id] = (order, after, record["fields"], [])
            moved += 1
            if order.study_key:
                study = self.repo.study(order.study_key)
                if study is not None and study.state == "held":
                    self._evaluate(plan, study, "patient")
        self._audit(plan, "order.rekeyed", [message_id], event=fields.get("event"), orders=moved)

    def _on_notification(self, plan: Plan, note: Notification) -> None:
        rt = self.rt
        assert rt is not None
        studies = self.repo.studies(uid_idx=rt.index("study_uid", note.study_uid), limit=10)
        now = utcnow()
        for study in studies:
            current = plan.study(study)
            complete = note.event in ("study.stable", "procedure.completed")
            if complete and current.stable_due and current.stable_due > now:
                plan.set_study(study, current.but(stable_due=now))  # the PACS says it is complete: no need to wait
        self._audit(plan, "study.notified", [s.id for s in studies], source=note.source, event=note.event,
                    held=bool(studies))  # fmt: skip

    # -- timers ---------------------------------------------------------------------------------

    def _on_timer(self, plan: Plan, kind: str, key: str) -> None:
        now = utcnow()
        if kind == "expiry":
            order = self.repo.order(key)
            if order is None or order.expires_at is None or order.expires_at > now:
                return
            if order.state == "waiting":
                plan.orders[order.id] = (order, order.but(state="expired", expires_at=None), {}, [])
                self._audit(plan, "order.expired", [order.id])
            else:
                plan.orders[order.id] = (order, order.but(expires_at=None), {}, [])
            return
        study = self.repo.study(key)
        if study is None:
            return
        if kind == "quiet":
            if study.stable_due is None or study.stable_due > now:
                return
            plan.set_study(study, study.but(stable_due=None))
            self._evaluate(plan, study, "quiet")
        elif kind == "wait":
            if study.wait_due is None or study.wait_due > now:
                return
            plan.set_study(study, study.but(wait_due=None))
            self._evaluate(plan, study, "wait")

    # -- the matcher ----------------------------------------------------------------------------

    def _header(self, study: StudyRow) -> InstanceHeader | None:
        """The study's header: its first instance's, or (that one purged by retention) any other's;
        None when every instance of the study is gone."""
        assert self.rt is not None
        for message_id in [study.header_message, *self.repo.instance_messages(study.key)]:
            try:
                return InstanceHeader.from_dict(json.loads(self.rt.messages.read(message_id, "transformed")))
            except LookupError:
                continue
        return None

    def _candidates(self, plan: Plan, study: StudyRow) -> list[_Candidate]:
        """Orders for this study by the first key kind that finds any (accession, study uid, placer, filler)."""
        assert self.rt is not None
        study_pairs = self.repo.study_keys(study.key)
        for wanted in self.config.keys:
            kind = "accession@issuer" if wanted == "accession" and self.config.accession_issuer else wanted
            pairs = [(k, i) for k, i in study_pairs if k == kind]
            if not pairs:
                continue
            found: dict[str, _Candidate] = {}
            for row in self.repo.orders_by_keys(pairs):
                found[row.id] = _Candidate(row, {})
            for order_id, (_, after, fields, order_pairs) in plan.orders.items():
                if order_id in found or set(order_pairs) & set(pairs):
                    found[order_id] = _Candidate(after, fields)
            for cand in found.values():
                if not cand.fields:
                    record = json.loads(self.rt.messages.read(cand.row.message_id, "raw"))
                    cand.fields = record.get("fields", record)
            if found:
                return sorted(found.values(), key=lambda c: c.row.id)
        return []

    def _missing_accessions(self, study: StudyRow, active: list[_Candidate]) -> int:
        """How many of the study's accession numbers have no active order yet."""
        kind = "accession@issuer" if self.config.accession_issuer else "accession"
        wanted = {i for k, i in self.repo.study_keys(study.key) if k == kind}
        have = {i for c in active for k, i in self._order_pairs(c.fields) if k == kind}
        return len(wanted - have)

    def _evaluate(self, plan: Plan, found: StudyRow, trigger: str) -> None:
        """Decide what a study that is quiet (or just got an order) does: wait, hold, go, or nothing."""
        now = utcnow()
        study = plan.study(found)
        if study.stable_due is not None and study.stable_due > now:
            return  # still receiving: its quiet timer decides
        if study.state in ("held", "cancelled", "dropped") and trigger not in ("quiet", "patient"):
            if not (study.state == "held" and study.reason != "patient-mismatch"):
                return
        content = self.repo.content(study.key)
        header = self._header(study)
        if header is None:  # purged by retention while open: nothing left to correlate
            plan.set_study(found, study.but(state="dropped", reason="purged", stable_due=None, wait_due=None))
            self._audit(plan, "study.dropped", [study.id], reason="purged")
            return
        cands = self._candidates(plan, study)
        active = [c for c in cands if c.row.state not in ("cancelled", "expired")]
        if study.state == "ready" and content.hash == study.triggered_hash:
            self._link_late_orders(plan, study, header, active)
            return
        if study.state == "ready" and self.late_series(study.channel) == "ignore":
            plan.set_study(found, study.but(content_hash=content.hash, instances=content.count))
            self._audit(plan, "study.late_ignored", [study.id], instances=content.count)
            return
        if study.state == "held" and study.reason == "patient-mismatch" and trigger == "quiet" and (
            content.hash == study.content_hash
        ):
            return
        if trigger == "quiet":
            stable = {"study_id": study.id, "study_uid": header.study_uid, "instances": content.count,
                      "content_hash": content.hash}  # fmt: skip
            self._emit(plan, "study.stable", stable, [study.id])
        mismatched = [c for c in active if patient_mismatch(header, c.fields, self.config.patient_check)]
        if mismatched:
            plan.set_study(found, study.but(state="held", reason="patient-mismatch", content_hash=content.hash,
                                            instances=content.count, wait_due=None))  # fmt: skip
            for c in mismatched:
                plan.orders[c.row.id] = self._order_change(plan, c, state="held", study_key=study.key)
            check = self.config.patient_check
            facts = sorted({f for c in mismatched for f in patient_mismatch(header, c.fields, check)})
            self._audit(plan, "correlation.mismatch", [study.id] + [c.row.id for c in mismatched], "failure",
                        facts=facts)  # fmt: skip
            log.warning("correlation %s: study %s held: patient mismatch (%s) with order(s) %s", self.channel,
                        study.id, ",".join(facts), ",".join(c.row.id for c in mismatched))  # fmt: skip
            return
        if not active and cands:
            plan.set_study(found, study.but(state="cancelled", content_hash=content.hash, wait_due=None,
                                            instances=content.count))  # fmt: skip
            self._audit(plan, "study.cancelled", [study.id] + [c.row.id for c in cands], reason="orders cancelled")
            return
        missing = self._missing_accessions(study, active) if active else 1
        policy = self.config.unmatched_study
        if missing and trigger != "wait" and study.state != "ready":
            if policy.wait_s > 0 or not active:
                due = study.wait_due or now + timedelta(seconds=policy.wait_s)
                plan.set_study(found, study.but(state="waiting", wait_due=due, content_hash=content.hash,
                                                instances=content.count))  # fmt: skip
                if study.state != "waiting":
                    self._audit(plan, "study.waiting", [study.id], instances=content.count, orders=len(active))
                if policy.wait_s > 0:
                    return
        if not active and study.state != "ready":
            if policy.then == "hold":
                plan.set_study(found, study.but(state="held", reason="no-order", wait_due=None,
                                                content_hash=content.hash, instances=content.count))  # fmt: skip
                self._audit(plan, "study.held", [study.id], reason="no-order")
                return
            if policy.then == "drop":
                plan.set_study(found, study.but(state="dropped", reason="no-order", wait_due=None,
                                                content_hash=content.hash, instances=content.count))  # fmt: skip
                self._audit(plan, "study.dropped", [study.id], reason="no-order")
                return
        self._ready(plan, found, study, header, content, active, trigger, partial=bool(active) and missing > 0)

    def _ready(self, plan: Plan, found: StudyRow, study: StudyRow, header: InstanceHeader, content: Any,
               active: list[_Candidate], trigger: str, partial: bool) -> None:  # fmt: skip
        if study.state == "ready":
            trigger = "late-series"
        plan.set_study(found, study.but(state="ready", reason=None, wait_due=None, content_hash=content.hash,
                                        triggered_hash=content.hash, instances=content.count))  # fmt: skip
        for c in active:
            plan.orders[c.row.id] = self._order_change(plan, c, state="ready", study_key=study.key, expires_at=None)
        orders = [(c.row.id, c.fields) for c in active]
        fields = ready_fields(study_id=study.id, header=header, content=content, orders=orders, trigger=trigger,
                              partial=partial)  # fmt: skip
        fields["channel"] = study.channel  # the imaging channel the study came in on, for routing rules
        self._emit(plan, "study.ready", fields, [study.id] + [c.row.id for c in active])

    def _link_late_orders(self, plan: Plan, study: StudyRow, header: InstanceHeader, active: list[_Candidate]) -> None:
        """An order that arrives after its study went out: linked to it, never a second inference."""
        for c in active:
            if c.row.state == "ready":
                continue
            if patient_mismatch(header, c.fields, self.config.patient_check):
                plan.orders[c.row.id] = self._order_change(plan, c, state="held", study_key=study.key)
                self._audit(plan, "correlation.mismatch", [study.id, c.row.id], "failure", facts=["late-order"])
                continue
            plan.orders[c.row.id] = self._order_change(plan, c, state="ready", study_key=study.key, expires_at=None)
            link = {"study_id": study.id, "study_uid": header.study_uid, "order_id": c.row.id,
                    "accession": c.fields.get("accession"),
                    "priority": c.fields.get("priority") or "routine"}  # fmt: skip
            self._emit(plan, "study.linked", link, [study.id, c.row.id])

    def _order_change(self, plan: Plan, cand: _Candidate, **changes: Any) -> Any:
        before, _, fields, pairs = plan.orders.get(cand.row.id, (cand.row, cand.row, cand.fields, []))
        return (before, cand.row.but(**changes), fields, pairs)

    def _emit(self, plan: Plan, topic: str, fields: dict[str, Any], record_ids: list[str]) -> None:
        """Queue a record for this channel's destinations in the decision's own transaction."""
        rt = self.rt
        assert rt is not None
        body = json.dumps({"type": "study", "topic": topic, "fields": fields}, sort_keys=True, separators=(",", ":"))
        status = "queued" if self.destinations else "received"
        message_id, item = rt.messages.receive(
            self.channel, f"record {topic}", body.encode(), direction="out", destinations=self.destinations,
            status=status,
        )  # fmt: skip
        plan.item.extend(item)
        plan.emitted += 1
        self._audit(plan, topic, record_ids + [message_id])
