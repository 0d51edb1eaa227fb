"""The AI reports table: one row per (study, model), its current revision and status."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, select, update

from engine.core.clock import utcnow
from engine.store.tables import AiReport, ModelVersion, PriorityRaise
from engine.store.writer import WriteItem

_reports, _raises, _versions = AiReport.__table__, PriorityRaise.__table__, ModelVersion.__table__


@dataclass(frozen=True)
class ReportRow:
    report_id: str
    study_id: str
    model: str
    version: str
    job_id: str
    status: str
    revision: int
    message_id: str
    critical: bool
    final_message: str | None
    final_status: str | None
    row_version: int
    created_at: datetime
    updated_at: datetime

    def but(self, **changes: Any) -> ReportRow:
        return replace(self, **changes)


_COLS = [f.name for f in fields(ReportRow)]
_SET = [c for c in _COLS if c not in ("report_id", "study_id", "model", "created_at")]
_SAVE = (
    update(_reports)
    .where(_reports.c.report_id == bindparam("g_id"), _reports.c.row_version == bindparam("g_version"))
    .values({c: bindparam(f"s_{c}", type_=_reports.c[c].type) for c in _SET})
)


class Reports:
    def __init__(self, db: Engine) -> None:
        self.db = db

    def get(self, report_id: str) -> ReportRow | None:
        with self.db.connect() as conn:
            r = conn.execute(select(_reports).where(_reports.c.report_id == report_id)).first()
        return ReportRow(**r._mapping) if r else None

    def of_study(self, study_id: str) -> list[ReportRow]:
        with self.db.connect() as conn:
            rows = conn.execute(select(_reports).where(_reports.c.study_id == study_id).order_by(_reports.c.report_id))
        return [ReportRow(**r._mapping) for r in rows]

    def of_recalled(self, limit: int = 100) -> list[ReportRow]:
        """Reports not yet withdrawn whose model version has been recalled."""
        same = (_versions.c.name == _reports.c.model) & (_versions.c.version == _reports.c.version)
        join = _reports.join(_versions, same)
        with self.db.connect() as conn:
            rows = conn.execute(
                select(_reports).select_from(join)
                .where(_versions.c.state == "recalled", _reports.c.status != "withdrawn").limit(limit)
            )  # fmt: skip
            return [ReportRow(**r._mapping) for r in rows]

    def raised(self, study_id: str) -> dict[str, str]:
        """Levels already raised for a study -> their update ids."""
        with self.db.connect() as conn:
            rows = conn.execute(select(_raises.c.level, _raises.c.update_id).where(_raises.c.study_id == study_id))
            return {r.level: r.update_id for r in rows}

    @staticmethod
    def new(row: ReportRow) -> WriteItem:
        return WriteItem(inserts=[(_reports, {c: getattr(row, c) for c in _COLS})])

    @staticmethod
    def save(old: ReportRow, new: ReportRow) -> WriteItem:
        params = {f"s_{c}": getattr(new, c) for c in _SET}
        params.update({"g_id": old.report_id, "g_version": old.row_version, "s_row_version": old.row_version + 1,
                       "s_updated_at": utcnow()})  # fmt: skip
        return WriteItem(guards=[(_SAVE, params)])

    @staticmethod
    def raise_row(study_id: str, level: str, update_id: str, job_id: str, message_id: str) -> WriteItem:
        row = {"study_id": study_id, "level": level, "update_id": update_id, "job_id": job_id,
               "message_id": message_id, "raised_at": utcnow()}  # fmt: skip
        return WriteItem(inserts=[(_raises, row)])
