"""The public surface: exports, key checks, Part 10 bytes in and out, the input left untouched."""

from __future__ import annotations

import io

import pydicom
import pytest

import engine.deid
from engine.core.errors import KeyMaterialError, PermanentError
from engine.deid import DeidProfile, DicomDeidentifier
from tests.deid.data import KEY, MRN, NAME, PHI, PROJECT, image, instance
from tests.dicomdata import part10_bytes
from tests.phi import leaks_in_bytes


def test_public_api() -> None:
    names = {"DeidProfile", "DicomDeidentifier", "DeidOutcome", "method", "deidentify_hl7", "reidentify_uids",
             "reidentify_dataset", "deid_folder", "load_profile", "FolderReport"}  # fmt: skip
    assert names <= set(engine.deid.__all__)
    assert all(hasattr(engine.deid, n) for n in engine.deid.__all__)


def test_short_keys_are_refused() -> None:
    with pytest.raises(KeyMaterialError):
        DicomDeidentifier(DeidProfile(), b"short")


def test_apply_bytes_round_trip_leaves_no_phi() -> None:
    deid = DicomDeidentifier(DeidProfile(project=PROJECT), KEY)
    source = instance()
    data, outcome = deid.apply_bytes(part10_bytes(source))
    assert data is not None and outcome.blocked is None
    assert leaks_in_bytes(data, PHI) == []
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.SOPInstanceUID == outcome.dataset.SOPInstanceUID
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.PatientIdentityRemoved == "YES"


def test_apply_leaves_the_input_untouched() -> None:
    source = instance()
    before = str(source)
    DicomDeidentifier(DeidProfile(project=PROJECT), KEY).apply(source)
    assert str(source) == before and source.PatientName == NAME and source.PatientID == MRN


def test_apply_bytes_blocked_and_refused() -> None:
    deid = DicomDeidentifier(DeidProfile(project=PROJECT), KEY)
    data, outcome = deid.apply_bytes(part10_bytes(image("US")))
    assert data is None and outcome.dataset is None and outcome.blocked is not None
    with pytest.raises(PermanentError, match="not a readable DICOM Part 10 file"):
        deid.apply_bytes(b"MSH|^~\\&|not dicom")
