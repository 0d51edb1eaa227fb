"""Durable inference jobs: one per (study, content, model version), queued in the store.

A job moves queued → running → completed, or back to queued with a later `due_at` after a
retryable failure, or to dead after its last attempt, or to cancelled. Every change is a guarded
WriteItem (the row's `revision`), so two engine nodes never both run or both finish a job: the
loser's write fails with StaleWrite and its work is dropped before anything is recorded. The
per-model concurrency cap is a counter on the model's registry row, raised and lowered in the
same transactions as the job (a guarded `running < cap` update on PostgreSQL and SQLite alike).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, bindparam, select, update

from engine.core.clock import utcnow
from engine.core.errors import PermanentError
from engine.store.sql import upsert_insert
from engine.store.tables import InferenceJob, ModelVersion
from engine.store.writer import WriteItem

_jobs, _versions = InferenceJob.__table__, ModelVersion.__table__
RANK = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}
OPEN = ("queued", "running")


@dataclass(frozen=True)
class JobRow:
    id: str
    study_id: str
    study_uid_idx: str | None
    content_hash: str
    model: str
    model_version: str
    state: str
    priority: int
    attempts: int
    due_at: datetime | None
    holder: str | None
    lease_until: datetime | None
    channel: str
    trigger: str
    request_message: str
    result_message: str | None
    clinical: bool | None
    input_digest: str | None
    output_digest: str | None
    error: str | None
    revision: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    def but(self, **changes: Any) -> JobRow:
        return replace(self, **changes)


_COLS = [f.name for f in fields(JobRow)]
_FIXED = ("id", "study_id", "study_uid_idx", "content_hash", "model", "model_version", "created_at", "channel",
          "trigger", "request_message")  # fmt: skip
_SET = [c for c in _COLS if c not in _FIXED]
_SAVE = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("g_id"), _jobs.c.revision == bindparam("g_revision"))
    .values({c: bindparam(f"s_{c}", type_=_jobs.c[c].type) for c in _SET})
)
_TAKE_SLOT = (
    update(_versions)
    .where(_versions.c.name == bindparam("v_name"), _versions.c.version == bindparam("v_version"),
           _versions.c.running < bindparam("v_cap"))
    .values(running=_versions.c.running + 1)
)  # fmt: skip
_FREE_SLOT = (
    update(_versions)
    .where(_versions.c.name == bindparam("v_name"), _versions.c.version == bindparam("v_version"),
           _versions.c.running > 0)
    .values(running=_versions.c.running - 1)
)  # fmt: skip


@lru_cache(maxsize=4)
def _insert(dialect: str) -> Any:
    binds = {c.name: bindparam(f"j_{c.name}", type_=c.type) for c in _jobs.columns}
    return upsert_insert(dialect, _jobs).values(binds).on_conflict_do_nothing()


def _row(r: Any) -> JobRow:
    return JobRow(**{c: getattr(r, c) for c in _COLS})


def backoff(attempts: int, first_s: float, max_s: float) -> timedelta:
    return timedelta(seconds=min(max_s, first_s * 2 ** max(attempts - 1, 0)))


class Jobs:
    def __init__(self, db: Engine) -> None:
        self.db = db
        self.dialect = db.dialect.name

    # -- reads ----------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRow | None:
        with self.db.connect() as conn:
            r = conn.execute(select(_jobs).where(_jobs.c.id == job_id)).first()
        return _row(r) if r else None

    def of_study(self, study_id: str) -> list[JobRow]:
        with self.db.connect() as conn:
            rows = conn.execute(select(_jobs).where(_jobs.c.study_id == study_id).order_by(_jobs.c.id)).all()
        return [_row(r) for r in rows]

    def identity(self, study_id: str, content_hash: str, model: str, version: str) -> JobRow | None:
        with self.db.connect() as conn:
            r = conn.execute(select(_jobs).where(
                _jobs.c.study_id == study_id, _jobs.c.content_hash == content_hash, _jobs.c.model == model,
                _jobs.c.model_version == version,
            )).first()  # fmt: skip
        return _row(r) if r else None

    def list(self, *, state: str | None = None, limit: int = 50) -> list[JobRow]:
        query = select(_jobs).order_by(_jobs.c.id.desc()).limit(limit)
        if state:
            query = query.where(_jobs.c.state == state)
        with self.db.connect() as conn:
            return [_row(r) for r in conn.execute(query).all()]

    def due(self, now: datetime, limit: int) -> list[JobRow]:
        """Queued jobs whose time has come, most urgent first, then oldest."""
        with self.db.connect() as conn:
            rows = conn.execute(
                select(_jobs).where(_jobs.c.due_at <= now, _jobs.c.state == "queued")
                .order_by(_jobs.c.priority, _jobs.c.due_at, _jobs.c.id).limit(limit)
            ).all()  # fmt: skip
        return [_row(r) for r in rows]

    def running(self) -> list[JobRow]:
        with self.db.connect() as conn:
            return [_row(r) for r in conn.execute(select(_jobs).where(_jobs.c.state == "running")).all()]

    def running_counts(self) -> dict[tuple[str, str], int]:
        with self.db.connect() as conn:
            rows = conn.execute(select(_versions.c.name, _versions.c.version, _versions.c.running)).all()
        return {(r.name, r.version): r.running for r in rows}

    # -- writes ---------------------------------------------------------------------------------

    def new(self, row: JobRow) -> WriteItem:
        return WriteItem(statements=[(_insert(self.dialect), {f"j_{c}": getattr(row, c) for c in _COLS})])

    @staticmethod
    def save(old: JobRow, new: JobRow) -> WriteItem:
        params = {f"s_{c}": getattr(new, c) for c in _SET}
        params.update({"g_id": old.id, "g_revision": old.revision, "s_revision": old.revision + 1,
                       "s_updated_at": utcnow()})  # fmt: skip
        return WriteItem(guards=[(_SAVE, params)])

    @staticmethod
    def take_slot(job: JobRow, cap: int) -> WriteItem:
        """Raise the model's running count, failing (StaleWrite) when it is at its cap."""
        return WriteItem(guards=[(_TAKE_SLOT, {"v_name": job.model, "v_version": job.model_version, "v_cap": cap})])

    @staticmethod
    def free_slot(job: JobRow) -> WriteItem:
        return WriteItem(statements=[(_FREE_SLOT, {"v_name": job.model, "v_version": job.model_version})])

    def reconcile(self) -> None:
        """Set each model's running count to its running jobs (after a crash left a count behind).
        The registry rows are locked first: a concurrent claim (which updates them too) waits."""
        with self.db.begin() as conn:
            versions = conn.execute(
                select(_versions.c.name, _versions.c.version, _versions.c.running).with_for_update()
            ).all()  # fmt: skip
            counts: dict[tuple[str, str], int] = {}
            for r in conn.execute(select(_jobs.c.model, _jobs.c.model_version).where(_jobs.c.state == "running")):
                counts[(r.model, r.model_version)] = counts.get((r.model, r.model_version), 0) + 1
            for r in versions:
                actual = counts.get((r.name, r.version), 0)
                if r.running != actual:
                    conn.execute(update(_versions).where(_versions.c.name == r.name, _versions.c.version == r.version)
                                 .values(running=actual))  # fmt: skip


class JobStateConflict(PermanentError):
    """An operator asked for a change the job's state does not allow (cancel a finished job, ...)."""


def operator_change(jobs: Jobs, job: JobRow, to: str, *, now: datetime, event: Any, actor: str, reason: str,
                    peer: str | None = None) -> WriteItem:  # fmt: skip
    """An operator's cancel (to "cancelled") or retry (to "queued") of a job, with its audit entry:
    what `radbridge jobs cancel|retry` and the web's job actions write. The reason is free text: it
    goes into the sealed detail. Raises JobStateConflict; the write may raise StaleWrite."""
    if to == "cancelled" and job.state not in ("queued", "running"):
        raise JobStateConflict(f"job {job.id} is {job.state}: only queued or running jobs can be cancelled")
    if to == "queued" and job.state not in ("dead", "cancelled"):
        raise JobStateConflict(f"job {job.id} is {job.state}: only dead or cancelled jobs can be retried")
    again = to == "queued"
    after = job.but(state=to, due_at=now if again else None, holder=None, lease_until=None,
                    attempts=0 if again else job.attempts, finished_at=None if again else now)  # fmt: skip
    item = jobs.save(job, after)
    if job.state == "running":
        item.extend(jobs.free_slot(job))
    item.audit.append(event(
        "inference.cancelled" if to == "cancelled" else "inference.retried", actor=actor, peer=peer,
        purpose="operations", record_ids=[job.id, job.study_id],
        detail={"model": job.model, "version": job.model_version, "was": job.state, "reason": reason},
    ))  # fmt: skip
    return item
