"""The reading worklist: studies ready for reading, most urgent first, with what the AI said about them.

A study is on the worklist while it is `ready` (correlated, or released without an order), at least
one of its orders still stands (or it has none), no final report has come back for it (OBR-25 F or C
linked to one of its AI reports) and its last image arrived within the window (14 days by default).

The ordering rule, in full:
1. Effective priority, stat > asap > urgent > routine: the higher of the highest priority among the
   study's standing orders (routine without an order) and the highest level the AI raised it to
   (`priority_raises`), a raise counting only while the AI report of the model that raised it is
   not withdrawn.
2. Then the longest waiting first: waiting since the study's last image arrived (the quiet period
   after it is what made the study complete).
3. Then the study id (stable order for equal times).

Each row says why it has its priority: the AI finding (display, score, model and version) when a
raise is at the effective level, else "ordered <priority>". Patient identity is never in a row;
`identity()` reads it (for a deliberate, audited reveal). What the rows read from sealed records
(procedures, findings) is not identity, and is cached per message id: a stored record never changes.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from engine.core.result import PRIORITY_ORDER
from engine.outputs.feedback import Feedback
from engine.store.tables import AiReport, FindingFeedback, InferenceJob, Instance, Order, PriorityRaise, Study

_studies, _orders, _instances = Study.__table__, Order.__table__, Instance.__table__
_reports, _raises, _jobs, _feedback = AiReport.__table__, PriorityRaise.__table__, InferenceJob.__table__, \
    FindingFeedback.__table__  # fmt: skip
STANDING = ("waiting", "matched", "ready", "held")
FINAL = ("F", "C")  # a final (or corrected final) report from the RIS: the study has been read
WINDOW = timedelta(days=14)
CHUNK = 500


def rank(priority: str | None) -> int:
    return PRIORITY_ORDER.index(priority) if priority in PRIORITY_ORDER else 0  # type: ignore[arg-type]


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@dataclass(frozen=True)
class FindingView:
    system: str
    code: str
    display: str
    score: float
    critical: bool
    feedback: str | None = None  # the caller's own verdict, if given
    feedback_earlier: bool = False  # given on an earlier revision of the report (another job)


@dataclass(frozen=True)
class ReportView:
    report_id: str
    model: str
    version: str
    job_id: str
    status: str
    revision: int
    critical: bool
    findings: tuple[FindingView, ...]


@dataclass(frozen=True)
class Why:
    source: str  # "ai" or "order"
    text: str
    model: str | None = None
    version: str | None = None
    code: str | None = None
    display: str | None = None
    score: float | None = None


@dataclass(frozen=True)
class Row:
    study_id: str
    priority: str
    ordered_priority: str
    why: Why
    modality: str
    procedure_code: str
    procedure_text: str
    complete_at: datetime
    orders: tuple[str, ...]
    reports: tuple[ReportView, ...] = field(default_factory=tuple)

    @property
    def ai_status(self) -> str:
        """none, preliminary, corrected or withdrawn: the standing reports' status, withdrawn only when all are."""
        standing = [r.status for r in self.reports if r.status != "withdrawn"]
        if not self.reports:
            return "none"
        if not standing:
            return "withdrawn"
        return "corrected" if "corrected" in standing else "preliminary"

    def waiting_s(self, now: datetime) -> int:
        return max(0, int((now - self.complete_at).total_seconds()))


@dataclass(frozen=True)
class Identity:
    """Who the study is of: only for a deliberate, audited reveal."""

    patient_name: str
    patient_id: str
    accessions: tuple[str, ...]


class _Cache:
    """A small bounded map from an immutable record (message or job id) to facts read from it."""

    def __init__(self, size: int = 20_000) -> None:
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = load()
        with self._lock:
            self._data[key] = value
            if len(self._data) > self._size:
                self._data.popitem(last=False)
        return value


def _in_chunks(conn: Any, query: Callable[[list[str]], Any], ids: list[str]) -> list[Any]:
    out: list[Any] = []
    for start in range(0, len(ids), CHUNK):
        out += conn.execute(query(ids[start : start + CHUNK])).all()
    return out


def version(db: Engine) -> tuple[Any, ...]:
    """A cheap fingerprint of everything the worklist shows: counts and latest change times of ready
    studies, matched orders, AI reports, priority raises and feedback (one round trip). Any engine
    node sharing the store sees the same value, so a change made on one is seen by all."""
    parts = [
        select(func.count()).select_from(_studies).where(_studies.c.state == "ready"),
        select(func.max(_studies.c.updated_at)).where(_studies.c.state == "ready"),
        select(func.max(_orders.c.updated_at)).where(_orders.c.study_key.is_not(None)),
        select(func.count()).select_from(_reports),
        select(func.max(_reports.c.updated_at)),
        select(func.count()).select_from(_raises),
        select(func.count()).select_from(_feedback),
        select(func.max(_feedback.c.at)),
    ]
    with db.connect() as conn:
        row = conn.execute(select(*(p.scalar_subquery() for p in parts))).one()
    return tuple(str(v) for v in row)


class Worklist:
    def __init__(self, db: Engine, messages: Any) -> None:
        self.db, self.messages = db, messages
        self._facts = _Cache()

    # -- sealed records, read once ----------------------------------------------------------------

    def _record(self, message_id: str, part: str = "raw") -> dict[str, Any]:
        try:
            return json.loads(self.messages.read(message_id, part))  # type: ignore[no-any-return]
        except (LookupError, ValueError):  # purged by retention: show what the rows say
            return {}

    def _order_facts(self, message_id: str) -> tuple[str, str, str]:
        """(procedure code, procedure text, modality) of an order record."""

        def load() -> tuple[str, str, str]:
            fields = self._record(message_id).get("fields") or {}
            return (str(fields.get("procedure_code") or ""), str(fields.get("procedure_text") or ""),
                    str(fields.get("modality") or ""))  # fmt: skip

        return self._facts.get(f"order:{message_id}", load)  # type: ignore[no-any-return]

    def _header_text(self, message_id: str) -> str:
        """The study description of an instance header (a study without an order)."""
        return self._facts.get(  # type: ignore[no-any-return]
            f"header:{message_id}", lambda: str(self._record(message_id, "transformed").get("study_description") or "")
        )

    def findings(self, message_id: str) -> tuple[FindingView, ...]:
        """The findings of a result record (an AI report's revision, a job's result)."""

        def load() -> tuple[FindingView, ...]:
            fields = self._record(message_id).get("fields") or {}
            found = (fields.get("result") or {}).get("findings") or []
            return tuple(FindingView(str(f.get("system") or ""), str(f["code"]), str(f.get("display") or f["code"]),
                                     float(f.get("score") or 0.0), bool(f.get("critical"))) for f in found)  # fmt: skip

        return self._facts.get(f"findings:{message_id}", load)  # type: ignore[no-any-return]

    # -- the worklist -----------------------------------------------------------------------------

    def rows(self, now: datetime, *, username: str | None = None, window: timedelta = WINDOW,
             limit: int = 200) -> list[Row]:  # fmt: skip
        """The worklist, most urgent first (the rule in the module docstring), with `username`'s feedback."""
        with self.db.connect() as conn:
            studies = conn.execute(
                select(_studies).where(_studies.c.state == "ready", _studies.c.last_at >= now - window)
            ).all()  # fmt: skip
            keys = [s.key for s in studies]
            ids = [s.id for s in studies]
            orders = _in_chunks(conn, lambda chunk: select(_orders).where(_orders.c.study_key.in_(chunk)), keys)
            modalities = _in_chunks(conn, lambda chunk: select(_instances.c.study_key, _instances.c.modality)
                                    .where(_instances.c.study_key.in_(chunk)).distinct(), keys)  # fmt: skip
            reports = _in_chunks(conn, lambda chunk: select(_reports).where(_reports.c.study_id.in_(chunk)), ids)
            raises = _in_chunks(conn, lambda chunk: select(_raises.c.study_id, _raises.c.level, _raises.c.job_id,
                                                           _jobs.c.model, _jobs.c.model_version,
                                                           _jobs.c.result_message)
                                .select_from(_raises.outerjoin(_jobs, _jobs.c.id == _raises.c.job_id))
                                .where(_raises.c.study_id.in_(chunk)), ids)  # fmt: skip
        mine = Feedback(self.db).of_studies(ids, username) if username else []
        verdicts = {(f.report_id, f.code): f for f in mine}
        by_key: dict[str, list[Any]] = {}
        for o in orders:
            by_key.setdefault(o.study_key, []).append(o)
        mods: dict[str, set[str]] = {}
        for m in modalities:
            if m.modality:
                mods.setdefault(m.study_key, set()).add(m.modality)
        by_study: dict[str, list[Any]] = {}
        for r in reports:
            by_study.setdefault(r.study_id, []).append(r)
        raised: dict[str, list[Any]] = {}
        for r in raises:
            raised.setdefault(r.study_id, []).append(r)
        out = []
        for s in studies:
            its_orders = sorted(by_key.get(s.key, []), key=lambda o: o.id)
            standing = [o for o in its_orders if o.state in STANDING]
            its_reports = sorted(by_study.get(s.id, []), key=lambda r: r.report_id)
            if its_orders and not standing:
                continue  # every order cancelled or expired
            if any(r.final_status in FINAL for r in its_reports):
                continue  # read: the radiologist's final report came back
            out.append(self._row(s, standing, mods.get(s.key, set()), its_reports, raised.get(s.id, []), verdicts))
        out.sort(key=lambda r: (-rank(r.priority), r.complete_at, r.study_id))
        return out[:limit]

    def _row(self, study: Any, standing: list[Any], modalities: set[str], reports: list[Any], raises: list[Any],
             verdicts: dict[tuple[str, str], Any]) -> Row:  # fmt: skip
        ordered = max((o.priority for o in standing), key=rank, default="routine")
        withdrawn = {r.model for r in reports if r.status == "withdrawn"}
        valid = [r for r in raises if r.model not in withdrawn]
        ai_level = max((r.level for r in valid), key=rank, default=None)
        effective = ai_level if ai_level is not None and rank(ai_level) >= rank(ordered) else ordered
        why = Why("order", f"ordered {ordered}")
        top = [r for r in valid if r.level == effective]
        if top:
            raise_ = top[0]
            found = self.findings(raise_.result_message) if raise_.result_message else ()
            lead = max(found, key=lambda f: (f.critical, f.score), default=None)
            model, ver = raise_.model or "?", raise_.model_version or "?"
            text = f"AI {model} {ver}: " + (f"{lead.display} (score {lead.score:.2f})" if lead else "finding")
            why = Why("ai", text, model, ver, lead.code if lead else None, lead.display if lead else None,
                      lead.score if lead else None)  # fmt: skip
        code, text, ordered_modality = self._order_facts(standing[0].message_id) if standing else ("", "", "")
        if not standing:
            text = self._header_text(study.header_message)
        views = []
        for r in reports:
            findings = []
            for f in self.findings(r.message_id):
                given = verdicts.get((r.report_id, f.code))
                findings.append(FindingView(f.system, f.code, f.display, f.score, f.critical,
                                            given.verdict if given else None,
                                            bool(given and given.job_id != r.job_id)))  # fmt: skip
            views.append(ReportView(r.report_id, r.model, r.version, r.job_id, r.status, r.revision, r.critical,
                                    tuple(findings)))  # fmt: skip
        return Row(
            study_id=study.id, priority=effective, ordered_priority=ordered, why=why,
            modality=", ".join(sorted(modalities)) or ordered_modality, procedure_code=code, procedure_text=text,
            complete_at=utc(study.last_at), orders=tuple(o.id for o in standing), reports=tuple(views),
        )  # fmt: skip

    # -- one study --------------------------------------------------------------------------------

    def report(self, report_id: str) -> Any:
        with self.db.connect() as conn:
            return conn.execute(select(_reports).where(_reports.c.report_id == report_id)).first()

    def identity(self, study_id: str) -> Identity | None:
        """The patient a study is of, from its orders (else its images' header); None if no such study."""
        with self.db.connect() as conn:
            study = conn.execute(select(_studies).where(_studies.c.id == study_id)).first()
            if study is None:
                return None
            orders = conn.execute(select(_orders).where(_orders.c.study_key == study.key).order_by(_orders.c.id)).all()
        header = self._record(study.header_message, "transformed")
        chosen = [o for o in orders if o.state in STANDING] or orders
        fields = [self._record(o.message_id).get("fields") or {} for o in chosen]
        first = fields[0] if fields else {}
        accessions = _unique([str(f.get("accession") or "") for f in fields] + list(header.get("accessions") or []))
        return Identity(
            patient_name=str(first.get("patient_name") or header.get("patient_name") or ""),
            patient_id=str(first.get("patient_id") or header.get("patient_id") or ""),
            accessions=tuple(accessions),
        )


def _unique(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        if v:
            seen.setdefault(v, None)
    return list(seen)
