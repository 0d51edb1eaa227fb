"""What a correlation channel file may say (source kind `correlation`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KeyKind = Literal["accession", "study_uid", "placer", "filler"]
PatientField = Literal["patient_id", "issuer", "birth_date", "sex"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UnmatchedStudy(_Strict):
    wait_s: float = Field(900, ge=0, description="How long a stable study waits for its order(s).")
    then: Literal["proceed", "hold", "drop"] = Field(
        "proceed",
        description="After the wait: 'proceed' emits study.ready without (or with only the orders found so far), "
        "'hold' keeps it for an operator, 'drop' drops it (audited).",
    )


class CorrelationConfig(_Strict):
    topics: list[str] = Field(
        default_factory=lambda: ["order.*", "patient.*", "study.notified"],
        min_length=1,
        description="Internal topics read: order records (order.accepted / changed / cancelled), patient events "
        "(patient.merged / identifier_changed) and PACS notifications (study.notified).",
    )
    keys: list[KeyKind] = Field(
        default_factory=lambda: ["accession", "study_uid", "placer", "filler"],
        min_length=1,
        description="Keys an order and a study are matched by, in order: the first kind that finds an order wins.",
    )
    accession_issuer: bool = Field(
        False, description="Accession numbers are unique only per issuer: match accession and issuer together."
    )
    patient_check: list[PatientField] = Field(
        default_factory=lambda: ["patient_id", "issuer"],
        description="Wrong-patient guard: what must agree between the order and the DICOM header. 'issuer' is "
        "compared where both sides carry one. A mismatch holds the pair, raises an alert and emits nothing.",
    )
    unmatched_study: UnmatchedStudy = Field(
        default_factory=UnmatchedStudy, description="What a stable study without an order does, and when."
    )
    order_timeout_s: float = Field(
        14 * 86400, gt=0, description="An order whose study never arrives expires after this long (audited)."
    )
    sweep_s: float = Field(1.0, gt=0, description="How often due timers are looked for.")
