"""Fixed canonical records for the outbound HL7 mappings' golden tests (fake PHI from tests.phi)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from engine.core.result import Finding, Measurement, Result
from engine.mapping.records import InferenceResult, OrderRef, PriorityUpdate
from tests import phi

STUDY_UID = "1.2.826.0.1.3680043.10.1234.1001"
NOW = datetime(2026, 11, 21, 10, 45, tzinfo=ZoneInfo("Europe/Berlin"))  # MSH-7 in the golden files

ORDER = OrderRef(
    order_id="ord-0001",
    accession=phi.ACCESSION,
    accession_issuer="GENHOSP",
    placer_number="PLC1001",
    filler_number=phi.ACCESSION,
    requested_procedure_id="RP1001",
    priority="routine",
    procedure_code="CTHEAD",
    procedure_text="CT HEAD W/O CONTRAST",
    modality="CT",
)

FINDINGS = [
    Finding(
        system="http://snomed.info/sct",
        code="1386000",
        display="Intracranial hemorrhage",
        score=0.97,
        critical=True,
        measurements=[Measurement(name="volume", value=12.5, unit="mL", code="VOL")],
        body_site="Left frontal lobe",
    ),
    Finding(
        system="http://example.org/ai/findings",
        code="MIDLINE-SHIFT",
        display="Midline shift",
        score=0.81,
        measurements=[Measurement(name="shift", value=4.2, unit="mm")],
    ),
    Finding(system="SCT", code="230745008", display="Hydrocephalus", score=0.41),
]


Status = Literal["preliminary", "corrected", "withdrawn"]


def result_record(status: Status = "preliminary") -> dict[str, Any]:
    """A 3-finding CT head result as the inference stage emits it, read back like the runtime does
    (`Record.from_json`: validated, nested objects as dicts, dates as Python values)."""
    revision = {"preliminary": 1, "corrected": 2, "withdrawn": 3}[status]
    result = InferenceResult(
        job_id="job-0001",
        study_id="std-0001",
        study_uid=STUDY_UID,
        accessions=[phi.ACCESSION],
        orders=[ORDER],
        patient_id=phi.MRN,
        patient_id_issuer="GENHOSP",
        patient_name=f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}^A",
        birth_date=phi.DOB,
        sex="F",
        modality="CT",
        procedure_code="CTHEAD",
        procedure_text="CT HEAD W/O CONTRAST",
        priority="routine",
        model="ich-detector",
        version="2.1.0",
        trigger="neuro/ct-head",
        clinical=True,
        critical=True,
        result=Result(
            model="ich-detector",
            version="2.1.0",
            findings=FINDINGS if status != "corrected" else FINDINGS[:2],
            summary="Intracranial hemorrhage suspected (score 0.97); midline shift 4.2 mm.",
            suggested_priority="stat",
            disclaimer="Not a medical device: for prioritisation only.",
        ),
        completed_at=datetime(2026, 11, 21, 9, 42, 7, tzinfo=UTC),
        status=status,
        report_id="std-0001/ich-detector",
        revision=revision,
    )
    return result.model_dump(exclude_none=True)


def priority_record() -> dict[str, Any]:
    update = PriorityUpdate(
        update_id="RB3BAA721870F7E021AB",  # the outputs stage's form: RB + 18 hex digits
        study_id="std-0001",
        study_uid=STUDY_UID,
        orders=[ORDER],
        patient_id=phi.MRN,
        patient_id_issuer="GENHOSP",
        patient_name=f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}^A",
        priority="stat",
        previous_priority="routine",
        reason="AI finding Intracranial hemorrhage, score 0.97 (ich-detector 2.1.0)",
        job_id="job-0001",
        model="ich-detector",
        version="2.1.0",
        raised_at=datetime(2026, 11, 21, 9, 42, 8, tzinfo=UTC),
    )
    return update.model_dump(exclude_none=True)
