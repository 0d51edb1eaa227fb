"""How the engine's records name things on a FHIR server: identifier systems, references, the disclaimer.

One model, shared by the builders (engine.fhir.report, engine.fhir.priority) and the `fhir` destination's
configuration (which extends it), so a channel file sets these keys at the destination's top level.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

REPORT_SYSTEM = "urn:radbridge:ai-report"
DICOM_UID_SYSTEM = "urn:dicom:uid"  # FHIR R4 ImagingStudy: system urn:dicom:uid, value urn:oid:<Study UID>
DISCLAIMER = "AI-generated, unverified: not reviewed by a radiologist."


class FhirOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    patient_identifier_system: str = Field(
        description="Identifier system (URI) of the records' `patient_id` (the MRN), e.g. "
        "`urn:oid:1.2.3.4.5` or `https://hospital.example/fhir/mrn`; used when `patient_id_issuer` is "
        "absent or not in `patient_identifier_systems`.",
    )
    patient_identifier_systems: dict[str, str] = Field(
        default_factory=dict,
        description="Assigning authority (`patient_id_issuer`, e.g. PID-3.4 `GENHOSP`) -> identifier system URI, "
        "for feeds that carry MRNs of several issuers.",
    )
    accession_identifier_system: str = Field(
        description="Identifier system (URI) of accession numbers: the ServiceRequest the AI report is based on "
        "(and whose priority an update raises) carries the accession under this system.",
    )
    accession_identifier_systems: dict[str, str] = Field(
        default_factory=dict, description="Accession issuer (`accession_issuer`) -> identifier system URI."
    )
    report_identifier_system: str = Field(
        REPORT_SYSTEM,
        description="System of the identifiers the engine gives its DiagnosticReports (value: `report_id`) and "
        "Observations (value: `report_id/r<revision>/f<finding>`); retries and corrections find them by it.",
    )
    references: Literal["identifier", "conditional"] = Field(
        "identifier",
        description="How Patient and ServiceRequest are referenced: `identifier` (logical references, "
        "Reference.identifier only: always accepted, searchable with `subject:identifier=`) or `conditional` "
        "(also Reference.reference = `Patient?identifier=...`, which the server resolves inside the transaction "
        "and refuses when no single match exists). The ImagingStudy is always referenced by identifier.",
    )
    disclaimer: str = Field(
        DISCLAIMER,
        min_length=1,
        description="Added to the report's conclusion and to every Observation as a note; the model's own "
        "disclaimer, when it has one, follows it.",
    )


def identifier_system(issuer: str | None, systems: dict[str, str], default: str) -> str:
    """The system URI for an identifier assigned by `issuer` (the default when it has none or is not mapped)."""
    return systems.get(issuer, default) if issuer else default


def search_token(system: str, value: str) -> str:
    """A token search parameter value `system|value`, FHIR-escaped (\\ | , $) and percent-encoded for a URL."""

    def escape(text: str) -> str:
        for char in "\\|,$":
            text = text.replace(char, "\\" + char)
        return quote(text, safe=":/.-_~@")

    return f"{escape(system)}|{escape(value)}"
