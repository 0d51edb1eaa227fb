"""HL7 v2 de-identification of the HIPAA Safe Harbor identifiers over realistic ORU and ORM messages."""

from __future__ import annotations

import pytest

from engine.deid import DeidProfile, deidentify_hl7
from engine.deid.pseudonyms import day_shift, id_pseudonym, patient_pseudonym, shift_dt, uid_pseudonym
from engine.hl7v2 import Hl7ParseError, Message
from tests.deid.conftest import run
from tests.deid.data import ACCESSION, DOB, KEY, MRN, PROJECT, instance
from tests.phi import variants

SSN = "999-00-4242"
PHONE = "555-014-2277"
STUDY_UID = "1.2.826.0.1.3680043.8.498.77001"
HL7_PHI = (
    "Testpatient", "Alice", MRN, DOB, ACCESSION, SSN, PHONE, "555-014-9999", "42 Testing Lane", "Faketown", "98765",
    "alice.test@example.invalid", "Testrelative", "Testguarantor", "Fake Employer", "POL-TEST-5550", "VN-TEST-3141",
    "PLC-TEST-2718", "ACCT-TEST-6060", "DL-TEST-8080", "Doctorfake", "Readerfake", "20261121", "20261120", STUDY_UID,
)  # fmt: skip

ORU = (
    "MSH|^~\\&|AIHUB|RADBRIDGE|RIS|GENHOSP|20261121101500||ORU^R01^ORU_R01|CTRL-9001|P|2.5.1\r"
    f"PID|1|{MRN}^^^GENHOSP^MR|{MRN}^^^GENHOSP^MR~{SSN}^^^USSSA^SS||Testpatient^Alice^Q||{DOB}|F|Testpatient^Ally"
    f"||42 Testing Lane^^Faketown^ZZ^98765||{PHONE}^PRN^PH~^NET^Internet^alice.test@example.invalid|555-014-9999"
    f"|en|M||ACCT-TEST-6060|{SSN}|DL-TEST-8080\r"
    f"NK1|1|Testrelative^Bob|SPO|42 Testing Lane^^Faketown^ZZ^98765|{PHONE}\r"
    "PV1|1|O|RAD^^^GENHOSP||||Doctorfake^Dana^^^^^MD|Doctorfake^Dana|||||||||||VN-TEST-3141"
    + "|"
    * 25
    + "20261120090000\r"
    f"ORC|RE|PLC-TEST-2718|{ACCESSION}||CM||||20261121101500|||Doctorfake^Dana\r"
    f"OBR|1|PLC-TEST-2718|{ACCESSION}|CTHEAD^CT HEAD WITHOUT CONTRAST^L|||20261121093000|||||||||Doctorfake^Dana|"
    f"|{ACCESSION}||||20261121101500||CT|F|||||||Readerfake^Rita\r"
    f"OBX|1|TX|RPT^Report^L||Patient Testpatient, Alice ({MRN}) compared with {ACCESSION}.||||||F|||20261121101500\r"
    "OBX|2|NM|SCORE^AI score^L||0.91|1|||||F\r"
    "OBX|3|CWE|FINDING^Finding^L||RID5352^hemorrhage^RADLEX||||||F\r"
    "OBX|4|XPN|CONTACT^Contact^L||Testrelative^Bob||||||F\r"
    f"NTE|1|L|Called Testrelative at {PHONE}\r"
    f"IN1|1|PLAN1|INS1|Fake Insurance|||||||||||||Testpatient^Alice|SEL|{DOB}|42 Testing Lane"
    + "|"
    * 19
    + "POL-TEST-5550\r"
    f"GT1|1||Testguarantor^Carol||42 Testing Lane^^Faketown^ZZ^98765|{PHONE}|||||||||Fake Employer Inc\r"
    "ZPI|1|Testpatient\r"
)

ORM = (
    "MSH|^~\\&|RIS|GENHOSP|RADBRIDGE|AIHUB|20261121101500||ORM^O01|CTRL-9002|P|2.3.1\r"
    f"PID|1||{MRN}^^^GENHOSP^MR||Testpatient^Alice||{DOB}|F|||42 Testing Lane^^Faketown^ZZ^98765||{PHONE}\r"
    "PV1|1|O|RAD^^^GENHOSP||||Doctorfake^Dana\r"
    f"ORC|NW|PLC-TEST-2718|{ACCESSION}||SC||^^^20261121101500^^S||20261121101500\r"
    f"OBR|1|PLC-TEST-2718|{ACCESSION}|CTHEAD^CT HEAD WITHOUT CONTRAST^L|||20261121101500||||||Headache, call "
    f"{PHONE}|||||{ACCESSION}||||||CT|||^^^20261121101500^^S\r"
    f"ZDS|{STUDY_UID}^RADBRIDGE^Application^DICOM\r"
    f"IPC|{ACCESSION}|RP-1|{STUDY_UID}|SPS-1|CT\r"
)


def _leaks(text: str) -> list[str]:
    data = text.encode()
    return [s for s in HL7_PHI if any(v in data for v in variants(s))]


@pytest.mark.parametrize("message", [ORU, ORM], ids=["ORU^R01", "ORM^O01"])
def test_no_phi_survives(message: str) -> None:
    assert len(_leaks(message)) > 10  # the samples do carry it
    out = deidentify_hl7(message, DeidProfile(project=PROJECT), KEY)
    assert _leaks(out) == []
    Message.parse(out)  # still readable ER7


def test_oru_fields() -> None:
    out = Message.parse(deidentify_hl7(ORU, DeidProfile(project=PROJECT), KEY))
    assert [s.name for s in out] == ["MSH", "PID", "PV1", "ORC", "OBR", "OBX", "OBX", "OBX", "OBX", "NTE"]
    pseudonym = patient_pseudonym(KEY, PROJECT, MRN)
    assert pseudonym == run(instance()).dataset.PatientID  # HL7 and DICOM stay linked
    assert out.segment("PID").field(3) == f"{pseudonym}^^^^MR~{patient_pseudonym(KEY, PROJECT, SSN)}^^^^SS"
    assert out.get("PID-5") == pseudonym and out.get("PID-7") == "1951" and out.get("PID-8") == "F"
    assert out.get("PID-11") is None and out.get("PID-13") is None and out.get("PID-19") is None
    assert out.get("PID-18") == id_pseudonym(KEY, PROJECT, "ACCT-TEST-6060")
    acc = id_pseudonym(KEY, PROJECT, ACCESSION)
    assert out.get("ORC-3") == out.get("OBR-3") == out.get("OBR-18") == acc
    assert out.get("ORC-2") == out.get("OBR-2") == id_pseudonym(KEY, PROJECT, "PLC-TEST-2718")
    assert out.get("PV1-19") == id_pseudonym(KEY, PROJECT, "VN-TEST-3141")
    assert out.get("MSH-7") == "2026" and out.get("OBR-7") == "2026" and out.get("PV1-44") == "2026"
    assert out.get("MSH-10") == "CTRL-9001" and out.get("OBR-4.2") == "CT HEAD WITHOUT CONTRAST"
    assert out.get("PV1-7") is None and out.get("OBR-32") is None  # provider names removed by default
    obx = out.segments("OBX")
    assert [o.get("OBX-5") for o in obx] == [None, "0.91", "RID5352^hemorrhage^RADLEX", None]
    assert out.get("NTE-3") is None


def test_orm_uids_and_timing() -> None:
    out = Message.parse(deidentify_hl7(ORM, DeidProfile(project=PROJECT), KEY))
    assert out.get("ZDS-1") == uid_pseudonym(KEY, PROJECT, STUDY_UID)  # the DICOM pseudonym of that study
    assert out.get("IPC-3") == uid_pseudonym(KEY, PROJECT, STUDY_UID)
    assert out.get("IPC-1") == id_pseudonym(KEY, PROJECT, ACCESSION)
    assert out.get("ORC-7.4") == "2026" and out.get("ORC-7.6") == "S"
    assert out.get("OBR-13") is None and out.get("OBR-18") == out.get("IPC-1")
    assert out.get("OBR-27.4") == "2026"
    kept = Message.parse(deidentify_hl7(ORM, DeidProfile(project=PROJECT, retain_uids=True), KEY))
    assert kept.get("ZDS-1") == STUDY_UID


def test_temporal_option_shifts_dates_like_dicom() -> None:
    profile = DeidProfile(project=PROJECT, retain_longitudinal_temporal=True)
    out = Message.parse(deidentify_hl7(ORU, profile, KEY))
    shift = day_shift(KEY, PROJECT, MRN)
    assert out.get("OBR-7") == shift_dt("20261121093000", shift)
    dicom = run(instance(), retain_longitudinal_temporal=True).dataset
    assert out.get("OBR-7")[:8] == dicom.StudyDate  # the DICOM study of 20261121, shifted the same way
    assert out.get("PID-7") == "1951"  # the birth date is never shifted into a full date


def test_options_keep_free_text_and_provider_names() -> None:
    profile = DeidProfile(project=PROJECT, hl7={"keep_free_text": True, "keep_provider_names": True})
    out = Message.parse(deidentify_hl7(ORU, profile, KEY))
    assert out.get("OBX-5").startswith("Patient Testpatient")
    assert out.get("PV1-7") == "Doctorfake^Dana^^^^^MD" and out.get("OBR-32") == "Readerfake^Rita"
    assert out.get("PID-11") is None  # identifiers are removed whatever the options


def test_birth_dates_of_people_aged_90_or_more_are_removed() -> None:
    old = ORM.replace(DOB, "19360101")
    assert Message.parse(deidentify_hl7(old, DeidProfile(), KEY)).get("PID-7") is None
    young = ORM.replace(DOB, "19370101")
    assert Message.parse(deidentify_hl7(young, DeidProfile(), KEY)).get("PID-7") == "1937"


def test_custom_delimiters_and_escaped_identifiers() -> None:
    message = (
        "MSH#$*!@#RIS#GENHOSP#RADBRIDGE#AIHUB#20261121101500##ORM$O01#CTRL-9003#P#2.3.1\r"
        f"PID#1##{MRN}$$$GENHOSP$MR##Testpatient$Alice##{DOB}#F\r"
        "ORC#NW#PLC!F!1#ACC-TEST-7781\r"
    )
    out = Message.parse(deidentify_hl7(message, DeidProfile(project=PROJECT), KEY))
    assert out.encoding.field == "#" and out.encoding.component == "$"
    assert out.segment("PID").field(3) == f"{patient_pseudonym(KEY, PROJECT, MRN)}$$$$MR"
    assert out.get("ORC-2") == id_pseudonym(KEY, PROJECT, "PLC#1")  # the escape is read before hashing
    assert _leaks(str(out.text)) == []


def test_not_er7_is_refused() -> None:
    with pytest.raises(Hl7ParseError):
        deidentify_hl7("PID|1||x", DeidProfile(), KEY)
