"""A job's input: the study's stored instances, read back from the vault (each checked against
the SHA-256 recorded when it arrived), de-identified when the model is outside the hospital."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from engine.core.errors import IntegrityError, PermanentError
from engine.store.tables import Instance, Study

_studies, _instances = Study.__table__, Instance.__table__


@dataclass
class JobInput:
    instances: list[bytes]
    digest: str  # SHA-256 over the SHA-256 of each instance sent, in order: what the model saw
    method: str = "identified"  # or the de-identification method: safe-harbor / limited-data-set
    crosswalk: dict[str, str] = field(default_factory=dict)  # pseudonym UID -> original, sealed with the result
    blocked: int = 0  # instances held back (burned-in text that could not be cleaned)


def stored_instances(db: Engine, read: Callable[[str, str], bytes], study_id: str) -> list[bytes]:
    """The Part 10 bytes of every instance of a study, in arrival order."""
    with db.connect() as conn:
        key = conn.execute(select(_studies.c.key).where(_studies.c.id == study_id)).scalar()
        if key is None:
            raise PermanentError(f"study {study_id} is not in the store")
        rows = conn.execute(
            select(_instances.c.message_id, _instances.c.sha256)
            .where(_instances.c.study_key == key).order_by(_instances.c.received_at, _instances.c.message_id)
        ).all()  # fmt: skip
    out = []
    for row in rows:
        data = read(row.message_id, "raw")
        if hashlib.sha256(data).hexdigest() != row.sha256:
            raise IntegrityError(f"instance message {row.message_id} does not match its recorded SHA-256")
        out.append(data)
    if not out:
        raise PermanentError(f"study {study_id} has no stored instances")
    return out


def digest(instances: list[bytes]) -> str:
    outer = hashlib.sha256()
    for data in instances:
        outer.update(hashlib.sha256(data).digest())
    return outer.hexdigest()
