"""The shipped outbound HL7 mappings: AI results as ORU^R01 (v2.5.1 and v2.3.1), priority changes as
ORM^O01 XO and OMI^O23 XO. A fixed record gives byte-stable ER7 equal to the golden file, valid for
hl7apy's structure check and readable by python-hl7 with the expected segments."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import hl7
import pytest

from engine.hl7v2 import Message
from engine.hl7v2.validate import validate_structure
from engine.mapping import MappingError, Record
from engine.mapping.functions import control_id
from tests import phi
from tests.mapping.results import NOW, STUDY_UID, Status, priority_record, result_record
from tests.mapping.util import TZ, shipped

GOLDEN = Path(__file__).parent / "golden"
ORU = {"2.5.1": shipped("result-to-oru.yaml"), "2.3.1": shipped("result-to-oru-231.yaml")}
XO = shipped("priority-to-orm-xo.yaml")
OMI = shipped("priority-to-omi.yaml")

# Segments by id: 3 findings -> 3 finding OBX + 3 score OBX + 2 measurement OBX + the study OBX.
ORU_SEGMENTS = {
    "preliminary": {"MSH": 1, "PID": 1, "PV1": 1, "ORC": 1, "OBR": 1, "NTE": 4, "OBX": 9},
    "corrected": {"MSH": 1, "PID": 1, "PV1": 1, "ORC": 1, "OBR": 1, "NTE": 4, "OBX": 7},  # 2 findings
    "withdrawn": {"MSH": 1, "PID": 1, "PV1": 1, "ORC": 1, "OBR": 1, "NTE": 5, "OBX": 9},  # + withdrawal note
}
CASES = [
    (version, status, f"oru-r01-{version.replace('.', '')}-{status}.hl7")
    for version in ("2.5.1", "2.3.1")
    for status in ("preliminary", "corrected", "withdrawn")
]


def oru(version: str, status: Status) -> str:
    control = f"RBORU{status[:4].upper()}0001"
    return ORU[version].build(result_record(status), site_tz=TZ, control_id=control, now=NOW)


def golden(name: str) -> str:
    data = (GOLDEN / name).read_bytes()
    assert b"\n" not in data and data.endswith(b"\r")
    return data.decode("utf-8")


def counts(text: str) -> dict[str, int]:
    """Segments by id as python-hl7 (an independent parser) reads the message."""
    parsed = hl7.parse(text)
    return dict(Counter(str(segment[0]) for segment in parsed))


@pytest.mark.parametrize(("version", "status", "name"), CASES)
def test_oru_matches_its_golden_file_and_its_structure(version: str, status: Status, name: str) -> None:
    text = oru(version, status)
    assert text == golden(name)
    assert oru(version, status) == text  # byte-stable
    assert validate_structure(text) is None
    assert counts(text) == ORU_SEGMENTS[status]
    msg = Message.parse(text)
    assert (msg.get("MSH-9"), msg.version, msg.sending_app) == ("ORU^R01^ORU_R01", version, "RADBRIDGE")


@pytest.mark.parametrize(("status", "obr25", "obx11"), [("preliminary", "P", "P"), ("corrected", "C", "C"),
                                                        ("withdrawn", "C", "W")])  # fmt: skip
def test_result_status_codes(status: Status, obr25: str, obx11: str) -> None:
    msg = Message.parse(oru("2.5.1", status))
    assert msg.get("OBR-25") == obr25
    obx = msg.segments("OBX")
    assert obx[0].get("OBX-11") == "O"  # the study reference: order detail, not a result
    assert {seg.get("OBX-11") for seg in obx[1:]} == {obx11}
    notes = [seg.get("NTE-3") for seg in msg.segments("NTE")]
    assert notes[0] == "AI-generated preliminary result; not verified by a radiologist."
    assert any("withdrawn" in n for n in notes) is (status == "withdrawn")


def test_oru_fields_from_the_record() -> None:
    msg = Message.parse(oru("2.5.1", "preliminary"))
    assert msg.get("MSH-7") == "20261121104500+0100" and msg.control_id == "RBORUPREL0001"
    assert (msg.get("PID-3.1"), msg.get("PID-3.4"), msg.get("PID-3.5")) == (phi.MRN, "GENHOSP", "MR")
    assert (msg.get("PID-5.1"), msg.get("PID-5.2"), msg.get("PID-7"), msg.get("PID-8")) == (
        phi.NAME_FAMILY, phi.NAME_GIVEN, phi.DOB, "F"
    )  # fmt: skip
    assert (msg.get("PV1-2"), msg.get("ORC-1"), msg.get("ORC-2"), msg.get("ORC-3")) == (
        "U", "RE", "PLC1001", phi.ACCESSION
    )  # fmt: skip
    assert (msg.get("OBR-4.1"), msg.get("OBR-18"), msg.get("OBR-24")) == ("CTHEAD", phi.ACCESSION, "RAD")
    assert msg.get("OBR-7") == msg.get("OBR-22") == "20261121104207+0100"  # completed_at 09:42:07 UTC
    study, finding, score, volume = msg.segments("OBX")[:4]
    assert (study.get("OBX-2"), study.get("OBX-3"), study.get("OBX-5")) == ("ST", "113014^DICOM Study^DCM", STUDY_UID)
    assert [finding.get(f"OBX-{n}") for n in (1, 2, 3, 4, 5, 8, 17)] == [
        "2", "CWE", "1386000^Intracranial hemorrhage^SCT", "1", "260373001^Detected^SCT", "AA", "ich-detector^2.1.0"
    ]  # fmt: skip
    assert [score.get(f"OBX-{n}") for n in (2, 3, 4, 5, 6)] == [
        "NM", "AISCORE^AI model score^99RB", "1", "0.97", "{probability}^^UCUM"
    ]  # fmt: skip
    assert [volume.get(f"OBX-{n}") for n in (2, 3, 4, 5, 6)] == ["NM", "VOL^volume^99RB", "1", "12.5", "mL^^UCUM"]
    coded = [s.get("OBX-3") for s in msg.segments("OBX") if s.get("OBX-2") == "CWE"]
    assert coded[1:] == ["MIDLINE-SHIFT^Midline shift^99RB", "230745008^Hydrocephalus^SCT"]  # 99RB: unknown system
    assert [s.get("OBX-1") for s in msg.segments("OBX")] == [str(n) for n in range(1, 10)]


def test_v231_uses_ce_and_a_study_sub_id() -> None:
    msg = Message.parse(oru("2.3.1", "preliminary"))
    assert {s.get("OBX-2") for s in msg.segments("OBX")} == {"ST", "CE", "NM"}
    assert msg.segments("OBX")[0].get("OBX-4") == "0"
    assert Message.parse(oru("2.5.1", "preliminary")).segments("OBX")[0].get("OBX-4") is None


def test_runtime_record_forms_give_the_same_message() -> None:
    """The transform hands mappings Record.from_json(...) records; a JSON-mode dump (dates as text)
    and the validated dump give the same bytes."""
    from engine.mapping.records import InferenceResult

    fields = result_record()
    as_json = InferenceResult.model_validate(fields).model_dump(mode="json", exclude_none=True)
    stored = Record.from_json(Record("result", "inference.completed", as_json).to_json())
    built = {ORU["2.5.1"].build(f, site_tz=TZ, control_id="C1", now=NOW) for f in (fields, as_json, stored)}
    assert len(built) == 1
    (record,) = ORU["2.5.1"].apply(stored, site_tz=TZ)  # the runtime's path: validated, fresh MSH-7/10
    assert record.type == "hl7v2" and record.fields["er7"].startswith("MSH|^~\\&|RADBRIDGE|")


def test_a_result_without_study_uid_or_findings_still_fits() -> None:
    fields = result_record()
    fields.pop("study_uid")
    fields["result"] = {**fields["result"], "findings": [], "disclaimer": None}
    text = ORU["2.5.1"].build(fields, site_tz=TZ, control_id="C1", now=NOW)
    assert counts(text) == {"MSH": 1, "PID": 1, "PV1": 1, "ORC": 1, "OBR": 1, "NTE": 2}
    assert [Message.parse(text).segments("NTE")[i].get("NTE-1") for i in (0, 1)] == ["1", "2"]


def test_required_values_and_structure_failures_name_fields_never_values() -> None:
    fields = result_record()
    fields["result"]["findings"][1]["code"] = ""
    with pytest.raises(MappingError) as info:
        ORU["2.5.1"].build(fields, site_tz=TZ)
    assert str(info.value) == (
        "mapping result-to-oru: required field 'OBX-3.1' is empty (tried result.result.findings[*].code)"
    )
    fields = result_record()
    fields.pop("patient_name")  # PID-5 is required by the ORU_R01 structure
    with pytest.raises(MappingError) as info:
        ORU["2.3.1"].build(fields, site_tz=TZ)
    err = info.value
    assert (err.code, err.segment, err.hl7_field) == (101, "PID", 5)
    assert str(err) == (
        "mapping result-to-oru-231: the built message does not fit its HL7 message structure "
        "(ValidationError: Missing required child PID.PID_5)"
    )
    assert not phi.leaks_in_bytes(str(err).encode())


@pytest.mark.parametrize(
    ("mapping", "name", "structure"),
    [(XO, "orm-o01-xo-priority.hl7", "ORM^O01"), (OMI, "omi-o23-xo-priority.hl7", "OMI^O23^OMI_O23")],
)
def test_priority_update_matches_its_golden_file(mapping: object, name: str, structure: str) -> None:
    text = mapping.build(priority_record(), site_tz=TZ, now=NOW)  # type: ignore[attr-defined]
    assert text == golden(name)
    assert validate_structure(text) is None
    msg = Message.parse(text)
    assert msg.get("MSH-9") == structure
    # Echo recognition: MSH-10 and ORC-16.1 are the update id (it fits MSH-10 as it is).
    assert msg.control_id == msg.get("ORC-16.1") == "RB3BAA721870F7E021AB"
    assert (msg.get("ORC-1"), msg.get("ORC-2"), msg.get("ORC-3")) == ("XO", "PLC1001", phi.ACCESSION)
    assert msg.get("ORC-16.2") == "AI finding Intracranial hemorrhage, score 0.97 (ich-detector 2.1.0)"
    assert msg.get("ORC-9") == "20261121104208+0100"
    expected = {"MSH": 1, "PID": 1, "ORC": 1, "OBR": 1}
    assert counts(text) == (expected if mapping is XO else {**expected, "TQ1": 1, "IPC": 1})


@pytest.mark.parametrize(("priority", "code"), [("stat", "S"), ("asap", "A"), ("urgent", "T"), ("routine", "R")])
def test_priority_codes(priority: str, code: str) -> None:
    fields = {**priority_record(), "priority": priority}
    orm = Message.parse(XO.build(fields, site_tz=TZ))
    assert orm.get("ORC-7.6") == orm.get("OBR-27.6") == code
    omi = Message.parse(OMI.build(fields, site_tz=TZ))
    assert (omi.get("TQ1-9.1"), omi.get("TQ1-9.3")) == (code, "HL70485")
    assert (omi.get("IPC-1.1"), omi.get("IPC-3"), omi.get("IPC-4")) == (phi.ACCESSION, STUDY_UID, "RP1001")


def test_omi_needs_the_study_uid_for_ipc() -> None:
    fields = priority_record()
    fields.pop("study_uid")
    with pytest.raises(MappingError) as info:
        OMI.build(fields, site_tz=TZ)
    assert str(info.value) == (
        "mapping priority-to-omi: required field 'IPC-3' is empty (tried priority_update.study_uid)"
    )


def test_the_inbound_order_mapping_reads_our_priority_back() -> None:
    """What the RIS would echo: our XO read by the shipped order mapping gives the raised priority."""
    (order,) = shipped("orm-to-order.yaml").apply(Message.parse(golden("orm-o01-xo-priority.hl7")), site_tz=TZ)
    assert (order.topic, order.fields["priority"]) == ("order.changed", "stat")
    assert order.fields["accession"] == phi.ACCESSION
    for priority in ("urgent", "asap", "routine"):
        text = XO.build({**priority_record(), "priority": priority}, site_tz=TZ)
        (order,) = shipped("orm-to-order.yaml").apply(Message.parse(text), site_tz=TZ)
        assert order.fields["priority"] == priority


def test_control_id_fits_msh10_and_is_stable() -> None:
    assert control_id("RB3BAA721870F7E021AB") == "RB3BAA721870F7E021AB"
    long = control_id("study-0001/model-with-a-long-name/stat")
    assert long == control_id("study-0001/model-with-a-long-name/stat") and len(long) == 20 and long.startswith("RB")
    assert control_id("a|b") != "a|b" and control_id("") != ""  # delimiters or nothing: hashed
    fields = {**priority_record(), "update_id": "study-0001/model-with-a-long-name/stat"}
    assert Message.parse(XO.build(fields, site_tz=TZ)).control_id == long
