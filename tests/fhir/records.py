"""Fixed canonical records (fake PHI from tests.phi) for the FHIR builders and destination tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.fhir.options import FhirOptions
from tests.phi import ACCESSION, MRN, NAME_FAMILY, NAME_GIVEN

STUDY_UID = "1.2.826.0.1.3680043.8.498.10442189461925391"
OPTIONS = FhirOptions(
    patient_identifier_system="urn:oid:2.16.840.1.113883.3.9999.1",
    patient_identifier_systems={"GENHOSP": "https://genhosp.example/fhir/mrn"},
    accession_identifier_system="https://genhosp.example/fhir/accession",
)


def result_fields(status: str = "preliminary", revision: int = 1, **changes: Any) -> dict[str, Any]:
    """An InferenceResult's fields: a head CT with a critical hemorrhage (with a volume) and a fracture."""
    fields: dict[str, Any] = {
        "job_id": "J-0001", "study_id": "S-0001", "study_uid": STUDY_UID, "accessions": [ACCESSION],
        "orders": [{"order_id": "O-0001", "accession": ACCESSION, "accession_issuer": "GENHOSP", "priority": "routine",
                    "procedure_code": "CTHEAD", "procedure_text": "CT HEAD WITHOUT CONTRAST", "modality": "CT"}],
        "patient_id": MRN, "patient_id_issuer": "GENHOSP", "patient_name": f"{NAME_FAMILY}^{NAME_GIVEN}",
        "birth_date": "19470312", "sex": "F", "modality": "CT", "body_part": "HEAD", "procedure_code": "CTHEAD",
        "procedure_text": "CT HEAD WITHOUT CONTRAST", "priority": "routine",
        "model": "ich-ct", "version": "1.2.0", "trigger": "head-ct/ich", "clinical": True, "critical": True,
        "result": {
            "model": "ich-ct", "version": "1.2.0",
            "findings": [
                {"system": "http://snomed.info/sct", "code": "274100004", "display": "Cerebral hemorrhage",
                 "score": 0.93, "critical": True, "body_site": "left parietal lobe",
                 "measurements": [{"name": "volume", "value": 12.5, "unit": "mL"}],
                 "series_uid": STUDY_UID + ".1", "instance_uids": [STUDY_UID + ".1.7"]},
                {"system": "http://snomed.info/sct", "code": "71642004", "display": "Fracture of skull",
                 "score": 0.41},
            ],
            "summary": "Suspected intracranial hemorrhage (left parietal, about 12.5 mL).",
            "suggested_priority": "stat", "disclaimer": "Not a medical device outside the study protocol.",
        },
        "completed_at": datetime(2026, 11, 21, 10, 32, 5, tzinfo=UTC), "status": status,
        "report_id": "S-0001/ich-ct", "revision": revision,
    }  # fmt: skip
    fields.update(changes)
    return fields


def priority_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "update_id": "RB0123456789abcdef01", "study_id": "S-0001", "study_uid": STUDY_UID,
        "orders": [{"order_id": "O-0001", "accession": ACCESSION, "accession_issuer": "GENHOSP",
                    "priority": "routine"}],
        "patient_id": MRN, "patient_id_issuer": "GENHOSP", "patient_name": f"{NAME_FAMILY}^{NAME_GIVEN}",
        "priority": "stat", "previous_priority": "routine",
        "reason": "Cerebral hemorrhage score 0.93 >= 0.80 (ich-ct 1.2.0)", "job_id": "J-0001",
        "model": "ich-ct", "version": "1.2.0", "raised_at": datetime(2026, 11, 21, 10, 32, 6, tzinfo=UTC),
    }  # fmt: skip
    fields.update(changes)
    return fields
