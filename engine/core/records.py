"""Canonical records: the engine's own shapes for orders, patient events, AI results, priority updates
and final reports — what mappings produce from HL7 and read to build outbound messages, and what the
stages emit on internal topics. Each model forbids unknown fields and documents every field.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.core.result import Result


class _Canonical(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Order(_Canonical):
    """An imaging order as the RIS/EHR placed, changed or cancelled it."""

    event: Literal["accepted", "changed", "cancelled"] = Field(
        description="What happened to the order: accepted (new), changed, cancelled."
    )
    order_control: str | None = Field(None, description="The sender's order control code (ORC-1, table 0119).")
    order_status: str | None = Field(None, description="Order status as sent (ORC-5, table 0038).")
    accession: str | None = Field(None, description="Accession number: the key that links the order to its study.")
    accession_issuer: str | None = Field(None, description="Who assigned the accession number (namespace).")
    placer_number: str | None = Field(None, description="Placer order number (ORC-2 / OBR-2).")
    filler_number: str | None = Field(None, description="Filler order number (ORC-3 / OBR-3).")
    requested_procedure_id: str | None = Field(None, description="Requested procedure id (IPC-2, OBR-19).")
    patient_id: str | None = Field(None, description="Patient identifier (MRN) at the sending facility.")
    patient_id_issuer: str | None = Field(None, description="Assigning authority of `patient_id`.")
    patient_name: str | None = Field(None, description="Family^Given^Middle, as in DICOM PatientName.")
    birth_date: date | None = Field(None, description="Date of birth.")
    sex: str | None = Field(None, description="Administrative sex code as sent (HL7 table 0001: F, M, O, U, ...).")
    priority: Literal["routine", "urgent", "asap", "stat"] | None = Field(
        None, description="Reading priority, normalised from the sender's codes."
    )
    procedure_code: str | None = Field(None, description="Ordered procedure code (OBR-4.1).")
    procedure_text: str | None = Field(None, description="Ordered procedure description (OBR-4.2).")
    modality: str | None = Field(None, description="Modality or diagnostic service section (CT, MR, CR, ...).")
    body_part: str | None = Field(None, description="Body part examined, when the sender gives one.")
    study_uid: str | None = Field(None, description="DICOM Study Instance UID assigned at ordering (ZDS-1, IPC-3).")
    ordered_at: datetime | None = Field(None, description="When the order was placed (ORC-9).")
    requested_at: datetime | None = Field(None, description="When the procedure is requested to start.")
    reason: str | None = Field(None, description="Reason for the study / relevant clinical information.")
    ordering_provider: str | None = Field(None, description="Identifier of the ordering provider.")
    sending_application: str | None = Field(None, description="Sending application (MSH-3).")
    sending_facility: str | None = Field(None, description="Sending facility (MSH-4).")


class PatientEvent(_Canonical):
    """A change to a patient's demographics or identity (ADT)."""

    event: Literal["updated", "merged", "identifier_changed"] = Field(
        description="updated (demographics), merged (prior record merged into this one), identifier_changed."
    )
    patient_id: str | None = Field(None, description="The patient's (surviving, correct) identifier.")
    patient_id_issuer: str | None = Field(None, description="Assigning authority of `patient_id`.")
    prior_patient_id: str | None = Field(None, description="The identifier being merged away or replaced (MRG-1).")
    prior_patient_id_issuer: str | None = Field(None, description="Assigning authority of `prior_patient_id`.")
    name: str | None = Field(None, description="Family^Given^Middle, as in DICOM PatientName.")
    birth_date: date | None = Field(None, description="Date of birth.")
    sex: str | None = Field(None, description="Administrative sex code as sent (HL7 table 0001).")
    sending_application: str | None = Field(None, description="Sending application (MSH-3).")
    sending_facility: str | None = Field(None, description="Sending facility (MSH-4).")


class OrderRef(_Canonical):
    """An order a result belongs to, as correlation matched it (study.ready `orders`)."""

    order_id: str = Field(description="The engine's order record id.")
    accession: str | None = None
    accession_issuer: str | None = None
    placer_number: str | None = None
    filler_number: str | None = None
    requested_procedure_id: str | None = None
    priority: Literal["routine", "urgent", "asap", "stat"] | None = None
    procedure_code: str | None = None
    procedure_text: str | None = None
    modality: str | None = None
    body_part: str | None = None
    reason: str | None = None
    ordering_provider: str | None = None


class InferenceResult(_Canonical):
    """An AI result as the inference stage emits it (topic inference.completed): the canonical
    result with the study, its orders and the patient, for the result mappings (ORU, FHIR, SR)."""

    job_id: str = Field(description="The inference job that produced it.")
    study_id: str = Field(description="The engine's study record id.")
    study_uid: str | None = Field(None, description="Study Instance UID.")
    accessions: list[str] = Field(default_factory=list, description="Accession numbers of the study.")
    orders: list[OrderRef] = Field(default_factory=list, description="The orders the study was matched to.")
    patient_id: str | None = None
    patient_id_issuer: str | None = None
    patient_name: str | None = Field(None, description="Family^Given^Middle.")
    birth_date: str | None = Field(None, description="As the order or image gave it (YYYYMMDD or ISO 8601).")
    sex: str | None = None
    modality: str | None = None
    body_part: str | None = None
    procedure_code: str | None = None
    procedure_text: str | None = None
    priority: Literal["routine", "urgent", "asap", "stat"] | None = Field(None, description="The order priority.")
    model: str = Field(description="Model name.")
    version: str = Field(description="Model version.")
    trigger: str = Field(description="Rule set/rule that chose the model.")
    clinical: bool = Field(description="Released (active model version); False for a shadow result.")
    critical: bool = Field(description="Some finding is at or above its critical threshold.")
    result: Result = Field(description="Findings, scores, measurements, summary, suggested priority.")
    completed_at: datetime = Field(description="When the result was recorded.")
    status: Literal["preliminary", "corrected", "withdrawn"] = Field(
        "preliminary",
        description="preliminary (AI output, unverified); corrected (replaces the report sent before: a late "
        "series changed the study); withdrawn (the order was cancelled or the model version recalled).",
    )
    report_id: str | None = Field(
        None, description="Stable id of the AI report (study + model): a correction or withdrawal names the same one."
    )
    revision: int = Field(1, ge=1, description="1 for the first report, then one more per correction/withdrawal.")


class PriorityUpdate(_Canonical):
    """A worklist priority raised by an AI result (to the RIS as ORM XO / OMI, to FHIR as ServiceRequest)."""

    update_id: str = Field(description="Unique per (study, level): an update is sent at most once per level.")
    study_id: str
    study_uid: str | None = None
    orders: list[OrderRef] = Field(default_factory=list, description="The orders whose priority is raised.")
    patient_id: str | None = None
    patient_id_issuer: str | None = None
    patient_name: str | None = None
    priority: Literal["routine", "urgent", "asap", "stat"] = Field(description="The new priority.")
    previous_priority: Literal["routine", "urgent", "asap", "stat"] = Field(description="The latest known one.")
    reason: str = Field(description="Why, in words: finding, score, model and version (no patient data).")
    job_id: str = Field(description="The inference job whose result raised it.")
    model: str
    version: str
    raised_at: datetime


class FinalReport(_Canonical):
    """The radiologist's report as the RIS sends it back (ORU^R01): closes the loop on an AI report.
    `text` is the report itself: patient data, stored sealed like every record."""

    accession: str | None = Field(None, description="Accession number (OBR-18, else the filler order number).")
    placer_number: str | None = Field(None, description="Placer order number (ORC-2 / OBR-2).")
    filler_number: str | None = Field(None, description="Filler order number (ORC-3 / OBR-3).")
    patient_id: str | None = Field(None, description="Patient identifier (PID-3).")
    patient_id_issuer: str | None = Field(None, description="Assigning authority of `patient_id`.")
    study_uid: str | None = Field(None, description="Study Instance UID, when an OBX carries it.")
    procedure_code: str | None = Field(None, description="Reported procedure (OBR-4.1).")
    status: str = Field(description="Result status as sent (OBR-25, table 0123: P, F, C, X, ...).")
    observed_at: datetime | None = Field(None, description="Observation date/time (OBR-7).")
    reported_at: datetime | None = Field(None, description="Results report/status change date/time (OBR-22).")
    interpreter: str | None = Field(None, description="Principal result interpreter's id (OBR-32, first component).")
    text: str | None = Field(None, description="The report text: the TX/FT observation values, one line each.")
    sending_application: str | None = Field(None, description="Sending application (MSH-3).")


MODELS: dict[str, type[_Canonical]] = {
    "order": Order, "patient": PatientEvent, "result": InferenceResult, "priority_update": PriorityUpdate,
    "report": FinalReport,
}  # fmt: skip
"""Record type name (a mapping's `to:` / `from:`) -> model."""

# '"name":' for every canonical field, written once (to_json's keys are almost always these).
