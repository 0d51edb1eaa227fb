"""mappings/oru-to-report.yaml: the radiologist's report (ORU^R01 from the RIS) -> a `report`
record; and the inbound grammar it uses: `join`, and `when` testing each occurrence."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from engine.mapping import MappingError, MappingRefused, Record
from tests import phi
from tests.mapping.util import TZ, compile_yaml, er7, sample, sample_text, shipped

REPORT = shipped("oru-to-report.yaml")
MSH = "MSH|^~\\&|RIS|GENHOSP|RADBRIDGE|AIHUB|20261121153000||ORU^R01|C1|P|2.3.1"
PID = f"PID|1||{phi.MRN}^^^GENHOSP^MR||{phi.NAME_FAMILY}^{phi.NAME_GIVEN}"


def test_final_report_sample() -> None:
    (record,) = REPORT.apply(sample("oru-r01-final-report.hl7"), site_tz=TZ)
    assert (record.type, record.topic) == ("report", "report.final")
    assert record.fields == {
        "accession": phi.ACCESSION,
        "placer_number": "PLC1001",
        "filler_number": phi.ACCESSION,
        "patient_id": phi.MRN,
        "patient_id_issuer": "GENHOSP",
        "study_uid": "1.2.826.0.1.3680043.10.1234.1001",
        "procedure_code": "CTHEAD",
        "status": "F",
        "observed_at": datetime(2026, 11, 21, 10, 30, tzinfo=TZ),
        "reported_at": datetime(2026, 11, 21, 15, 25, tzinfo=timezone(timedelta(hours=1))),
        "interpreter": "FAKERAD-0007",
        "text": "Acute intraparenchymal haemorrhage, left frontal lobe, approx. 12 mL.\n"
        "Mild mass effect & 4 mm midline shift.\nAcute intracranial haemorrhage.",
        "sending_application": "RIS",
    }
    assert Record.from_json(record.to_json()) == record
    assert not phi.leaks_in_bytes(repr(record).encode())


@pytest.mark.parametrize(("status", "topic"), [("F", "report.final"), ("C", "report.corrected"),
                                               ("P", "report.preliminary"), ("X", "report.cancelled"),
                                               ("I", "report.received")])  # fmt: skip
def test_topic_follows_the_result_status(status: str, topic: str) -> None:
    text = sample_text("oru-r01-final-report.hl7").replace("||CT|F|", f"||CT|{status}|")
    (record,) = REPORT.apply(er7(*text.split("\r")[:-1]), site_tz=TZ)
    assert (record.topic, record.fields["status"]) == (topic, status)


def test_occurrences_are_chosen_by_their_own_fields() -> None:
    (record,) = REPORT.apply(
        er7(
            MSH, PID,
            "OBR|1|P1|F1|CT1|||||||||||||||||||||F|||||||DOC-1&DOCTOR&A",
            "OBX|1|CE|1386000^Intracranial hemorrhage^SCT||260373001^Detected^SCT||||||F",
            "OBX|2|TX|&GDT||First line.~~Third line||||||F",
            "OBX|3|ST|110180^Study Instance UID^DCM||1.2.3.4||||||F",
            "OBX|4|ST|113014^DICOM Study^DCM||9.9.9.9||||||F",
            "OBX|5|FT|&IMP||Impression.||||||F",
        ),
        site_tz=TZ,
    )  # fmt: skip
    assert record.fields["study_uid"] == "1.2.3.4"  # the first OBX that is a study reference
    assert record.fields["text"] == "First line.\nThird line\nImpression."  # empty repetitions skipped
    assert (record.fields["interpreter"], record.fields["accession"]) == ("DOC-1", "F1")


def test_a_report_without_text_or_study_leaves_them_out() -> None:
    (record,) = REPORT.apply(er7(MSH, PID, "OBR|1|P1|F1|CT1|||||||||||||||||||||F"), site_tz=TZ)
    assert "text" not in record.fields and "study_uid" not in record.fields


def test_refusals_and_errors_carry_no_patient_data() -> None:
    with pytest.raises(MappingRefused) as refused:
        REPORT.apply(sample("orm-o01-ct-head.hl7"), site_tz=TZ)
    assert refused.value.code == 200
    with pytest.raises(MappingError) as info:
        REPORT.apply(er7(MSH, PID, "OBR|1|P1|F1|CT1", f"OBX|1|TX|X||{phi.NAME_FAMILY} report"), site_tz=TZ)
    assert str(info.value) == "mapping oru-to-report: required field 'status' is empty (tried OBR-25)"
    assert not phi.leaks_in_bytes(str(info.value).encode())


def test_join_and_per_occurrence_when_in_a_small_mapping() -> None:
    mapping = compile_yaml(
        "from: hl7v2\nto: order\nfields:\n  event: { value: accepted }\n"
        "  reason: { from: ['NTE[*]-3', 'OBR-13'], join: ' / ', fn: trim }\n"
        "  body_part: { from: 'OBX[*]-5', when: { path: 'OBX[*]-3', equals: SITE }, fn: upper }\n"
        "  modality: { from: 'OBX[2]-5', when: { path: 'OBX[*]-3', equals: MOD } }\n"
    )
    msg = er7(MSH, "OBR|1||||||||||||Fallback", "NTE|1||  one ", "NTE|2||two~three", "OBX|1|ST|MOD||CT",
              "OBX|2|ST|SITE||head")  # fmt: skip
    (record,) = mapping.apply(msg, site_tz=TZ)
    # join reads every NTE and every repetition (the first path with values wins); `when` on OBX[*]
    # tests each OBX; for a path without [*] it is a plain test (the first OBX-3 is MOD: OBX[2] is read).
    assert record.fields["reason"] == "one / two / three"
    assert record.fields["body_part"] == "HEAD"
    assert record.fields["modality"] == "head"
    (record,) = mapping.apply(er7(MSH, "OBR|1||||||||||||Fallback"), site_tz=TZ)
    assert record.fields["reason"] == "Fallback" and "body_part" not in record.fields
