"""Model governance: every declared model version has a state in the store — shadow (results
stored, visible to admins, never clinical), active (clinical output), retired (no new jobs) or
recalled (no new jobs, and every report it produced is withdrawn from the systems it reached).
New versions start in shadow unless their declaration says otherwise. Activation, rollback,
retirement and threshold changes are audited with who, why and the version's evidence link."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine, select, update

from engine.core.clock import utcnow
from engine.inference.models import ModelConfig, Threshold
from engine.store.tables import ModelVersion
from engine.store.writer import WriteItem

State = Literal["shadow", "active", "retired", "recalled"]
_versions = ModelVersion.__table__


@dataclass(frozen=True)
class VersionRow:
    name: str
    version: str
    state: str
    evidence: str | None
    thresholds: dict[str, dict[str, float]]
    running: int
    changed_at: Any
    changed_by: str


def _row(r: Any) -> VersionRow:
    return VersionRow(r.name, r.version, r.state, r.evidence, json.loads(r.thresholds or "{}"), r.running,
                      r.changed_at, r.changed_by)  # fmt: skip


class Registry:
    """Reads go straight to the store; changes go through the writer with their audit entry."""

    def __init__(self, db: Engine, writer: Any, audit: Any) -> None:
        self.db, self.writer, self.audit = db, writer, audit

    def all(self) -> list[VersionRow]:
        with self.db.connect() as conn:
            rows = conn.execute(select(_versions).order_by(_versions.c.name, _versions.c.version)).all()
        return [_row(r) for r in rows]

    def get(self, name: str, version: str) -> VersionRow | None:
        with self.db.connect() as conn:
            r = conn.execute(
                select(_versions).where(_versions.c.name == name, _versions.c.version == version)
            ).first()  # fmt: skip
        return _row(r) if r else None

    def register(self, models: Iterable[ModelConfig], actor: str) -> list[VersionRow]:
        """Add the declared versions the registry has not seen, in their initial state (audited)."""
        added = []
        for model in models:
            if self.get(model.name, model.version) is not None:
                continue
            row = {"name": model.name, "version": model.version, "state": model.initial_state,
                   "evidence": model.evidence, "thresholds": None, "running": 0, "changed_at": utcnow(),
                   "changed_by": actor}  # fmt: skip
            item = WriteItem(statements=[(_insert_missing(self.db.dialect.name), row)])
            item.audit.append(self.audit.event(
                "model.registered", actor=actor, record_ids=[f"{model.name}@{model.version}"],
                detail={"model": model.name, "version": model.version, "state": model.initial_state,
                        "evidence": model.evidence, "external": model.external},
            ))  # fmt: skip
            self.writer.write(item)
            added.append(self.get(model.name, model.version))
        return [a for a in added if a is not None]

    def _change(self, row: VersionRow, action: str, actor: str, reason: str, values: dict[str, Any],
                detail: dict[str, Any]) -> WriteItem:  # fmt: skip
        if not reason.strip():
            raise ValueError("a reason is required")
        values = {"changed_at": utcnow(), "changed_by": actor, **values}
        where = (_versions.c.name == row.name) & (_versions.c.version == row.version)
        stmt = update(_versions).where(where).values(**values)
        item = WriteItem(statements=[(stmt, {})])
        item.audit.append(self.audit.event(
            action, actor=actor, purpose=reason, record_ids=[f"{row.name}@{row.version}"],
            detail={"model": row.name, "version": row.version, "reason": reason,
                    "evidence": values.get("evidence", row.evidence), **detail},
        ))  # fmt: skip
        return item

    def _require(self, name: str, version: str) -> VersionRow:
        row = self.get(name, version)
        if row is None:
            raise LookupError(f"no model {name} version {version} in the registry")
        return row

    def set_state(self, name: str, version: str, state: State, actor: str, reason: str,
                  evidence: str | None = None) -> None:  # fmt: skip
        """Activate (other active versions of the model retire), shadow or retire a version."""
        row = self._require(name, version)
        if state == "active" and not (evidence or row.evidence):
            raise ValueError(f"activating {name} {version} needs a link to its validation evidence (--evidence)")
        values: dict[str, Any] = {"state": state}
        if evidence:
            values["evidence"] = evidence
        actions = {"active": "activated", "shadow": "shadowed", "retired": "retired", "recalled": "recalled"}
        item = self._change(row, f"model.{actions[state]}",
                            actor, reason, values, {"from": row.state, "to": state})  # fmt: skip
        if state == "active":
            for other in self.all():
                if other.name == name and other.version != version and other.state == "active":
                    item.extend(self._change(other, "model.retired", actor, f"superseded by {version}: {reason}",
                                             {"state": "retired"}, {"from": "active", "to": "retired"}))  # fmt: skip
        self.writer.write(item)

    def rollback(self, name: str, to_version: str, actor: str, reason: str) -> None:
        """Back to an earlier version: it becomes active; the active one goes back to shadow."""
        target = self._require(name, to_version)
        item = self._change(target, "model.rolled_back", actor, reason, {"state": "active"},
                            {"from": target.state, "to": "active"})  # fmt: skip
        for other in self.all():
            if other.name == name and other.version != to_version and other.state == "active":
                item.extend(self._change(other, "model.shadowed", actor, f"rolled back to {to_version}: {reason}",
                                         {"state": "shadow"}, {"from": "active", "to": "shadow"}))  # fmt: skip
        self.writer.write(item)

    def set_threshold(self, name: str, version: str, code: str, threshold: Threshold, actor: str, reason: str) -> None:
        """Tune a finding's critical/report thresholds for one version (audited, before and after)."""
        row = self._require(name, version)
        thresholds = dict(row.thresholds)
        before = thresholds.get(code)
        thresholds[code] = threshold.model_dump()
        item = self._change(row, "model.threshold_changed", actor, reason,
                            {"thresholds": json.dumps(thresholds, sort_keys=True)},
                            {"code": code, "from": before, "to": thresholds[code]})  # fmt: skip
        self.writer.write(item)


def effective_thresholds(model: ModelConfig, row: VersionRow | None) -> dict[str, Threshold]:
    """The config's thresholds, overridden per finding code by those changed in the registry."""
    out = dict(model.thresholds)
    for code, values in (row.thresholds if row else {}).items():
        out[code] = Threshold.model_validate(values)
    return out


def _insert_missing(dialect: str) -> Any:
    from engine.store.sql import upsert_insert

    return upsert_insert(dialect, _versions).on_conflict_do_nothing(index_elements=["name", "version"])
