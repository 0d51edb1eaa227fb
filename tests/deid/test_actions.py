"""One test per action code of Table E.1-1 (D, Z, X, K, C, U and every compound), nested sequences,
private attributes and the curve/overlay groups."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from engine.deid import load_table
from engine.deid.pseudonyms import patient_pseudonym, uid_pseudonym
from tests.deid.conftest import action_of, run
from tests.deid.data import ACCESSION, DOB, KEY, MRN, NAME, PROJECT, instance, uid

TABLE = load_table("2026c")


def code(keyword: str) -> str | None:
    return TABLE.lookup(int(Tag(keyword)))


def test_table_codes_used_below() -> None:
    """The attributes these tests pick carry the codes they are named after, in the 2026c edition."""
    expected = {
        "PersonName": "D", "FrameAcquisitionDateTime": "D", "PersonIdentificationCodeSequence": "D",
        "AnnotationGroupUID": "D",
        "AccessionNumber": "Z", "StudyDate": "Z", "SpecimenPreparationSequence": "Z",
        "PatientAddress": "X", "RequestAttributesSequence": "X", "IconImageSequence": "X",
        "SOPInstanceUID": "U", "FrameOfReferenceUID": "U",
        "AcquisitionDate": "X/Z", "ReferencedStudySequence": "X/Z",
        "ProtocolName": "X/D", "SeriesDate": "X/D",
        "ContentDate": "Z/D", "PatientID": "Z/D",
        "InstitutionName": "X/Z/D", "DeviceSerialNumber": "X/Z/D",
        "ReferencedImageSequence": "X/Z/U*", "SourceImageSequence": "X/Z/U*",
    }  # fmt: skip
    assert {k: code(k) for k in expected} == expected


def test_d_replaces_with_a_dummy_of_the_vr() -> None:
    ds = instance()
    ds.PersonName = NAME
    ds.FrameAcquisitionDateTime = DOB + "101500"
    item = Dataset()
    item.CodeValue = MRN
    ds.PersonIdentificationCodeSequence = [item]
    original_uid = uid()
    ds.AnnotationGroupUID = original_uid
    out = run(ds)
    assert out.dataset is not None
    assert out.dataset.PersonName == "ANONYMIZED"
    assert out.dataset.FrameAcquisitionDateTime == "19000101000000"
    assert len(out.dataset.PersonIdentificationCodeSequence) == 1
    assert len(out.dataset.PersonIdentificationCodeSequence[0]) == 0  # one empty item: a non-zero-length dummy
    assert out.dataset.AnnotationGroupUID == uid_pseudonym(KEY, PROJECT, original_uid)
    for name in ("PersonName", "FrameAcquisitionDateTime", "PersonIdentificationCodeSequence", "AnnotationGroupUID"):
        assert action_of(out, name) == "D"


def test_z_empties() -> None:
    ds = instance()
    ds.ReferringPhysicianName = "Doctor^Fake"
    ds.SpecimenPreparationSequence = [Dataset()]
    out = run(ds)
    assert out.dataset is not None
    for name in ("AccessionNumber", "StudyDate", "ReferringPhysicianName", "SpecimenPreparationSequence"):
        assert name in out.dataset
        assert not out.dataset[name].value, name
        assert action_of(out, name) == "Z"


def test_x_removes() -> None:
    ds = instance()
    ds.PatientAddress = "42 Testing Lane, Faketown"
    ds.PatientBirthTime = "0815"
    ds.IconImageSequence = [Dataset()]
    out = run(ds)
    assert out.dataset is not None
    for name in ("PatientAddress", "PatientBirthTime", "RequestAttributesSequence", "IconImageSequence"):
        assert name not in out.dataset
        assert action_of(out, name) == "X"


def test_k_keeps_what_an_option_retains_and_unlisted_attributes_silently() -> None:
    ds = instance()
    ds.PatientWeight = "61.5"
    out = run(ds, retain_patient_characteristics=True)
    assert out.dataset is not None
    assert out.dataset.PatientSex == "F"
    assert out.dataset.PatientWeight == "61.5"
    assert action_of(out, "PatientSex") == "K"
    assert action_of(out, "PatientWeight") == "K"
    # BodyPartExamined is not in Table E.1-1: kept and not reported
    assert out.dataset.BodyPartExamined == "HEAD"
    assert "BodyPartExamined" not in [n for n, _ in out.actions]


def test_c_cleans_descriptors_to_allowed_words() -> None:
    ds = instance()
    ds.StudyDescription = "CT HEAD without contrast for Testpatient ACC-TEST-7781"
    ds.SeriesDescription = "Alice 2"
    out = run(ds, clean_descriptors=True)
    assert out.dataset is not None
    assert out.dataset.StudyDescription == "CT HEAD without contrast"
    assert out.dataset.SeriesDescription == ""
    assert action_of(out, "StudyDescription") == "C"
    assert action_of(out, "SeriesDescription") == "C"


def test_u_replaces_uids_with_keyed_pseudonyms() -> None:
    ds = instance()
    sop, frame = str(ds.SOPInstanceUID), uid()
    ds.FrameOfReferenceUID = frame
    out = run(ds)
    assert out.dataset is not None
    assert out.dataset.SOPInstanceUID == uid_pseudonym(KEY, PROJECT, sop)
    assert out.dataset.file_meta.MediaStorageSOPInstanceUID == out.dataset.SOPInstanceUID
    assert out.dataset.FrameOfReferenceUID == uid_pseudonym(KEY, PROJECT, frame)
    assert out.dataset.SOPClassUID == ds.SOPClassUID  # not an instance UID: not in the table
    assert out.uids[out.dataset.FrameOfReferenceUID] == frame
    assert action_of(out, "SOPInstanceUID") == "U"
    assert action_of(out, "MediaStorageSOPInstanceUID") == "U"


def test_compound_x_z_resolves_to_z() -> None:
    ds = instance()
    ds.AcquisitionDate = DOB
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = uid()
    ds.ReferencedStudySequence = [ref]
    out = run(ds)
    assert out.dataset is not None
    assert out.dataset.AcquisitionDate == ""
    assert out.dataset.ReferencedStudySequence == Sequence()
    assert action_of(out, "AcquisitionDate") == "Z"
    assert action_of(out, "ReferencedStudySequence") == "Z"


def test_compound_x_d_resolves_to_d() -> None:
    ds = instance()
    ds.ProtocolName = "Testpatient protocol"
    ds.SeriesDate = DOB
    out = run(ds)
    assert out.dataset is not None
    assert out.dataset.ProtocolName == "ANONYMIZED"
    assert out.dataset.SeriesDate == "19000101"
    assert action_of(out, "ProtocolName") == "D"
    assert action_of(out, "SeriesDate") == "D"


def test_compound_z_d_resolves_to_d_and_patient_id_gets_the_patient_pseudonym() -> None:
    ds = instance()
    ds.ContentDate = DOB
    ds.ContentCreatorName = NAME
    out = run(ds)
    assert out.dataset is not None
    assert out.dataset.ContentDate == "19000101"
    assert out.dataset.ContentCreatorName == "ANONYMIZED"
    pseudonym = patient_pseudonym(KEY, PROJECT, MRN)
    assert out.dataset.PatientID == pseudonym
    assert out.dataset.PatientName == pseudonym  # Z in the table: the documented pseudonym override
    assert [action_of(out, n) for n in ("ContentDate", "ContentCreatorName", "PatientID", "PatientName")] == ["D"] * 4


def test_compound_x_z_d_resolves_to_z() -> None:
    ds = instance()
    ds.InstitutionName = "Fake General Hospital"
    ds.DeviceSerialNumber = "SN-0042"
    ds.OperatorsName = "Operator^Fake"
    out = run(ds)
    assert out.dataset is not None
    for name in ("InstitutionName", "DeviceSerialNumber", "OperatorsName"):
        assert name in out.dataset and not out.dataset[name].value
        assert action_of(out, name) == "Z"


def test_compound_x_z_u_star_keeps_the_sequence_and_replaces_uids_inside() -> None:
    ds = instance()
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = original = uid()
    ds.ReferencedImageSequence = [ref]
    out = run(ds)
    assert out.dataset is not None
    item = out.dataset.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID == uid_pseudonym(KEY, PROJECT, original)
    assert item.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert action_of(out, "ReferencedImageSequence") == "U"
    assert action_of(out, "ReferencedImageSequence.ReferencedSOPInstanceUID") == "U"


def test_identifying_attributes_two_sequence_levels_deep() -> None:
    ds = instance()
    inner = Dataset()
    inner.PatientName = NAME
    inner.AccessionNumber = ACCESSION
    inner.StudyDate = DOB
    inner.ReferencedSOPInstanceUID = deep_uid = uid()
    inner.private_block(0x0029, "ACME PRIVATE", create=True).add_new(0x10, "LO", MRN)
    purpose = Dataset()
    purpose.PurposeOfReferenceCodeSequence = [inner]  # not in the table: kept and walked
    purpose.ReferencedSOPInstanceUID = uid()
    ds.SourceImageSequence = [purpose]
    out = run(ds)
    assert out.dataset is not None
    got = out.dataset.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0]
    assert got.PatientName == patient_pseudonym(KEY, PROJECT, MRN)
    assert got.AccessionNumber == "" and got.StudyDate == ""
    assert got.ReferencedSOPInstanceUID == uid_pseudonym(KEY, PROJECT, deep_uid)
    assert not any(e.tag.is_private for e in got)
    prefix = "SourceImageSequence.PurposeOfReferenceCodeSequence."
    assert action_of(out, prefix + "PatientName") == "D"
    assert action_of(out, prefix + "AccessionNumber") == "Z"
    assert action_of(out, prefix + "(0029,1010)") == "X"


def _with_private(ds: Dataset) -> Dataset:
    siemens = ds.private_block(0x0019, "SIEMENS CT VA0 COAD", create=True)
    siemens.add_new(0x23, "DS", "1.5")  # safe-listed below
    siemens.add_new(0x24, "LO", MRN)
    ds.private_block(0x0029, "ACME PRIVATE", create=True).add_new(0x01, "LO", NAME)
    return ds


def test_private_attributes_are_removed() -> None:
    out = run(_with_private(instance()))
    assert out.dataset is not None
    assert not any(e.tag.is_private for e in out.dataset)
    assert action_of(out, "(0019,1023)") == "X"
    assert action_of(out, "(0019,0010)") == "X"  # the creator goes with its block


def test_a_safe_listed_private_attribute_is_kept_with_its_creator() -> None:
    safe = [{"creator": "SIEMENS CT VA0 COAD", "tag": "(0019,xx23)"}]
    out = run(_with_private(instance()), retain_safe_private=True, safe_private=safe)
    assert out.dataset is not None
    private = {int(e.tag): e.value for e in out.dataset if e.tag.is_private}
    assert private == {0x00190010: "SIEMENS CT VA0 COAD", 0x00191023: "1.5"}
    assert action_of(out, "(0019,1023)") == "K"
    assert action_of(out, "(0019,1024)") == "X"
    assert "113111" in [i.CodeValue for i in out.dataset.DeidentificationMethodCodeSequence]


def test_safe_list_matches_the_creator_not_the_block_number() -> None:
    ds = instance()
    ds.private_block(0x0019, "OTHER VENDOR", create=True).add_new(0x23, "LO", MRN)  # block 10, same offset
    ds.private_block(0x0019, "SIEMENS CT VA0 COAD", create=True).add_new(0x23, "DS", "2.5")  # block 11
    safe = [{"creator": "SIEMENS CT VA0 COAD", "tag": "(0019,xx23)"}]
    out = run(ds, retain_safe_private=True, safe_private=safe)
    assert out.dataset is not None
    assert {int(e.tag): e.value for e in out.dataset if e.tag.is_private} == {
        0x00190011: "SIEMENS CT VA0 COAD",
        0x00191123: "2.5",
    }


def test_curve_groups_and_overlay_data_follow_the_table_masks() -> None:
    ds = instance()
    ds.add_new(0x50020005, "US", 1)  # Curve Dimensions, group 5002
    ds.add_new(0x50023000, "OB", b"\x01\x02")  # Curve Data
    ds.add_new(0x60020010, "US", 4)  # Overlay Rows: not listed
    ds.add_new(0x60023000, "OW", b"\x00\x00")  # Overlay Data: X
    ds.add_new(0x60024000, "LT", "Testpatient overlay")  # Overlay Comments: X
    out = run(ds)
    assert out.dataset is not None
    for tag in (0x50020005, 0x50023000, 0x60023000, 0x60024000):
        assert tag not in out.dataset
    assert out.dataset[0x60020010].value == 4
    # repeating-group attributes are reported by tag, so the group (which overlay) stays visible
    assert [action_of(out, t) for t in ("(5002,0005)", "(5002,3000)", "(6002,3000)", "(6002,4000)")] == ["X"] * 4


@pytest.mark.parametrize("bad", ["(0018,xx23)", "(0019,1023)", "0019,xx23"])
def test_safe_private_tag_format_is_checked(bad: str) -> None:
    from pydantic import ValidationError

    from engine.deid import DeidProfile

    with pytest.raises(ValidationError):
        DeidProfile(retain_safe_private=True, safe_private=[{"creator": "X", "tag": bad}])
