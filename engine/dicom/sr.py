"""An AI result as a DICOM Structured Report that PACS viewers without AI plug-ins can show.

`build_sr` turns a canonical `result` record into a Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33)
whose content follows TID 1500 "Measurement Report" (PS3.16). Comprehensive SR, because it is the
SR storage class PACS and viewers support most widely, takes every TID 1500 content item we write
(no 3D coordinates: Comprehensive 3D SR is not needed) and leaves room for image coordinates later;
dcmtk writes TID 1500 as Enhanced SR, highdicom offers Comprehensive (3D) SR — both are valid homes.

Content tree (codes from PS3.16 as pydicom.sr.codedict carries them; structure as dcmtk's dcmsr/libcmr
tid1500.cc, tid1501.cc, tid1600.cc and highdicom's sr/templates build it):

    CONTAINER (126000, DCM, "Imaging Measurement Report")                TID 1500
      HAS CONCEPT MOD  CODE (121049, DCM) = (en-US, RFC5646)             TID 1204 language
      HAS OBS CONTEXT  CODE (121005, DCM, Observer Type) = (121007, DCM, "Device")   TID 1002
      HAS OBS CONTEXT  UIDREF/TEXT (121012..121015, DCM) device UID, name, manufacturer, model   TID 1004
      HAS CONCEPT MOD  CODE (121058, DCM, "Procedure reported") = CID 100 code for the modality
      CONTAINS CONTAINER (111028, DCM, "Image Library")                  TID 1600, a group per series
      CONTAINS CONTAINER (126010, DCM, "Imaging Measurements")           (absent for a withdrawal)
        CONTAINS CONTAINER (125007, DCM, "Measurement Group")            TID 1501, one per finding:
          tracking id/UID (112039/112040), Finding (121071) = the finding's code, Finding Site
          (363698007, SCT), Algorithm Name/Version/Family (111001/111003/111000 = 123110 "Artificial
          Intelligence", TID 4019), source images (260753009, SCT), the score as NUM (111012, DCM,
          "Certainty of Finding") in percent, each measurement as NUM in UCUM units (TID 300)
      CONTAINS CONTAINER (C0034375, UMLS, "Qualitative Evaluations")
        CONTAINS TEXT (121106, DCM, "Comment")   what this is: AI-generated, unverified, status
        CONTAINS TEXT (121111, DCM, "Summary") / (121106, DCM, "Comment") summary and disclaimer

The score is a measurement, so every group holds one and stays a valid TID 1501 group even when the
model gave no measurements; a result without findings (or a withdrawal) is valid through the
Qualitative Evaluations container alone (TID 1500 asks for measurements or qualitative evaluations).

UIDs are derived, never random: the SR's series and instance UIDs from the study, the report id
(job id when none) and the revision, so a correction names its predecessor's UID by recomputing it
(PredecessorDocumentsSequence) and a resend of the same revision is the same instance. Under an
organisation root they are pydicom's SHA-512 derivation; without one, name-based UUIDs (2.25.<uuid5>).

The record carries instance UIDs but not their SOP classes; references (Image Library, source images,
CurrentRequestedProcedureEvidenceSequence) use the modality's usual storage class (CT Image Storage
for CT, ...), and instances of a modality not in that table, or without a series UID, are left out.

highdicom (maintained, TID 1500 built and checked by construction) would be the library of choice;
it is not in the project's dependencies, so this module writes the few templates it needs with pydicom.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cache
from importlib import metadata
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from engine.core.records import InferenceResult
from engine.core.result import Finding, Measurement

__all__ = ["COMPREHENSIVE_SR", "ReportUids", "build_sr", "report_uids", "to_part10"]

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
DCMR_UID = "1.2.840.10008.8.1.1"  # DICOM Content Mapping Resource
MANUFACTURER = "radbridge"
SERIES_NUMBER = 9900
LOCAL = "99RADBRIDGE"  # private coding scheme (PS3.16 8: designators starting "99") for uncoded names

Code = tuple[str, str, str]  # (code value, coding scheme designator, code meaning)

TITLE: Code = ("126000", "DCM", "Imaging Measurement Report")
LANGUAGE: Code = ("121049", "DCM", "Language of Content Item and Descendants")
EN_US: Code = ("en-US", "RFC5646", "English (United States)")
OBSERVER_TYPE: Code = ("121005", "DCM", "Observer Type")
DEVICE: Code = ("121007", "DCM", "Device")
DEVICE_UID: Code = ("121012", "DCM", "Device Observer UID")
DEVICE_NAME: Code = ("121013", "DCM", "Device Observer Name")
DEVICE_MANUFACTURER: Code = ("121014", "DCM", "Device Observer Manufacturer")
DEVICE_MODEL: Code = ("121015", "DCM", "Device Observer Model Name")
PROCEDURE_REPORTED: Code = ("121058", "DCM", "Procedure reported")
IMAGE_LIBRARY: Code = ("111028", "DCM", "Image Library")
IMAGE_LIBRARY_GROUP: Code = ("126200", "DCM", "Image Library Group")
IMAGING_MEASUREMENTS: Code = ("126010", "DCM", "Imaging Measurements")
MEASUREMENT_GROUP: Code = ("125007", "DCM", "Measurement Group")
TRACKING_ID: Code = ("112039", "DCM", "Tracking Identifier")
TRACKING_UID: Code = ("112040", "DCM", "Tracking Unique Identifier")
FINDING: Code = ("121071", "DCM", "Finding")
FINDING_SITE: Code = ("363698007", "SCT", "Finding Site")
ALGORITHM_NAME: Code = ("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION: Code = ("111003", "DCM", "Algorithm Version")
ALGORITHM_FAMILY: Code = ("111000", "DCM", "Algorithm Family")
ARTIFICIAL_INTELLIGENCE: Code = ("123110", "DCM", "Artificial Intelligence")
SOURCE: Code = ("260753009", "SCT", "Source")
CERTAINTY: Code = ("111012", "DCM", "Certainty of Finding")
PERCENT: Code = ("%", "UCUM", "Percent")
QUALITATIVE_EVALUATIONS: Code = ("C0034375", "UMLS", "Qualitative Evaluations")
SUMMARY: Code = ("121111", "DCM", "Summary")
COMMENT: Code = ("121106", "DCM", "Comment")

# CID 100 "Quantitative Diagnostic Imaging Procedure" by modality; (363679005, SCT) otherwise
PROCEDURES: dict[str, Code] = {
    "CT": ("25045-6", "LN", "CT unspecified body region"),
    "MR": ("25056-3", "LN", "MRI unspecified body region"),
    "PT": ("44136-0", "LN", "PET unspecified body region"),
    "NM": ("49118-3", "LN", "NM unspecified body region"),
    "CR": ("43468-8", "LN", "XR unspecified body region"),
    "DX": ("43468-8", "LN", "XR unspecified body region"),
}
IMAGING_PROCEDURE: Code = ("363679005", "SCT", "Imaging procedure")

# The usual storage SOP class of a modality's images (the record names instances, not their classes)
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4", "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1", "MG": "1.2.840.10008.5.1.4.1.1.1.2", "IO": "1.2.840.10008.5.1.4.1.1.1.3",
    "US": "1.2.840.10008.5.1.4.1.1.6.1", "NM": "1.2.840.10008.5.1.4.1.1.20", "PT": "1.2.840.10008.5.1.4.1.1.128",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1", "RF": "1.2.840.10008.5.1.4.1.1.12.2",
}  # fmt: skip

# FHIR code system URIs (and bare designators) -> DICOM coding scheme designators (PS3.16 8)
SYSTEMS = {
    "http://snomed.info/sct": "SCT", "http://loinc.org": "LN", "http://dicom.nema.org/resources/ontology/DCM": "DCM",
    "http://radlex.org": "RADLEX", "http://www.radlex.org": "RADLEX", "http://unitsofmeasure.org": "UCUM",
    "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl": "NCIt", "http://hl7.org/fhir/sid/icd-10": "I10",
    "http://www.nlm.nih.gov/research/umls": "UMLS",
    **{d: d for d in ("SCT", "LN", "DCM", "RADLEX", "UCUM", "NCIt", "I10", "UMLS")},
}  # fmt: skip

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_NAMESPACE = uuid.UUID("5d1d0c0e-6b8a-5a57-9c38-7a3f2f8f6b10")  # ours: only keeps our 2.25 UIDs apart
_SEX = {"F": "F", "M": "M", "O": "O"}


@dataclass(frozen=True)
class ReportUids:
    series: str
    instance: str
    predecessor: str | None  # the SOP instance UID of revision - 1, for a correction or withdrawal


def _uid(uid_root: str | None, *parts: str) -> str:
    text = "\x1f".join(("radbridge-sr", *parts))  # a separator, so ("ab", "c") and ("a", "bc") differ
    if uid_root:
        return str(generate_uid(prefix=uid_root.rstrip(".") + ".", entropy_srcs=[text]))
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, text).int}"


def _report_key(record: InferenceResult) -> tuple[str, str]:
    if not record.study_uid or not _UID.match(record.study_uid) or len(record.study_uid) > 64:
        raise ValueError("result has no valid study_uid")
    return record.study_uid, record.report_id or f"job:{record.job_id}"


def report_uids(record: InferenceResult, uid_root: str | None = None) -> ReportUids:
    """The SR's series UID (one per AI report), instance UID (one per revision) and predecessor UID."""
    study, report = _report_key(record)
    previous = _uid(uid_root, "instance", study, report, str(record.revision - 1)) if record.revision > 1 else None
    return ReportUids(_uid(uid_root, "series", study, report), _uid(uid_root, "instance", study, report,
                                                                       str(record.revision)), previous)  # fmt: skip


# -- codes -------------------------------------------------------------------------------------


@cache
def _dictionary(scheme: str) -> dict[str, Code]:
    """Code value -> code of one coding scheme, from pydicom's copy of the PS3.16 tables. Of a code's
    meanings the shortest wins: DICOM's ("Brain") over SNOMED's fully specified name ("Brain structure
    (body structure)")."""
    found: dict[str, Code] = {}
    for c in getattr(codes, scheme).concepts.values():
        if c.value not in found or len(c.meaning) < len(found[c.value][2]):
            found[c.value] = (c.value, c.scheme_designator, c.meaning)
    return found


@cache
def _by_meaning(group: str) -> dict[str, Code]:
    """Lower-cased meaning -> code: a CID's concepts, or 'SCT' for SNOMED meanings that are unique."""
    concepts = getattr(codes, group).concepts.values()
    found: dict[str, list[Code]] = {}
    for c in concepts:
        found.setdefault(c.meaning.lower(), []).append((c.value, c.scheme_designator, c.meaning))
    return {meaning: hits[0] for meaning, hits in found.items() if len({h[0] for h in hits}) == 1}


def _meaning(text: str) -> str:
    return text.replace("\\", "/")[:64] or "-"  # LO: no backslash, 64 characters


@dataclass
class _Schemes:
    """Coding schemes met while building: those outside PS3.16 get a private designator each."""

    private: dict[str, str] = field(default_factory=dict)  # system -> 99RB<n>
    local: bool = False

    def designator(self, system: str) -> str:
        known = SYSTEMS.get(system.strip()) or SYSTEMS.get(system.strip().rstrip("/"))
        if known:
            return known
        return self.private.setdefault(system, f"99RB{len(self.private) + 1}")

    def identification(self) -> list[Dataset]:
        items = []
        for system, designator in [*self.private.items(), *([("", LOCAL)] if self.local else [])]:
            item = Dataset()
            item.CodingSchemeDesignator = designator
            item.CodingSchemeName = system or "radbridge: names of AI model outputs without a code"
            items.append(item)
        return items

    def measurement(self, m: Measurement) -> Code:
        if m.code:
            for scheme in ("SCT", "LN", "DCM"):
                if m.code in _dictionary(scheme):
                    return _dictionary(scheme)[m.code]
            self.local = True
            return (m.code, LOCAL, _meaning(m.name))
        known = _by_meaning("cid7469").get(m.name.strip().lower())  # CID 7469 Generic Intensity and Size
        if known:
            return known
        self.local = True
        return (re.sub(r"[^a-z0-9]+", "-", m.name.lower()).strip("-") or "measurement", LOCAL, _meaning(m.name))


def _unit(unit: str) -> Code:
    known = _dictionary("UCUM").get(unit)
    return known or (unit, "UCUM", _meaning(unit))


def _site(site: str) -> Code | None:
    text = site.strip()
    if text.isdigit():
        return _dictionary("SCT").get(text)
    return _by_meaning("cid4031").get(text.lower()) or _by_meaning("SCT").get(text.lower())


# -- content items -----------------------------------------------------------------------------


def _code(code: Code) -> Dataset:
    value, scheme, meaning = code
    ds = Dataset()
    if value.startswith("urn:") or "://" in value:
        ds.URNCodeValue = value
    elif len(value) > 16:
        ds.LongCodeValue = value
    else:
        ds.CodeValue = value
    ds.CodingSchemeDesignator = scheme
    ds.CodeMeaning = _meaning(meaning)
    return ds


def _item(relationship: str, value_type: str, name: Code | None) -> Dataset:
    ds = Dataset()
    ds.RelationshipType = relationship
    ds.ValueType = value_type
    if name is not None:
        ds.ConceptNameCodeSequence = [_code(name)]
    return ds


def _container(relationship: str, name: Code, children: Iterable[Dataset], template: str | None = None) -> Dataset:
    ds = _item(relationship, "CONTAINER", name)
    ds.ContinuityOfContent = "SEPARATE"
    if template:
        ds.ContentTemplateSequence = [_template(template)]
    ds.ContentSequence = list(children)
    return ds


def _template(identifier: str) -> Dataset:
    ds = Dataset()
    ds.MappingResource, ds.MappingResourceUID, ds.TemplateIdentifier = "DCMR", DCMR_UID, identifier
    return ds


def _text(relationship: str, name: Code, value: str) -> Dataset:
    ds = _item(relationship, "TEXT", name)
    ds.TextValue = value
    return ds


def _coded(relationship: str, name: Code, value: Code) -> Dataset:
    ds = _item(relationship, "CODE", name)
    ds.ConceptCodeSequence = [_code(value)]
    return ds


def _uidref(relationship: str, name: Code, value: str) -> Dataset:
    ds = _item(relationship, "UIDREF", name)
    ds.UID = value
    return ds


def _ds_text(value: float) -> tuple[str, bool]:
    """DS text of a value and whether it is exact (else Floating Point Value carries it too)."""
    text = repr(float(value))
    if "e" in text or "n" in text or len(text) > 16:
        text = format_number_as_ds(float(value))
    return text, float(text) == float(value)


def _num(name: Code, value: float, unit: Code) -> Dataset:
    ds = _item("CONTAINS", "NUM", name)
    measured = Dataset()
    measured.NumericValue, exact = _ds_text(value)
    if not exact:
        measured.FloatingPointValue = float(value)
    measured.MeasurementUnitsCodeSequence = [_code(unit)]
    ds.MeasuredValueSequence = [measured]
    return ds


def _image(relationship: str, name: Code | None, sop_class: str, sop_instance: str) -> Dataset:
    ds = _item(relationship, "IMAGE", name)
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_instance
    ds.ReferencedSOPSequence = [ref]
    return ds


def _sop_ref(sop_class: str, sop_instance: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_instance
    return ref


# -- the document ------------------------------------------------------------------------------


def _references(record: InferenceResult) -> dict[str, list[str]]:
    """Series UID -> instance UIDs the findings name, in order, each once; [] when none can be referenced."""
    refs: dict[str, list[str]] = {}
    if _sop_class(record) is None or record.status == "withdrawn":  # a withdrawal points at no images
        return refs
    for n, finding in enumerate(record.result.findings):
        if not finding.series_uid:
            continue
        for name, uid in [("series_uid", finding.series_uid), *(("instance_uids", u) for u in finding.instance_uids)]:
            if not _UID.match(uid) or len(uid) > 64:
                raise ValueError(f"result.findings[{n}].{name} is not a DICOM UID")
        instances = refs.setdefault(finding.series_uid, [])
        instances.extend(u for u in finding.instance_uids if u not in instances)
    return {series: instances for series, instances in refs.items() if instances}


def _sop_class(record: InferenceResult) -> str | None:
    modality = (record.modality or "").split("\\")[0].strip().upper()
    return SOP_CLASSES.get(modality)


def _group(record: InferenceResult, n: int, finding: Finding, schemes: _Schemes, uid_root: str | None) -> Dataset:
    study, report = _report_key(record)
    if not finding.code.strip():
        raise ValueError(f"result.findings[{n - 1}].code is empty")
    tracking = _uid(uid_root, "tracking", study, report, str(n), finding.system, finding.code)
    items = [
        _text("HAS OBS CONTEXT", TRACKING_ID, f"Finding {n}"),
        _uidref("HAS OBS CONTEXT", TRACKING_UID, tracking),
        _coded("CONTAINS", FINDING, (finding.code, schemes.designator(finding.system), finding.display)),
    ]
    if finding.body_site:
        site = _site(finding.body_site)
        items.append(_coded("HAS CONCEPT MOD", FINDING_SITE, site) if site
                     else _text("HAS CONCEPT MOD", FINDING_SITE, finding.body_site))  # fmt: skip
    items += [
        _text("HAS CONCEPT MOD", ALGORITHM_NAME, record.model),
        _text("HAS CONCEPT MOD", ALGORITHM_VERSION, record.version),
        _coded("HAS CONCEPT MOD", ALGORITHM_FAMILY, ARTIFICIAL_INTELLIGENCE),
        _num(CERTAINTY, float(Decimal(repr(finding.score)) * 100), PERCENT),
    ]
    items += [_num(schemes.measurement(m), m.value, _unit(m.unit)) for m in finding.measurements]
    sop_class = _sop_class(record)
    if sop_class and finding.series_uid:
        items += [_image("CONTAINS", SOURCE, sop_class, uid) for uid in dict.fromkeys(finding.instance_uids)]
    if finding.critical:
        items.append(_text("CONTAINS", COMMENT, "At or above the model's critical threshold."))
    return _container("CONTAINS", MEASUREMENT_GROUP, items, template="1501")


def _statement(record: InferenceResult) -> str:
    who = f"{record.model} {record.version}"
    if record.status == "withdrawn":
        return (f"The AI result of {who} was withdrawn (revision {record.revision}); disregard the earlier AI "
                "report of this study.")  # fmt: skip
    text = f"AI-generated result of {who}, not verified by a radiologist."
    if record.status == "corrected":
        text += f" Corrected (revision {record.revision}): replaces the earlier AI report of this study."
    return text


def _content(record: InferenceResult, refs: dict[str, list[str]], schemes: _Schemes,
             uid_root: str | None) -> list[Dataset]:  # fmt: skip
    modality = (record.modality or "").split("\\")[0].strip().upper()
    sop_class = _sop_class(record)
    library = [
        _container("CONTAINS", IMAGE_LIBRARY_GROUP, [_image("CONTAINS", None, sop_class, uid) for uid in instances])
        for instances in refs.values()
        if sop_class
    ]
    items = [
        _coded("HAS CONCEPT MOD", LANGUAGE, EN_US),
        _coded("HAS OBS CONTEXT", OBSERVER_TYPE, DEVICE),
        _uidref("HAS OBS CONTEXT", DEVICE_UID, _uid(uid_root, "device", record.model, record.version)),
        _text("HAS OBS CONTEXT", DEVICE_NAME, record.model),
        _text("HAS OBS CONTEXT", DEVICE_MANUFACTURER, MANUFACTURER),
        _text("HAS OBS CONTEXT", DEVICE_MODEL, record.model),
        _coded("HAS CONCEPT MOD", PROCEDURE_REPORTED, PROCEDURES.get(modality, IMAGING_PROCEDURE)),
        _container("CONTAINS", IMAGE_LIBRARY, library),
    ]
    findings = [] if record.status == "withdrawn" else record.result.findings
    if findings:
        groups = [_group(record, n, f, schemes, uid_root) for n, f in enumerate(findings, 1)]
        items.append(_container("CONTAINS", IMAGING_MEASUREMENTS, groups))
    evaluations = [_text("CONTAINS", COMMENT, _statement(record))]
    if record.status != "withdrawn":
        summary, disclaimer = record.result.summary.strip(), (record.result.disclaimer or "").strip()
        if summary:
            evaluations.append(_text("CONTAINS", SUMMARY, summary))
        if disclaimer and disclaimer not in summary:
            evaluations.append(_text("CONTAINS", COMMENT, disclaimer))
    items.append(_container("CONTAINS", QUALITATIVE_EVALUATIONS, evaluations))
    return items


def _requests(record: InferenceResult) -> list[Dataset]:
    """ReferencedRequestSequence: one item per matched order (or per accession when none matched)."""
    orders: list[Any] = list(record.orders) or [None] * len(record.accessions)
    items = []
    for n, order in enumerate(orders):
        item = Dataset()
        item.StudyInstanceUID = record.study_uid
        item.ReferencedStudySequence = []
        item.AccessionNumber = (order.accession if order else record.accessions[n]) or ""
        issuer = order.accession_issuer if order else None
        if issuer:
            namespace = Dataset()
            namespace.LocalNamespaceEntityID = issuer
            item.IssuerOfAccessionNumberSequence = [namespace]
        else:
            item.IssuerOfAccessionNumberSequence = []
        item.PlacerOrderNumberImagingServiceRequest = (order.placer_number if order else None) or ""
        item.OrderPlacerIdentifierSequence = []
        item.FillerOrderNumberImagingServiceRequest = (order.filler_number if order else None) or ""
        item.OrderFillerIdentifierSequence = []
        item.RequestedProcedureID = (order.requested_procedure_id if order else None) or ""
        item.RequestedProcedureDescription = ((order.procedure_text if order else None) or record.procedure_text
                                              or "")  # fmt: skip
        item.RequestedProcedureCodeSequence = []  # the RIS's local code has no known coding scheme
        items.append(item)
    return items


def _hierarchical(study: str, series: dict[str, list[tuple[str, str]]]) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = study
    item.ReferencedSeriesSequence = []
    for series_uid, instances in series.items():
        s = Dataset()
        s.SeriesInstanceUID = series_uid
        s.ReferencedSOPSequence = [_sop_ref(c, i) for c, i in instances]
        item.ReferencedSeriesSequence.append(s)
    return item


def _birth_date(value: str | None) -> str:
    digits = re.sub(r"[^0-9]", "", (value or "")[:10])
    return digits if len(digits) == 8 else ""


def _charset(record: InferenceResult) -> str | None:
    """The plainest character set the record's text fits: none (ASCII), Latin-1, else UTF-8 — what
    most PACS and dcmtk's checker handle best."""
    text = record.model_dump_json()  # every string the document takes from the record
    for charset, codec in ((None, "ascii"), ("ISO_IR 100", "latin-1")):
        try:
            text.encode(codec)
            return charset
        except UnicodeEncodeError:
            pass
    return "ISO_IR 192"


def _software_version() -> str:
    try:
        return metadata.version("radbridge")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_sr(
    record: InferenceResult | dict[str, Any],
    *,
    uid_root: str | None,
    now: datetime,
    instance_uid: str | None = None,
    series_uid: str | None = None,
) -> Dataset:
    """The result as a Comprehensive SR (TID 1500), file meta included. `record` is the canonical
    result (or its `fields` as JSON-ready dict); `now` stamps the instance creation (and its time
    zone the content time). ValueError, naming fields and never values, when the record cannot be
    filed into its study (no valid study UID, a finding UID that is not a UID)."""
    if not isinstance(record, InferenceResult):
        record = InferenceResult.model_validate(record)
    uids = report_uids(record, uid_root)
    refs = _references(record)
    schemes = _Schemes()
    ds = Dataset()
    charset = _charset(record)
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = instance_uid or uids.instance
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    if now.utcoffset() is not None:
        ds.TimezoneOffsetFromUTC = now.strftime("%z")
    # Patient, General Study (type 2 attributes present, empty when unknown)
    ds.PatientName = record.patient_name or ""
    ds.PatientID = record.patient_id or ""
    if record.patient_id_issuer:
        ds.IssuerOfPatientID = record.patient_id_issuer
    ds.PatientBirthDate = _birth_date(record.birth_date)
    ds.PatientSex = _SEX.get((record.sex or "").upper(), "")
    ds.StudyInstanceUID = record.study_uid
    ds.StudyDate = ds.StudyTime = ds.ReferringPhysicianName = ds.StudyID = ""
    ds.AccessionNumber = next((a for a in [*record.accessions, *(o.accession for o in record.orders)] if a), "")
    # SR Document Series, General Equipment
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid or uids.series
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = _meaning(f"AI results {record.model}")
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.Manufacturer = ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = _software_version()
    # SR Document General
    ds.InstanceNumber = record.revision
    ds.CompletionFlag = "PARTIAL"
    ds.CompletionFlagDescription = "AI-generated result, not verified by a radiologist"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PreliminaryFlag = "PRELIMINARY"  # AI output is never a final report, whatever its revision
    content_time = record.completed_at.astimezone(now.tzinfo) if now.tzinfo else record.completed_at
    ds.ContentDate, ds.ContentTime = content_time.strftime("%Y%m%d"), content_time.strftime("%H%M%S")
    if record.orders or record.accessions:
        ds.ReferencedRequestSequence = _requests(record)
    ds.PerformedProcedureCodeSequence = []
    sop_class = _sop_class(record)
    if refs and sop_class:
        evidence = {series: [(sop_class, uid) for uid in instances] for series, instances in refs.items()}
        ds.CurrentRequestedProcedureEvidenceSequence = [_hierarchical(record.study_uid or "", evidence)]
    if uids.predecessor:
        previous = {ds.SeriesInstanceUID: [(COMPREHENSIVE_SR, uids.predecessor)]}
        ds.PredecessorDocumentsSequence = [_hierarchical(record.study_uid or "", previous)]
    # SR Document Content: the root container
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(TITLE)]
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentTemplateSequence = [_template("1500")]
    ds.ContentSequence = _content(record, refs, schemes, uid_root)
    identification = schemes.identification()
    if identification:
        ds.CodingSchemeIdentificationSequence = identification
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def to_part10(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (preamble, file meta, Explicit VR Little Endian), in memory."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
