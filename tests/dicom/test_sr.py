"""The AI result SR (engine.dicom.sr): a fixed record gives a fixed Comprehensive SR whose content tree,
header and references are checked item by item, read back from its Part 10 bytes; dcmtk's dsrdump
parses every variant without a warning."""

from __future__ import annotations

import io
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from engine.core.records import InferenceResult
from engine.dicom.sr import COMPREHENSIVE_SR, build_sr, report_uids, to_part10
from tests import phi

STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = "1.2.826.0.1.3680043.8.498.10.1"
INSTANCES = ["1.2.826.0.1.3680043.8.498.10.1.1", "1.2.826.0.1.3680043.8.498.10.1.2"]
CT = "1.2.840.10008.5.1.4.1.1.2"
NOW = datetime(2026, 11, 21, 11, 30, 5, tzinfo=timezone(timedelta(hours=1)))
DISCLAIMER = "Reference implementation for integration testing, not a medical device."


def record(**changes: Any) -> dict[str, Any]:
    """The result record (its `fields`) of a head CT with one critical finding and fake PHI."""
    fields: dict[str, Any] = {
        "job_id": "job-0001", "study_id": "study-0001", "study_uid": STUDY, "accessions": [phi.ACCESSION],
        "orders": [{"order_id": "order-1", "accession": phi.ACCESSION, "accession_issuer": "GENHOSP",
                    "placer_number": "PLC1001", "filler_number": "FIL2002", "requested_procedure_id": "RP1",
                    "procedure_text": "CT HEAD WITHOUT CONTRAST"}],
        "patient_id": phi.MRN, "patient_id_issuer": "GENHOSP", "patient_name": f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}",
        "birth_date": "1947-03-12", "sex": "F", "modality": "CT", "body_part": "HEAD",
        "model": "head-ct-hyperdensity", "version": "1.0.0", "trigger": "neuro/head-ct", "clinical": True,
        "critical": True,
        "result": {
            "model": "head-ct-hyperdensity", "version": "1.0.0", "suggested_priority": "stat",
            "summary": "Possible acute intracranial haemorrhage: hyperdense region of 12.5 mL.",
            "disclaimer": DISCLAIMER,
            "findings": [{
                "system": "http://snomed.info/sct", "code": "1386000", "display": "Intracranial hemorrhage",
                "score": 0.87, "critical": True, "body_site": "intracranial", "series_uid": SERIES,
                "instance_uids": INSTANCES,
                "measurements": [{"name": "volume", "value": 12.5, "unit": "mL"},
                                 {"name": "mean density", "value": 61.2, "unit": "[hnsf'U]"}],
            }],
        },
        "completed_at": "2026-11-21T09:20:00+00:00", "status": "preliminary",
        "report_id": "study-0001/head-ct-hyperdensity", "revision": 1,
    }  # fmt: skip
    fields.update(changes)
    return fields


def finding(**changes: Any) -> dict[str, Any]:
    return {**record()["result"]["findings"][0], **changes}


def with_findings(findings: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    base = record(**changes)
    return {**base, "result": {**base["result"], "findings": findings}}


def sr(fields: dict[str, Any], uid_root: str | None = None) -> Dataset:
    """Built, written as Part 10 and read back: what a PACS receives."""
    return dcmread(io.BytesIO(to_part10(build_sr(fields, uid_root=uid_root, now=NOW))))


def flatten(items: Any, depth: int = 1) -> list[tuple[int, str, str, str, str]]:
    """(depth, relationship, value type, concept name code value, value) for every content item."""
    out = []
    for item in items:
        names = item.get("ConceptNameCodeSequence")
        value = ""
        if item.ValueType in ("TEXT",):
            value = item.TextValue
        elif item.ValueType == "CODE":
            code = item.ConceptCodeSequence[0]
            value = f"{code.CodeValue}^{code.CodingSchemeDesignator}^{code.CodeMeaning}"
        elif item.ValueType == "NUM":
            measured = item.MeasuredValueSequence[0]
            value = f"{measured.NumericValue} {measured.MeasurementUnitsCodeSequence[0].CodeValue}"
        elif item.ValueType == "UIDREF":
            value = item.UID
        elif item.ValueType == "IMAGE":
            ref = item.ReferencedSOPSequence[0]
            value = f"{ref.ReferencedSOPClassUID}/{ref.ReferencedSOPInstanceUID}"
        out.append((depth, item.RelationshipType, item.ValueType, names[0].CodeValue if names else "", value))
        if "ContentSequence" in item:
            out += flatten(item.ContentSequence, depth + 1)
    return out


def tree(ds: Dataset) -> list[tuple[int, str, str, str, str]]:
    return [(0, "", ds.ValueType, ds.ConceptNameCodeSequence[0].CodeValue, ""), *flatten(ds.ContentSequence)]


DEVICE_UID = "2.25.127372747352368683024698234989624167106"  # uuid5 of model and version: stable across builds
STATEMENT = "AI-generated result of head-ct-hyperdensity 1.0.0, not verified by a radiologist."

HEAD: list[tuple[int, str, str, str, str]] = [
    (0, "", "CONTAINER", "126000", ""),
    (1, "HAS CONCEPT MOD", "CODE", "121049", "en-US^RFC5646^English (United States)"),
    (1, "HAS OBS CONTEXT", "CODE", "121005", "121007^DCM^Device"),
    (1, "HAS OBS CONTEXT", "UIDREF", "121012", DEVICE_UID),
    (1, "HAS OBS CONTEXT", "TEXT", "121013", "head-ct-hyperdensity"),
    (1, "HAS OBS CONTEXT", "TEXT", "121014", "radbridge"),
    (1, "HAS OBS CONTEXT", "TEXT", "121015", "head-ct-hyperdensity"),
    (1, "HAS CONCEPT MOD", "CODE", "121058", "25045-6^LN^CT unspecified body region"),
    (1, "CONTAINS", "CONTAINER", "111028", ""),
]


def golden(tracking_uid: str) -> list[tuple[int, str, str, str, str]]:
    return [
        *HEAD,
        (2, "CONTAINS", "CONTAINER", "126200", ""),
        (3, "CONTAINS", "IMAGE", "", f"{CT}/{INSTANCES[0]}"),
        (3, "CONTAINS", "IMAGE", "", f"{CT}/{INSTANCES[1]}"),
        (1, "CONTAINS", "CONTAINER", "126010", ""),
        (2, "CONTAINS", "CONTAINER", "125007", ""),
        (3, "HAS OBS CONTEXT", "TEXT", "112039", "Finding 1"),
        (3, "HAS OBS CONTEXT", "UIDREF", "112040", tracking_uid),
        (3, "CONTAINS", "CODE", "121071", "1386000^SCT^Intracranial hemorrhage"),
        (3, "HAS CONCEPT MOD", "CODE", "363698007", "1101003^SCT^Intracranial"),
        (3, "HAS CONCEPT MOD", "TEXT", "111001", "head-ct-hyperdensity"),
        (3, "HAS CONCEPT MOD", "TEXT", "111003", "1.0.0"),
        (3, "HAS CONCEPT MOD", "CODE", "111000", "123110^DCM^Artificial Intelligence"),
        (3, "CONTAINS", "NUM", "111012", "87.0 %"),
        (3, "CONTAINS", "NUM", "118565006", "12.5 mL"),
        (3, "CONTAINS", "NUM", "mean-density", "61.2 [hnsf'U]"),
        (3, "CONTAINS", "IMAGE", "260753009", f"{CT}/{INSTANCES[0]}"),
        (3, "CONTAINS", "IMAGE", "260753009", f"{CT}/{INSTANCES[1]}"),
        (3, "CONTAINS", "TEXT", "121106", "At or above the model's critical threshold."),
        (1, "CONTAINS", "CONTAINER", "C0034375", ""),
        (2, "CONTAINS", "TEXT", "121106", STATEMENT),
        (2, "CONTAINS", "TEXT", "121111", "Possible acute intracranial haemorrhage: hyperdense region of 12.5 mL."),
        (2, "CONTAINS", "TEXT", "121106", DISCLAIMER),
    ]


def test_golden_content_tree() -> None:
    ds = sr(record())
    tracking = flatten(ds.ContentSequence)[14][4]
    assert tracking.startswith("2.25.") and len(tracking) <= 64
    assert tree(ds) == golden(tracking)
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.ContentTemplateSequence[0].MappingResource == "DCMR"
    group = ds.ContentSequence[8].ContentSequence[0]
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
    names = [i.ConceptNameCodeSequence[0] for i in group.ContentSequence if "ConceptNameCodeSequence" in i]
    coded = {(n.CodeValue, n.CodingSchemeDesignator, n.CodeMeaning) for n in names}
    assert {("111012", "DCM", "Certainty of Finding"), ("mean-density", "99RADBRIDGE", "mean density")} <= coded
    assert [(i.CodingSchemeDesignator, i.CodingSchemeName) for i in ds.CodingSchemeIdentificationSequence] == [
        ("99RADBRIDGE", "radbridge: names of AI model outputs without a code")
    ]
    hu = group.ContentSequence[9].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (hu.CodeValue, hu.CodingSchemeDesignator, hu.CodeMeaning) == ("[hnsf'U]", "UCUM", "Hounsfield unit")


def test_header_modules_flags_and_references() -> None:
    raw = to_part10(build_sr(record(), uid_root=None, now=NOW))
    ds = dcmread(io.BytesIO(raw))
    uids = report_uids(InferenceResult.model_validate(record()))
    assert raw[128:132] == b"DICM" and ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == COMPREHENSIVE_SR
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == uids.instance
    assert (ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber) == (uids.series, "SR", 9900, 1)
    assert "SpecificCharacterSet" not in ds  # ASCII only: the default repertoire
    assert (ds.PatientName, ds.PatientID, ds.IssuerOfPatientID) == (f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}", phi.MRN,
                                                                   "GENHOSP")  # fmt: skip
    assert (ds.PatientBirthDate, ds.PatientSex) == (phi.DOB, "F")
    assert (ds.StudyInstanceUID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime) == (STUDY, phi.ACCESSION, "", "")
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == ("PARTIAL", "UNVERIFIED", "PRELIMINARY")
    assert (ds.ContentDate, ds.ContentTime) == ("20261121", "102000")  # completed_at in now's time zone
    assert (ds.InstanceCreationDate, ds.InstanceCreationTime, ds.TimezoneOffsetFromUTC) == (
        "20261121", "113005", "+0100")  # fmt: skip
    assert (ds.Manufacturer, ds.ManufacturerModelName) == ("radbridge", "radbridge")
    [request] = ds.ReferencedRequestSequence
    assert (request.StudyInstanceUID, request.AccessionNumber, request.PlacerOrderNumberImagingServiceRequest,
            request.FillerOrderNumberImagingServiceRequest, request.RequestedProcedureID,
            request.RequestedProcedureDescription) == (STUDY, phi.ACCESSION, "PLC1001", "FIL2002", "RP1",
                                                       "CT HEAD WITHOUT CONTRAST")  # fmt: skip
    assert request.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID == "GENHOSP"
    [evidence] = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == STUDY
    [series] = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == SERIES
    assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence] == [
        (CT, INSTANCES[0]), (CT, INSTANCES[1])]  # fmt: skip
    assert "PredecessorDocumentsSequence" not in ds
    assert ds.PerformedProcedureCodeSequence == [] and ds.ReferencedPerformedProcedureStepSequence == []


def test_same_record_same_bytes_and_uids_follow_the_report() -> None:
    first = to_part10(build_sr(record(), uid_root=None, now=NOW))
    assert to_part10(build_sr(InferenceResult.model_validate(record()), uid_root=None, now=NOW)) == first
    other = sr(record(report_id="study-0001/other-model"))
    assert other.SOPInstanceUID != dcmread(io.BytesIO(first)).SOPInstanceUID
    rooted = sr(record(), uid_root="1.2.826.0.1.3680043.10.1234")
    for uid in (rooted.SOPInstanceUID, rooted.SeriesInstanceUID, flatten(rooted.ContentSequence)[2][4]):
        assert uid.startswith("1.2.826.0.1.3680043.10.1234.") and len(uid) <= 64
    assert sr(record(), uid_root="1.2.826.0.1.3680043.10.1234").SOPInstanceUID == rooted.SOPInstanceUID
    chosen = build_sr(record(), uid_root=None, now=NOW, instance_uid="1.2.3", series_uid="1.2.4")
    assert (chosen.SOPInstanceUID, chosen.SeriesInstanceUID) == ("1.2.3", "1.2.4")


def test_a_correction_names_its_predecessor() -> None:
    first = sr(record())
    corrected = sr(record(status="corrected", revision=2, completed_at="2026-11-21T09:40:00+00:00"))
    assert corrected.SOPInstanceUID != first.SOPInstanceUID
    assert (corrected.SeriesInstanceUID, corrected.InstanceNumber) == (first.SeriesInstanceUID, 2)
    [previous] = corrected.PredecessorDocumentsSequence
    assert previous.StudyInstanceUID == STUDY
    [series] = previous.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence] == [
        (COMPREHENSIVE_SR, first.SOPInstanceUID)]  # fmt: skip
    statement = tree(corrected)[-3][4]
    assert statement == STATEMENT + " Corrected (revision 2): replaces the earlier AI report of this study."
    assert corrected.PreliminaryFlag == "PRELIMINARY" and corrected.ContentTime == "104000"


def test_a_withdrawal_says_so_and_references_no_images() -> None:
    corrected = sr(record(status="corrected", revision=2))
    withdrawn = sr(record(status="withdrawn", revision=3))
    assert tree(withdrawn) == [
        *HEAD,
        (1, "CONTAINS", "CONTAINER", "C0034375", ""),
        (2, "CONTAINS", "TEXT", "121106", "The AI result of head-ct-hyperdensity 1.0.0 was withdrawn (revision 3); "
                                         "disregard the earlier AI report of this study."),
    ]  # fmt: skip
    assert "CurrentRequestedProcedureEvidenceSequence" not in withdrawn
    ref = withdrawn.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == corrected.SOPInstanceUID


def test_no_findings_and_no_measurements_stay_valid_tid1500() -> None:
    empty = sr(with_findings([], critical=False))
    assert tree(empty) == [
        *HEAD,
        (1, "CONTAINS", "CONTAINER", "C0034375", ""),
        (2, "CONTAINS", "TEXT", "121106", STATEMENT),
        (2, "CONTAINS", "TEXT", "121111", "Possible acute intracranial haemorrhage: hyperdense region of 12.5 mL."),
        (2, "CONTAINS", "TEXT", "121106", DISCLAIMER),
    ]
    bare = sr(with_findings([finding(measurements=[], critical=False, body_site=None, series_uid=None)]))
    group = [row for row in tree(bare) if row[0] == 3]
    assert [row[3] for row in group] == ["112039", "112040", "121071", "111001", "111003", "111000", "111012"]
    assert "CurrentRequestedProcedureEvidenceSequence" not in bare and tree(bare)[9] == (
        1, "CONTAINS", "CONTAINER", "126010", "")  # fmt: skip


def test_codes_outside_dicom_get_private_designators() -> None:
    findings = [
        finding(system="urn:oid:2.16.840.1.113883.6.999", code="HEM-01", display="Haemorrhage (vendor code)",
                measurements=[{"name": "length", "value": 1 / 3, "unit": "mm", "code": "410668003"}]),
        finding(system="http://loinc.org", code="LP12345-678901234", display="A long LOINC part code",
                body_site="12738006", measurements=[]),
        finding(system="https://vendor.example/codes", code="x", display="Other", body_site="left frontal lobe",
                measurements=[{"name": "ratio", "value": 2.0, "unit": "{ratio}", "code": "R-1"}]),
    ]  # fmt: skip
    ds = sr(with_findings(findings))
    groups = ds.ContentSequence[8].ContentSequence
    finding_codes = [g.ContentSequence[2].ConceptCodeSequence[0] for g in groups]
    assert [(c.get("CodeValue"), c.get("LongCodeValue"), c.CodingSchemeDesignator) for c in finding_codes] == [
        ("HEM-01", None, "99RB1"), (None, "LP12345-678901234", "LN"), ("x", None, "99RB2")]  # fmt: skip
    assert [(i.CodingSchemeDesignator, i.CodingSchemeName) for i in ds.CodingSchemeIdentificationSequence] == [
        ("99RB1", "urn:oid:2.16.840.1.113883.6.999"), ("99RB2", "https://vendor.example/codes"),
        ("99RADBRIDGE", "radbridge: names of AI model outputs without a code")]  # fmt: skip
    length = groups[0].ContentSequence[8]
    assert length.ConceptNameCodeSequence[0].CodeValue == "410668003"  # SCT "Length", found by its code
    assert length.ConceptNameCodeSequence[0].CodingSchemeDesignator == "SCT"
    measured = length.MeasuredValueSequence[0]
    assert measured.NumericValue == "0.33333333333333" and measured.FloatingPointValue == 1 / 3  # DS is 16 chars
    site = groups[1].ContentSequence[3]
    assert (site.ValueType, site.ConceptCodeSequence[0].CodeMeaning) == ("CODE", "Brain")  # a SNOMED id
    site = groups[2].ContentSequence[3]
    assert (site.ValueType, site.TextValue) == ("TEXT", "left frontal lobe")  # no code: kept as text
    ratio = groups[2].ContentSequence[8].ConceptNameCodeSequence[0]
    assert (ratio.CodeValue, ratio.CodingSchemeDesignator, ratio.CodeMeaning) == ("R-1", "99RADBRIDGE", "ratio")


@pytest.mark.parametrize(
    "name, charset", [("Müller^Anna", "ISO_IR 100"), ("Ωmega^Zoë", "ISO_IR 192"), ("Plain^Ascii", None)]
)
def test_character_set_is_the_plainest_that_fits(name: str, charset: str | None) -> None:
    ds = sr(record(patient_name=name))
    assert ds.get("SpecificCharacterSet") == charset
    assert str(ds.PatientName) == name


def test_unknown_modality_references_no_instances() -> None:
    ds = sr(record(modality="OT"))
    assert "CurrentRequestedProcedureEvidenceSequence" not in ds
    assert not any(row[2] == "IMAGE" for row in tree(ds))
    assert tree(ds)[7] == (1, "HAS CONCEPT MOD", "CODE", "121058", "363679005^SCT^Imaging procedure")


@pytest.mark.parametrize(
    "fields, error",
    [
        (record(study_uid=None), "result has no valid study_uid"),
        (record(study_uid=f"{phi.MRN}"), "result has no valid study_uid"),
        (with_findings([finding(instance_uids=[phi.ACCESSION])]), r"result.findings\[0\].instance_uids is not"),
        (with_findings([finding(code=" ")]), r"result.findings\[0\].code is empty"),
    ],
)
def test_records_that_cannot_be_filed_are_refused_without_values(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error) as caught:
        build_sr(fields, uid_root=None, now=NOW)
    assert phi.leaks_in_bytes(str(caught.value).encode()) == []


@pytest.mark.parametrize(
    "fields",
    [
        record(),
        record(status="corrected", revision=2),
        record(status="withdrawn", revision=3),
        with_findings([], critical=False),
        record(patient_name="Müller^Anna"),
    ],
    ids=["preliminary", "corrected", "withdrawn", "no-findings", "latin-1"],
)
def test_dcmtk_dsrdump_reads_it_without_warnings(tmp_path: Path, fields: dict[str, Any]) -> None:
    path = tmp_path / "sr.dcm"
    path.write_bytes(to_part10(build_sr(fields, uid_root=None, now=NOW.astimezone(UTC))))
    run = subprocess.run(["dsrdump", "-v", str(path)], capture_output=True, timeout=20)
    output = (run.stdout + run.stderr).decode("latin-1")  # dsrdump prints names in the file's character set
    assert run.returncode == 0, output
    assert [line for line in output.splitlines() if line[:2] in ("W:", "E:", "F:")] == []
    assert "Comprehensive SR Document" in output and "Imaging Measurement Report" in output
