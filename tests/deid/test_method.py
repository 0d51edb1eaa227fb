"""De-identification Method attributes, the HIPAA method of a profile, and the table edition choice."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.deid import DeidProfile, editions, load_table, method
from engine.deid.table import DEFAULT_EDITION
from tests.deid.conftest import run
from tests.deid.data import instance

ALL_OPTIONS = {
    "retain_uids": True,
    "retain_longitudinal_temporal": True,
    "retain_patient_characteristics": True,
    "retain_device_identity": True,
    "retain_institution_identity": True,
    "clean_descriptors": True,
    "retain_safe_private": True,
}


def test_basic_profile_method_attributes() -> None:
    ds = run(instance()).dataset
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethod == "radbridge PS3.15 E.1-1 Basic Profile (2026c)"
    items = ds.DeidentificationMethodCodeSequence
    assert [(i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning) for i in items] == [
        ("113100", "DCM", "Basic Application Confidentiality Profile")
    ]
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"


def test_every_option_is_declared() -> None:
    ds = run(instance(), **ALL_OPTIONS).dataset
    codes = [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113107", "113108", "113109", "113110", "113111", "113112"]
    assert set(i.CodingSchemeDesignator for i in ds.DeidentificationMethodCodeSequence) == {"DCM"}
    assert list(ds.DeidentificationMethod) == [
        "radbridge PS3.15 E.1-1 Basic Profile (2026c)",
        "Clean Descriptors Option",
        "Retain Longitudinal Temporal Information Modified Dates Option",
        "Retain Patient Characteristics Option",
        "Retain Device Identity Option",
        "Retain UIDs Option",
        "Retain Safe Private Option",
        "Retain Institution Identity Option",
    ]
    assert all(len(v) <= 64 for v in ds.DeidentificationMethod)
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_safe_harbor_only_without_kept_dates_uids_devices_institutions_or_free_text() -> None:
    assert method(DeidProfile()) == "safe-harbor"
    assert method(DeidProfile(retain_patient_characteristics=True, clean_descriptors=True)) == "safe-harbor"
    for option in (
        "retain_uids",
        "retain_longitudinal_temporal",
        "retain_device_identity",
        "retain_institution_identity",
    ):
        assert method(DeidProfile(**{option: True})) == "limited-data-set", option
    assert method(DeidProfile(hl7={"keep_free_text": True})) == "limited-data-set"


def test_table_edition_is_chosen_by_name() -> None:
    assert DEFAULT_EDITION == "2026c" == editions()[-1]
    assert {"2023", "2024b", "2026c"} <= set(editions())
    old, new = load_table("2023"), load_table("2026c")
    assert len(new.rows) == 655 and len(old.rows) < len(new.rows)
    # (0010,0045) Gender Identity Comment entered the table after 2023
    assert old.lookup(0x00100045) is None and new.lookup(0x00100045) == "X"
    out = run(instance(), table_edition="2023")
    assert out.dataset.DeidentificationMethod == "radbridge PS3.15 E.1-1 Basic Profile (2023)"
    with pytest.raises(ValidationError, match="unknown edition"):
        DeidProfile(table_edition="1999")


def test_masks_match_repeating_groups_only() -> None:
    table = load_table()
    assert table.lookup(0x501E0010) == "X" and table.lookup(0x50003000) == "X"
    assert table.lookup(0x601E3000) == "X" and table.lookup(0x601E4000) == "X"
    assert table.lookup(0x60000010) is None and table.lookup(0x51003000) is None
