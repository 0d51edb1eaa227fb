"""Radiologists' feedback on AI findings, and the post-market monitoring built on it.

A verdict (agree, disagree, not applicable) is given on one finding code of one AI report. Each user
has one current verdict per (report, finding): a change replaces the row (an upsert on the unique
identity, so two engine nodes racing end with one row), and every verdict given is in the audit log
(`finding.feedback`). There is no free-text comment: a comment could name a patient, and nothing here
is sealed, so none is taken.

Monitoring, per model version and ISO week: studies processed (completed jobs), how many results had
at least one finding and how many a critical one (read from the sealed results, cached per job, as a
completed job's result never changes), and the feedback given that week with its agreement rate
agree / (agree + disagree).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, get_args

from sqlalchemy import Engine, bindparam, select

from engine.core.ids import new_id
from engine.store.sql import upsert_insert
from engine.store.tables import FindingFeedback, InferenceJob
from engine.store.writer import WriteItem

Verdict = Literal["agree", "disagree", "not_applicable"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
_feedback, _jobs = FindingFeedback.__table__, InferenceJob.__table__
_COLS = [c.name for c in _feedback.columns]
_IDENTITY = ["report_id", "code", "username"]


@lru_cache(maxsize=4)
def _upsert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (report, code, user) DO UPDATE: the one current verdict."""
    stmt = upsert_insert(dialect, _feedback).values({c: bindparam(f"f_{c}", type_=_feedback.c[c].type) for c in _COLS})
    changed = {c: stmt.excluded[c] for c in _COLS if c not in ("id", *_IDENTITY)}
    return stmt.on_conflict_do_update(index_elements=_IDENTITY, set_=changed)


@dataclass(frozen=True)
class FeedbackRow:
    id: str
    report_id: str
    study_id: str
    job_id: str
    model: str
    version: str
    code: str
    verdict: str
    username: str
    at: datetime


class Feedback:
    def __init__(self, db: Engine) -> None:
        self.db = db

    def of_studies(self, study_ids: list[str], username: str | None = None) -> list[FeedbackRow]:
        """Current verdicts on these studies' findings (one user's, or everyone's)."""
        found: list[FeedbackRow] = []
        with self.db.connect() as conn:
            for start in range(0, len(study_ids), 500):
                query = select(_feedback).where(_feedback.c.study_id.in_(study_ids[start : start + 500]))
                if username is not None:
                    query = query.where(_feedback.c.username == username)
                found += [FeedbackRow(**r._mapping) for r in conn.execute(query)]
        return sorted(found, key=lambda f: (f.study_id, f.report_id, f.code, f.username))

    def since(self, since: datetime) -> list[FeedbackRow]:
        with self.db.connect() as conn:
            rows = conn.execute(select(_feedback).where(_feedback.c.at >= since).order_by(_feedback.c.at))
            return [FeedbackRow(**r._mapping) for r in rows]

    def give(self, row: FeedbackRow) -> WriteItem:
        """The rows for one verdict (the caller adds its audit entry and writes the item)."""
        if row.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        params = {f"f_{c}": getattr(row, c) for c in _COLS}
        return WriteItem(statements=[(_upsert(self.db.dialect.name), params)])

    @staticmethod
    def row(report_id: str, study_id: str, job_id: str, model: str, version: str, code: str, verdict: str,
            username: str, at: datetime) -> FeedbackRow:  # fmt: skip
        return FeedbackRow(new_id(), report_id, study_id, job_id, model, version, code, verdict, username, at)


# -- monitoring ------------------------------------------------------------------------------------


def iso_week(when: datetime) -> str:
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass
class Week:
    """One model version's figures for one ISO week."""

    week: str
    processed: int = 0
    positive: int = 0
    critical: int = 0
    feedback: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))

    @property
    def positive_rate(self) -> float | None:
        return self.positive / self.processed if self.processed else None

    @property
    def critical_rate(self) -> float | None:
        return self.critical / self.processed if self.processed else None

    @property
    def agreement(self) -> float | None:
        """agree / (agree + disagree); None while nobody agreed or disagreed."""
        decided = self.feedback["agree"] + self.feedback["disagree"]
        return self.feedback["agree"] / decided if decided else None

    def add(self, other: Week) -> None:
        self.processed += other.processed
        self.positive += other.positive
        self.critical += other.critical
        for verdict, count in other.feedback.items():
            self.feedback[verdict] += count

    def as_dict(self) -> dict[str, Any]:
        return {"week": self.week, "processed": self.processed, "positive": self.positive, "critical": self.critical,
                "positive_rate": self.positive_rate, "critical_rate": self.critical_rate,
                "feedback": dict(self.feedback), "agreement": self.agreement}  # fmt: skip


class ResultFacts:
    """(findings, critical) of a completed job's result, read once from the sealed record and then
    kept (a few bytes per job, bounded): counts only, never anything of the patient."""

    def __init__(self, messages: Any, size: int = 100_000) -> None:
        self.messages = messages
        self._cache: OrderedDict[str, tuple[int, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def __call__(self, job_id: str, result_message: str | None) -> tuple[int, bool]:
        with self._lock:
            if job_id in self._cache:
                return self._cache[job_id]
        facts = (0, False)
        if result_message:
            try:
                fields = json.loads(self.messages.read(result_message, "raw"))["fields"]
                facts = (len(fields["result"].get("findings") or []), bool(fields.get("critical")))
            except (LookupError, KeyError, ValueError):  # purged by retention, or not a result record
                pass
        with self._lock:
            self._cache[job_id] = facts
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return facts


def monitoring(db: Engine, facts: ResultFacts, since: datetime) -> dict[tuple[str, str], dict[str, Week]]:
    """(model, version) -> ISO week -> figures, for jobs completed and feedback given since `since`."""
    out: dict[tuple[str, str], dict[str, Week]] = {}

    def week(model: str, version: str, when: datetime) -> Week:
        label = iso_week(when)
        return out.setdefault((model, version), {}).setdefault(label, Week(label))

    query = select(_jobs.c.id, _jobs.c.model, _jobs.c.model_version, _jobs.c.finished_at, _jobs.c.result_message).where(
        _jobs.c.state == "completed", _jobs.c.finished_at >= since
    )
    with db.connect() as conn:
        jobs = conn.execute(query).all()
    for job in jobs:
        findings, critical = facts(job.id, job.result_message)
        w = week(job.model, job.model_version, job.finished_at)
        w.processed += 1
        w.positive += findings > 0
        w.critical += critical
    for given in Feedback(db).since(since):
        week(given.model, given.version, given.at).feedback[given.verdict] += 1
    return out
