"""A PACS notification, whichever way it came (HTTP webhook, Orthanc change feed, IAN, MPPS):
the one shape that notification sources emit (Inbound kind "notification") and correlation reads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Event = Literal["study.available", "study.stable", "instances.available", "procedure.completed"]


@dataclass(frozen=True)
class Notification:
    event: Event
    study_uid: str
    source: str  # "webhook", "orthanc-changes", "ian", "mpps"
    accessions: tuple[str, ...] = ()
    patient_id: str = ""
    pacs_id: str = ""  # the PACS's own id for the study (Orthanc's study id), for retrieval
    sop_instance_uids: tuple[str, ...] = field(default_factory=tuple)  # IAN lists what is available

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Notification:
        data: dict[str, Any] = json.loads(raw)
        data["accessions"] = tuple(data.get("accessions") or ())
        data["sop_instance_uids"] = tuple(data.get("sop_instance_uids") or ())
        return cls(**data)
