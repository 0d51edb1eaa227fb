"""The FHIR builders against golden files: a fixed result record (fake PHI) -> transaction Bundle bytes,
for each report status, and a priority update -> its JSON Patch and request URLs. Every golden is also
validated as a FHIR Bundle by fhir.resources. Regenerate after a deliberate change with
RADBRIDGE_GOLDEN=write (then read the diff)."""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from engine.fhir.bundle import pretty, read_record
from engine.fhir.options import FhirOptions, search_token
from engine.fhir.priority import accession_tokens, priority_patch, search_url, target_url
from engine.fhir.report import PriorObservation, prior_observations
from engine.fhir.report import report_bundle as build
from engine.mapping.records import InferenceResult, PriorityUpdate
from tests.fhir.records import OPTIONS, priority_fields, result_fields
from tests.phi import ACCESSION, DOB, MRN, NAME_FAMILY, NAME_GIVEN

GOLDEN = Path(__file__).parent / "golden"


def report_bundle(fields: dict[str, Any], options: FhirOptions, prior: list[PriorObservation] | None = None) -> Any:
    """The builder on a record read from its fields, as the destination reads a message's."""
    return build(read_record(InferenceResult, fields, "result"), options, prior or [])


def priority_update(fields: dict[str, Any]) -> PriorityUpdate:
    return read_record(PriorityUpdate, fields, "priority_update")


SYSTEM = "urn:radbridge:ai-report"
# What the server held after revision 2: its one Observation, and revision 1's two (already retired).
PRIOR_R2 = [
    PriorObservation("7", "1", "amended", (f"{SYSTEM}|S-0001/ich-ct/r2/f1",)),
]
PRIOR_R1 = [
    PriorObservation("2", "1", "preliminary", (f"{SYSTEM}|S-0001/ich-ct/r1/f1",)),
    PriorObservation("3", "1", "preliminary", (f"{SYSTEM}|S-0001/ich-ct/r1/f2",)),
]


def golden(name: str, data: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("RADBRIDGE_GOLDEN") == "write":
        path.write_bytes(data)
    assert data == path.read_bytes(), f"{name} differs from its golden file"
    if name.startswith("report"):
        Bundle.model_validate(json.loads(data))  # raises when not a valid FHIR Bundle


def corrected_fields(revision: int = 2, status: str = "corrected") -> dict[str, Any]:
    """The correction: a late series; the hemorrhage stays (larger), the fracture is gone."""
    fields = result_fields(status, revision)
    finding = dict(fields["result"]["findings"][0], score=0.95, measurements=[{"name": "volume", "value": 18.0,
                                                                                 "unit": "mL"}])  # fmt: skip
    fields["result"] = {**fields["result"], "findings": [finding],
                        "summary": "Suspected intracranial hemorrhage (left parietal, about 18 mL)."}  # fmt: skip
    return fields


def test_preliminary_report_golden() -> None:
    bundle = report_bundle(result_fields(), OPTIONS)
    golden("report-preliminary.json", pretty(bundle))
    dr, first, second = (e["resource"] for e in bundle["entry"])
    assert [e["request"]["method"] for e in bundle["entry"]] == ["POST"] * 3
    assert bundle["entry"][0]["request"]["ifNoneExist"] == f"identifier={SYSTEM}|S-0001/ich-ct"
    assert dr["status"] == "preliminary" and first["status"] == second["status"] == "preliminary"
    assert dr["result"] == [{"reference": bundle["entry"][1]["fullUrl"]}, {"reference": bundle["entry"][2]["fullUrl"]}]
    assert dr["subject"]["identifier"] == {"system": "https://genhosp.example/fhir/mrn", "value": MRN}
    assert dr["basedOn"][0]["identifier"]["value"] == ACCESSION
    assert [c["coding"][0]["code"] for c in dr["conclusionCode"]] == ["274100004"]  # the critical one only
    assert first["interpretation"][0]["coding"][0]["code"] == "AA"
    assert second["interpretation"][0]["coding"][0]["code"] == "A"
    assert first["component"][1]["valueQuantity"] == {"value": 12.5, "unit": "mL", "system": "http://unitsofmeasure.org",
                                                      "code": "mL"}  # fmt: skip


def test_corrected_report_golden_retires_the_earlier_observations() -> None:
    bundle = report_bundle(corrected_fields(), OPTIONS, PRIOR_R1)
    golden("report-corrected.json", pretty(bundle))
    entries = bundle["entry"]
    assert [(e["request"]["method"], e["request"]["url"]) for e in entries] == [
        ("PUT", f"DiagnosticReport?identifier={SYSTEM}|S-0001/ich-ct"), ("POST", "Observation"),
        ("PATCH", "Observation/2"), ("PATCH", "Observation/3"),
    ]  # fmt: skip
    assert entries[0]["resource"]["status"] == "amended" and entries[1]["resource"]["status"] == "amended"
    assert entries[1]["resource"]["identifier"][0]["value"] == "S-0001/ich-ct/r2/f1"
    assert entries[0]["resource"]["result"] == [{"reference": entries[1]["fullUrl"]}]
    patch = json.loads(base64.b64decode(entries[2]["resource"]["data"]))
    assert patch == [{"op": "replace", "path": "/status", "value": "entered-in-error"}]
    assert entries[2]["request"]["ifMatch"] == 'W/"1"'


def test_withdrawn_report_golden() -> None:
    bundle = report_bundle(corrected_fields(3, "withdrawn"), OPTIONS, PRIOR_R2)
    golden("report-withdrawn.json", pretty(bundle))
    dr = bundle["entry"][0]["resource"]
    assert dr["status"] == "entered-in-error" and dr["result"] == [{"reference": "Observation/7"}]
    assert "conclusionCode" not in dr and dr["conclusion"].startswith("AI result withdrawn")
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "PATCH"]  # no new Observations


def test_resent_correction_retires_nothing_more() -> None:
    """After the correction committed, the server holds revision 2's Observation: sending it again (a
    retry) re-creates nothing (conditional create) and retires nothing."""
    prior = [PriorObservation("7", "1", "amended", (f"{SYSTEM}|S-0001/ich-ct/r2/f1",))]
    bundle = report_bundle(corrected_fields(), OPTIONS, prior)
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "POST"]
    retired = PriorObservation("7", "2", "entered-in-error", (f"{SYSTEM}|S-0001/ich-ct/r2/f1",))
    foreign = PriorObservation("8", "1", "final", ("urn:other|x",))  # not the engine's: never touched
    withdrawn = report_bundle(corrected_fields(3, "withdrawn"), OPTIONS, [retired, foreign])
    assert [e["request"]["method"] for e in withdrawn["entry"]] == ["PUT"]  # already retired
    assert withdrawn["entry"][0]["resource"]["result"] == [{"reference": "Observation/7"}]


def test_priority_update_golden() -> None:
    update = priority_update(priority_fields())
    tokens = accession_tokens(update, OPTIONS)
    plan = {
        "patch": json.loads(priority_patch(update)),
        "servicerequest-conditional": [target_url("servicerequest-conditional", t) for t in tokens],
        "servicerequest-patch": [search_url("servicerequest-patch", t) for t in tokens],
        "task": [search_url("task", t) for t in tokens],
    }
    golden("priority-update.json", pretty(plan))
    assert priority_patch(update) == b'[{"op":"add","path":"/priority","value":"stat"}]'
    assert target_url("task", tokens[0]) is None


def test_output_is_deterministic_and_ids_follow_the_report() -> None:
    first, again = report_bundle(result_fields(), OPTIONS), report_bundle(result_fields(), OPTIONS)
    assert pretty(first) == pretty(again)
    other = report_bundle(result_fields(report_id="S-0002/ich-ct"), OPTIONS)
    assert {e["fullUrl"] for e in other["entry"]}.isdisjoint({e["fullUrl"] for e in first["entry"]})


def test_minimum_necessary_patient_data() -> None:
    """The report names the patient by identifier only: no name, no birth date."""
    data = pretty(report_bundle(result_fields(), OPTIONS)).decode()
    assert NAME_FAMILY not in data and NAME_GIVEN not in data and DOB not in data
    assert MRN in data and ACCESSION in data


def test_issuer_maps_to_its_system_and_defaults() -> None:
    bundle = report_bundle(result_fields(patient_id_issuer="OTHERHOSP"), OPTIONS)
    assert bundle["entry"][0]["resource"]["subject"]["identifier"]["system"] == "urn:oid:2.16.840.1.113883.3.9999.1"


def test_conditional_references() -> None:
    options = OPTIONS.model_copy(update={"references": "conditional"})
    dr = report_bundle(result_fields(), options)["entry"][0]["resource"]
    assert dr["subject"]["reference"] == f"Patient?identifier=https://genhosp.example/fhir/mrn|{MRN}"
    assert (
        dr["basedOn"][0]["reference"] == f"ServiceRequest?identifier=https://genhosp.example/fhir/accession|{ACCESSION}"
    )
    assert "reference" not in dr["imagingStudy"][0]


def test_search_token_escapes() -> None:
    assert search_token("urn:x", "a|b,c$d\\e f&g") == "urn:x|a%5C%7Cb%5C%2Cc%5C%24d%5C%5Ce%20f%26g"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"patient_id": None}, "has no patient_id"),
        ({"report_id": None, "status": "corrected", "revision": 2}, "a corrected result needs report_id"),
        ({"completed_at": datetime(2026, 11, 21, 10, 32, 5)}, "completed_at has no time zone"),
        ({"revision": 0, "sex": MRN}, "not a valid result record (fields: revision)"),
    ],
)
def test_unusable_records_name_fields_never_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        report_bundle(result_fields(**changes), OPTIONS)
    assert MRN not in str(caught.value)


def test_prior_observations_from_a_searchset() -> None:
    searchset = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "DiagnosticReport", "id": "1"}},
        {"resource": {"resourceType": "Observation", "id": "3", "meta": {"versionId": "2"}, "status": "amended",
                      "identifier": [{"system": SYSTEM, "value": "S-0001/ich-ct/r2/f1"}]}},
        {"resource": {"resourceType": "Observation", "id": "2", "status": "preliminary"}},
    ]}  # fmt: skip
    assert prior_observations(searchset) == [
        PriorObservation("2", None, "preliminary", ()),
        PriorObservation("3", "2", "amended", (f"{SYSTEM}|S-0001/ich-ct/r2/f1",)),
    ]
    searchset["entry"].append({"resource": {"resourceType": "DiagnosticReport", "id": "9"}})
    with pytest.raises(ValueError, match="2 DiagnosticReports carry the report's identifier"):
        prior_observations(searchset)


def test_priority_update_needs_an_accession() -> None:
    update = priority_update(priority_fields(orders=[{"order_id": "O-1"}]))
    with pytest.raises(ValueError, match="priority update RB0123456789abcdef01 names no order accession"):
        accession_tokens(update, OPTIONS)
    options = FhirOptions(patient_identifier_system="urn:p", accession_identifier_system="urn:a",
                          accession_identifier_systems={"GENHOSP": "urn:genhosp"})  # fmt: skip
    assert accession_tokens(priority_update(priority_fields()), options) == [f"urn:genhosp|{ACCESSION}"]
