"""Study assembly: each stored DICOM instance joins its study (or series) in the same transaction.

The instance message itself (sealed Part 10 bytes) is stored by the channel; this adds the rows
that make it part of a study: the study upserted with a fresh quiet-period deadline, the instance
(its SOP Instance UID as a blind index, so a re-sent instance replaces itself), and the study's
correlation keys. All are single statements that commute (ON CONFLICT upserts), so instances
arriving on many associations, or on several nodes, never lose an update; `version` is bumped by
each so the correlator's guarded writes see the change.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, bindparam, func, select

from engine.config.schema import StudyAssemblyConfig
from engine.core.clock import utcnow
from engine.core.ids import new_id
from engine.correlation.keys import keys
from engine.dicom import InstanceHeader
from engine.security.blind_index import BlindIndex
from engine.store.sql import upsert_insert
from engine.store.tables import Instance, Study, StudyKey
from engine.store.writer import WriteItem

_studies, _instances, _study_keys = Study.__table__, Instance.__table__, StudyKey.__table__


def _binds(table: Any) -> dict[str, Any]:
    return {c.name: bindparam(f"a_{c.name}", type_=c.type) for c in table.columns}


@lru_cache(maxsize=4)
def _statements(dialect: str) -> tuple[Any, Any, Any]:
    ins = upsert_insert(dialect, _studies).values(_binds(_studies))
    study = ins.on_conflict_do_update(
        index_elements=["key"],
        set_={
            "last_at": ins.excluded.last_at,
            "stable_due": ins.excluded.stable_due,
            "updated_at": ins.excluded.updated_at,
            "version": _studies.c.version + 1,
        },
    )
    ins = upsert_insert(dialect, _instances).values(_binds(_instances))
    instance = ins.on_conflict_do_update(
        index_elements=["study_key", "sop_idx"],
        set_={c: getattr(ins.excluded, c) for c in ("message_id", "sha256", "size", "received_at", "transfer_syntax")},
    )
    key = upsert_insert(dialect, _study_keys).values(_binds(_study_keys)).on_conflict_do_nothing()
    return study, instance, key


def study_key(index: BlindIndex, header: InstanceHeader, group_by: str) -> str:
    return index("series_uid", header.series_uid) if group_by == "series" else index("study_uid", header.study_uid)


def assembly_writes(
    header: InstanceHeader, config: StudyAssemblyConfig, index: BlindIndex, dialect: str, channel: str
) -> Callable[[str], WriteItem]:
    """The rows that add one instance (stored as message `message_id`) to its study."""
    study_stmt, instance_stmt, key_stmt = _statements(dialect)
    skey = study_key(index, header, config.group_by)

    def writes(message_id: str) -> WriteItem:
        now = utcnow()
        study = {
            "key": skey, "id": new_id(), "channel": channel, "study_uid_idx": index("study_uid", header.study_uid),
            "state": "receiving", "reason": None, "instances": 0, "first_at": now, "last_at": now,
            "stable_due": now + timedelta(seconds=config.quiet_s), "wait_due": None, "header_message": message_id,
            "content_hash": None, "triggered_hash": None, "version": 0, "updated_at": now,
        }  # fmt: skip
        instance = {
            "study_key": skey, "sop_idx": index("sop_uid", header.sop_instance_uid),
            "series_idx": index("series_uid", header.series_uid), "message_id": message_id,
            "sop_class": header.sop_class_uid[:64], "modality": header.modality[:16],
            "body_part": header.body_part[:64],
            "transfer_syntax": header.transfer_syntax[:64], "sha256": header.sha256, "size": header.size,
            "received_at": now,
        }  # fmt: skip
        item = WriteItem(statements=[(study_stmt, _prefixed(study)), (instance_stmt, _prefixed(instance))])
        pairs = keys(
            index, accessions=header.accessions, accession_issuer=header.accession_issuer,
            study_uid=header.study_uid, placer=header.placer_number, filler=header.filler_number,
        )  # fmt: skip
        for kind, idx in pairs:
            item.statements.append((key_stmt, {"a_kind": kind, "a_idx": idx, "a_study_key": skey}))
        return item

    return writes


def _prefixed(row: dict[str, Any]) -> dict[str, Any]:
    return {f"a_{k}": v for k, v in row.items()}


def held_instances(engine: Engine, index: BlindIndex) -> Callable[[str], int]:
    """How many instances the engine holds for a Study Instance UID (any channel, any grouping)."""
    query = (
        select(func.count())
        .select_from(_instances.join(_studies, _studies.c.key == _instances.c.study_key))
        .where(_studies.c.study_uid_idx == bindparam("uid"))
    )

    def held(study_uid: str) -> int:
        with engine.connect() as conn:
            return int(conn.execute(query, {"uid": index("study_uid", study_uid)}).scalar() or 0)

    return held
