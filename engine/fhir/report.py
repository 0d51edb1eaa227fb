"""An AI result (canonical record `result`) as a FHIR R4 transaction Bundle: one DiagnosticReport and one
Observation per finding. The field mapping is documented in docs/outputs.md.

Idempotency — a retry after a timeout, or the same record sent twice, never makes a second report:
- The DiagnosticReport carries identifier `report_identifier_system|report_id`. Revision 1 (preliminary)
  is a conditional create (POST with ifNoneExist on it): when the report exists, the server answers with
  it and changes nothing, so a stale preliminary replayed after a correction cannot undo it. A
  correction or withdrawal is a conditional update (PUT `DiagnosticReport?identifier=...`) of that same
  report: it creates it if the preliminary never arrived, and replaces it otherwise.
- Each Observation carries identifier `report_id/r<revision>/f<finding>` and is a conditional create,
  so a revision's Observations exist once however often it is sent. fullUrls are urn:uuid values
  derived (uuid5) from those identifiers, so equal records give equal bytes.
- A correction retires the Observations of earlier revisions and a withdrawal all of them: the
  destination first reads the report with its results (`prior_observations`), and the transaction
  PATCHes each one not yet retired to status entered-in-error (JSON Patch in a Binary, with ifMatch on
  the version read, so a concurrent change fails the transaction, which is retried).
A transaction is atomic: either all of this happens or none of it.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from engine.core.result import Finding, Result
from engine.fhir.bundle import JSON_PATCH, compact, validate_bundle
from engine.fhir.options import DICOM_UID_SYSTEM, FhirOptions, identifier_system, search_token

__all__ = ["PriorObservation", "ResultRecord", "observation_identifier", "prior_observations", "report_bundle",
           "report_key"]  # fmt: skip

LOINC = "http://loinc.org"
REPORT_CODE = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
RADIOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
IMAGING = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
           "display": "Imaging"}  # fmt: skip
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
# AA heads the value set ObservationInterpretationNormalityCriticallyAbnormal; HH/LL are for numeric results
# above/below a range, which a coded finding is not.
CRITICAL = {"system": _INTERPRETATION, "code": "AA", "display": "Critical abnormal"}
ABNORMAL = {"system": _INTERPRETATION, "code": "A", "display": "Abnormal"}
PRESENT = {"system": "http://snomed.info/sct", "code": "52101004", "display": "Present"}
ACCESSION_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN",
                              "display": "Accession ID"}]}  # fmt: skip
UCUM = "http://unitsofmeasure.org"

REPORT_STATUS = {"preliminary": "preliminary", "corrected": "amended", "withdrawn": "entered-in-error"}
RETIRED = "entered-in-error"


class OrderKeys(Protocol):
    """What the builders read of an order a record names (engine.mapping.records.OrderRef)."""

    @property
    def accession(self) -> str | None: ...

    @property
    def accession_issuer(self) -> str | None: ...


class ResultRecord(Protocol):
    """What the builder reads of a `result` record: engine.mapping.records.InferenceResult, validated by the
    caller (the fhir layer sits below the mapping layer and does not import it)."""

    @property
    def job_id(self) -> str: ...
    @property
    def study_uid(self) -> str | None: ...
    @property
    def accessions(self) -> Sequence[str]: ...
    @property
    def orders(self) -> Sequence[OrderKeys]: ...
    @property
    def patient_id(self) -> str | None: ...
    @property
    def patient_id_issuer(self) -> str | None: ...
    @property
    def model(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def result(self) -> Result: ...
    @property
    def completed_at(self) -> datetime: ...
    @property
    def status(self) -> str: ...
    @property
    def report_id(self) -> str | None: ...
    @property
    def revision(self) -> int: ...


@dataclass(frozen=True)
class PriorObservation:
    """An Observation the server holds for the report (read before a correction or withdrawal)."""

    id: str
    version: str | None
    status: str
    identifiers: tuple[str, ...]  # "system|value", as stored


def report_key(result: ResultRecord) -> str:
    """The report's identifier value: `report_id` (a preliminary without one falls back to its job id)."""
    if result.report_id:
        return result.report_id
    if result.status == "preliminary":
        return result.job_id
    raise ValueError(f"a {result.status} result needs report_id (job {result.job_id})")


def observation_identifier(report: str, revision: int, finding: int) -> str:
    return f"{report}/r{revision}/f{finding}"


def _urn(system: str, value: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{system}|{value}')}"


def _reference(kind: str, identifier: dict[str, Any], options: FhirOptions) -> dict[str, Any]:
    ref: dict[str, Any] = {}
    if options.references == "conditional":
        ref["reference"] = f"{kind}?identifier={search_token(identifier['system'], identifier['value'])}"
    ref["type"] = kind
    ref["identifier"] = identifier
    return ref


def _accessions(result: ResultRecord, options: FhirOptions) -> list[tuple[str, str]]:
    """(system, accession) of every order, then of accessions no order named; in order, without repeats."""
    pairs: list[tuple[str, str]] = []
    for order in result.orders:
        if order.accession:
            system = identifier_system(
                order.accession_issuer, options.accession_identifier_systems, options.accession_identifier_system
            )
            pairs.append((system, order.accession))
    named = {accession for _, accession in pairs}
    pairs += [(options.accession_identifier_system, a) for a in result.accessions if a and a not in named]
    return list(dict.fromkeys(pairs))


def _instant(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("completed_at has no time zone (a FHIR instant needs one)")
    return value.isoformat()


def _coded(finding: Finding) -> dict[str, Any]:
    return {"coding": [{"system": finding.system, "code": finding.code, "display": finding.display}],
            "text": finding.display}  # fmt: skip


def _disclaimer(result: ResultRecord, options: FhirOptions) -> str:
    own = (result.result.disclaimer or "").strip()
    return f"{options.disclaimer} {own}" if own else options.disclaimer


def _conclusion(result: ResultRecord, options: FhirOptions) -> str:
    if result.status == "withdrawn":
        body = "AI result withdrawn: do not use it."
    elif result.result.summary.strip():
        body = result.result.summary.strip()
    elif result.result.findings:
        body = "AI findings: " + "; ".join(f.display for f in result.result.findings) + "."
    else:
        body = "No AI findings."
    return f"{body}\n\nAI model {result.model} {result.version}. {_disclaimer(result, options)}"


def _observation(result: ResultRecord, finding: Finding, identifier: dict[str, str], context: dict[str, Any],
                 options: FhirOptions) -> dict[str, Any]:  # fmt: skip
    obs: dict[str, Any] = {"resourceType": "Observation", "identifier": [identifier]}
    if context.get("basedOn"):
        obs["basedOn"] = context["basedOn"]
    obs["status"] = REPORT_STATUS[result.status]
    obs["category"] = [{"coding": [IMAGING]}]
    obs["code"] = _coded(finding)
    obs["subject"] = context["subject"]
    obs["issued"] = context["issued"]
    obs["valueCodeableConcept"] = {"coding": [PRESENT], "text": "Present"}
    obs["interpretation"] = [{"coding": [CRITICAL if finding.critical else ABNORMAL]}]
    obs["note"] = [{"text": _disclaimer(result, options)}]
    if finding.body_site:
        obs["bodySite"] = {"text": finding.body_site}
    obs["method"] = {"text": f"AI model {result.model} {result.version}"}
    obs["device"] = {"display": f"{result.model} {result.version}"}
    if context.get("imagingStudy"):
        obs["derivedFrom"] = context["imagingStudy"]
    components = [{"code": {"text": "AI model score"},
                   "valueQuantity": {"value": finding.score, "unit": "1", "system": UCUM, "code": "1"}}]  # fmt: skip
    for m in finding.measurements:
        name = f"{m.name} ({m.code})" if m.code else m.name
        quantity = {"value": m.value, "unit": m.unit, "system": UCUM, "code": m.unit}
        components.append({"code": {"text": name}, "valueQuantity": quantity})
    obs["component"] = components
    return obs


def _retire(prior: PriorObservation) -> dict[str, Any]:
    patch = [{"op": "replace", "path": "/status", "value": RETIRED}]
    request: dict[str, Any] = {"method": "PATCH", "url": f"Observation/{prior.id}"}
    if prior.version:
        request["ifMatch"] = f'W/"{prior.version}"'
    binary = {"resourceType": "Binary", "contentType": JSON_PATCH, "data": base64.b64encode(compact(patch)).decode()}
    return {"resource": binary, "request": request}


def _diagnostic_report(result: ResultRecord, options: FhirOptions, context: dict[str, Any], report: str,
                       results: list[str]) -> dict[str, Any]:  # fmt: skip
    system = options.report_identifier_system
    dr: dict[str, Any] = {"resourceType": "DiagnosticReport", "identifier": [{"system": system, "value": report}]}
    if context.get("basedOn"):
        dr["basedOn"] = context["basedOn"]
    dr["status"] = REPORT_STATUS[result.status]
    dr["category"] = [{"coding": [RADIOLOGY]}]
    dr["code"] = {"coding": [REPORT_CODE], "text": f"AI result: {result.model} {result.version}"}
    dr["subject"] = context["subject"]
    dr["issued"] = context["issued"]
    if results:
        dr["result"] = [{"reference": r} for r in results]
    if context.get("imagingStudy"):
        dr["imagingStudy"] = context["imagingStudy"]
    dr["conclusion"] = _conclusion(result, options)
    critical = [_coded(f) for f in result.result.findings if f.critical] if result.status != "withdrawn" else []
    if critical:
        dr["conclusionCode"] = critical
    return dr


def report_bundle(result: ResultRecord, options: FhirOptions, prior: Sequence[PriorObservation] = ()) -> dict[str, Any]:
    """The transaction Bundle for one validated result record. `prior`: the Observations the server holds
    for this report, for a correction or withdrawal (ignored for a preliminary). ValueError, naming fields
    and never their values, when the record cannot make a valid report."""
    if not result.patient_id:
        raise ValueError(f"result of job {result.job_id} has no patient_id: a report needs its subject")
    system = options.report_identifier_system
    report = report_key(result)
    patient_system = identifier_system(
        result.patient_id_issuer, options.patient_identifier_systems, options.patient_identifier_system
    )
    patient = {"system": patient_system, "value": result.patient_id}
    context: dict[str, Any] = {"subject": _reference("Patient", patient, options)}
    context["issued"] = _instant(result.completed_at)
    based_on = [_reference("ServiceRequest", {"type": ACCESSION_TYPE, "system": s, "value": a}, options)
                for s, a in _accessions(result, options)]  # fmt: skip
    if based_on:
        context["basedOn"] = based_on
    if result.study_uid:
        study = {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{result.study_uid}"}
        context["imagingStudy"] = [{"type": "ImagingStudy", "identifier": study}]

    observations: list[dict[str, Any]] = []
    if result.status != "withdrawn":
        for n, finding in enumerate(result.result.findings, start=1):
            identifier = {"system": system, "value": observation_identifier(report, result.revision, n)}
            resource = _observation(result, finding, identifier, context, options)
            request = {"method": "POST", "url": "Observation",
                       "ifNoneExist": f"identifier={search_token(system, identifier['value'])}"}  # fmt: skip
            full_url = _urn(system, identifier["value"])
            observations.append({"fullUrl": full_url, "resource": resource, "request": request})
    current = {f"{system}|{e['resource']['identifier'][0]['value']}" for e in observations}
    prior = list(prior) if result.status != "preliminary" else []
    ours = f"{system}|{report}/r"  # this report's Observations, of any revision (observation_identifier)
    mine = [p for p in prior if any(i.startswith(ours) for i in p.identifiers)]
    mine = [p for p in mine if not current.intersection(p.identifiers)]  # earlier revisions'
    retire = [p for p in mine if p.status != RETIRED]

    if result.status == "withdrawn":  # the withdrawn report keeps pointing at what it withdrew
        results = [f"Observation/{p.id}" for p in mine]
    else:
        results = [e["fullUrl"] for e in observations]
    dr = _diagnostic_report(result, options, context, report, results)

    token = search_token(system, report)
    if result.status == "preliminary":
        request = {"method": "POST", "url": "DiagnosticReport", "ifNoneExist": f"identifier={token}"}
    else:
        request = {"method": "PUT", "url": f"DiagnosticReport?identifier={token}"}
    entries = [{"fullUrl": _urn(system, f"{report}#r{result.revision}"), "resource": dr, "request": request}]
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": entries + observations + [_retire(p) for p in retire]}  # fmt: skip
    validate_bundle(bundle)
    return bundle


def prior_observations(searchset: Mapping[str, Any]) -> list[PriorObservation]:
    """The Observations in the answer to `DiagnosticReport?identifier=...&_include=DiagnosticReport:result`.
    ValueError when more than one report matches (the identifier is then not the engine's alone)."""
    reports, found = 0, []
    for entry in searchset.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        kind = resource.get("resourceType")
        if kind == "DiagnosticReport":
            reports += 1
        elif kind == "Observation" and isinstance(resource.get("id"), str):
            identifiers = tuple(f"{i.get('system', '')}|{i.get('value', '')}" for i in resource.get("identifier") or []
                                if isinstance(i, dict))  # fmt: skip
            version = (resource.get("meta") or {}).get("versionId")
            found.append(PriorObservation(resource["id"], version if isinstance(version, str) else None,
                                          str(resource.get("status", "")), identifiers))  # fmt: skip
    if reports > 1:
        raise ValueError(f"{reports} DiagnosticReports carry the report's identifier")
    return sorted(found, key=lambda p: p.id)
