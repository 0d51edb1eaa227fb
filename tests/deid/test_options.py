"""The Annex E options: temporal shifting, patient characteristics, device and institution identity, UIDs."""

from __future__ import annotations

from datetime import date

import pytest

from engine.deid import DeidProfile, DicomDeidentifier
from engine.deid.pseudonyms import MAX_SHIFT_DAYS, day_shift, shift_da, shift_dt
from tests.deid.conftest import action_of, run
from tests.deid.data import DOB, KEY, PROJECT, instance, uid


def _days(a: str, b: str) -> int:
    da = date(int(a[:4]), int(a[4:6]), int(a[6:8]))
    db = date(int(b[:4]), int(b[4:6]), int(b[6:8]))
    return (db - da).days


def _dated(**kw: object):
    ds = instance(**kw)  # type: ignore[arg-type]
    ds.SeriesDate = "20261120"
    ds.AcquisitionDateTime = "20261121093000.5+0100"
    ds.ContentDate = "20261122"
    ds.SeriesTime = "093000"
    return ds


def test_dates_shift_consistently_within_one_patient() -> None:
    study = uid()
    outs = [run(_dated(study_uid=study, number=n), retain_longitudinal_temporal=True) for n in (1, 2, 3)]
    shifts = set()
    for out in outs:
        ds = out.dataset
        assert ds is not None
        shift = _days("20261121", ds.StudyDate)
        shifts.add(shift)
        assert _days("20261120", ds.SeriesDate) == shift
        assert _days("20261122", ds.ContentDate) == shift
        assert _days("20261121", ds.AcquisitionDateTime[:8]) == shift
        assert ds.AcquisitionDateTime[8:] == "093000.5+0100"  # time and offset kept
        assert ds.StudyTime == "101500" and ds.SeriesTime == "093000"  # times kept
        assert ds.PatientBirthDate == ""  # never retained
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert action_of(out, "StudyDate") == "C"
        assert action_of(out, "StudyTime") == "K"
    assert len(shifts) == 1
    shift = shifts.pop()
    assert -MAX_SHIFT_DAYS <= shift <= -1
    assert shift == day_shift(KEY, PROJECT, "MRN-TEST-0042")


def test_dates_shift_differently_across_patients() -> None:
    mrns = [f"MRN-TEST-{n:04d}" for n in range(40, 50)]
    shifts = {_days("20261121", run(_dated(mrn=m), retain_longitudinal_temporal=True).dataset.StudyDate) for m in mrns}
    assert len(shifts) == len(mrns)


def test_without_the_temporal_option_dates_are_dummied_or_removed() -> None:
    out = run(_dated())
    ds = out.dataset
    assert ds is not None
    assert ds.StudyDate == "" and ds.ContentDate == "19000101" and ds.SeriesDate == "19000101"
    assert ds.AcquisitionDateTime == ""  # X/Z/D -> Z
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"


def test_shift_helpers_keep_precision_and_blank_unreadable_dates() -> None:
    assert shift_da("20260301", -1) == "20260228"
    assert shift_da("2026-03-01", -1) is None
    assert shift_dt("202603", -1) == "202602"
    assert shift_dt("2026", -1) == "2025"
    assert shift_dt("20260301120000-0500", -1) == "20260228120000-0500"
    ds = instance()
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        ds.SeriesDate = "not a date"
    out = run(ds, retain_longitudinal_temporal=True)
    assert out.dataset.SeriesDate == ""
    assert action_of(out, "SeriesDate") == "Z"


@pytest.mark.parametrize(
    ("age", "expected", "action"), [("092Y", "090Y", "C"), ("089Y", "089Y", "K"), ("011M", "011M", "K")]
)
def test_patient_characteristics_with_ages_over_89_generalised(age: str, expected: str, action: str) -> None:
    ds = instance()
    ds.PatientAge = age
    ds.PatientSize = "1.62"
    out = run(ds, retain_patient_characteristics=True)
    assert out.dataset.PatientAge == expected
    assert out.dataset.PatientSize == "1.62" and out.dataset.PatientSex == "F"
    assert action_of(out, "PatientAge") == action
    assert out.dataset.PatientBirthDate == ""


def test_patient_characteristics_removed_without_the_option() -> None:
    ds = instance()
    ds.PatientAge = "075Y"
    out = run(ds)
    assert "PatientAge" not in out.dataset and out.dataset.PatientSex == ""


def test_device_identity() -> None:
    ds = instance()
    ds.StationName = "CTSTATION7"
    ds.DeviceSerialNumber = "SN-0042"
    kept = run(ds, retain_device_identity=True).dataset
    assert (kept.StationName, kept.DeviceSerialNumber) == ("CTSTATION7", "SN-0042")
    removed = run(ds).dataset
    assert removed.StationName == "" and removed.DeviceSerialNumber == ""


def test_institution_identity() -> None:
    ds = instance()
    ds.InstitutionName = "Fake General Hospital"
    ds.InstitutionAddress = "1 Fake Street"
    kept = run(ds, retain_institution_identity=True).dataset
    assert (kept.InstitutionName, kept.InstitutionAddress) == ("Fake General Hospital", "1 Fake Street")
    removed = run(ds).dataset
    assert removed.InstitutionName == "" and "InstitutionAddress" not in removed


def test_retain_uids() -> None:
    ds = instance()
    out = run(ds, retain_uids=True)
    assert out.dataset.StudyInstanceUID == ds.StudyInstanceUID
    assert out.dataset.SOPInstanceUID == ds.SOPInstanceUID
    assert out.uids == {}
    assert action_of(out, "StudyInstanceUID") == "K"


def test_patient_pseudonym_is_stable_and_project_scoped() -> None:
    a = run(instance()).dataset.PatientID
    b = run(instance()).dataset.PatientID
    other = DicomDeidentifier(DeidProfile(project="proj-beta"), KEY).apply(instance()).dataset.PatientID
    assert a == b and other != a and a.startswith("ANON-") and len(a) == 17
    assert run(instance(mrn="MRN-TEST-0043")).dataset.PatientID != a
    assert DOB not in str(run(instance()).dataset)
