"""Burned-in text: block without a rule, clean with one (verified pixel by pixel), never send uncleaned."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from engine.deid import DeidProfile, DicomDeidentifier
from tests.deid.conftest import run
from tests.deid.data import KEY, PHI, PROJECT, image, instance

RULE = {
    "modality": "US",
    "manufacturer": "fakevendor",
    "rows": 48,
    "columns": 64,
    "regions": [[0, 0, 64, 8], [50, 40, 80, 60]],
}


def _clean(**extra: object) -> dict[str, object]:
    return {"mode": "clean", "rules": [RULE], **extra}


def _codes(ds: pydicom.Dataset) -> list[str]:
    return [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]


def test_us_is_blocked_by_default() -> None:
    out = run(image("US"))
    assert out.dataset is None
    assert out.blocked == "modality US is listed as carrying burned-in text; burned_in mode is 'block'"


def test_us_without_a_matching_rule_is_blocked_in_clean_mode() -> None:
    out = run(image("US", rows=32), burned_in=_clean())  # the rule wants 48 rows
    assert out.dataset is None
    assert out.blocked is not None and "no region rule matches (modality US, 32x64)" in out.blocked
    assert not any(p in out.blocked for p in PHI)


def test_us_cleaned_by_a_region_rule() -> None:
    out = run(image("US"), burned_in=_clean())
    assert out.blocked is None and out.dataset is not None
    px = out.dataset.pixel_array
    assert px.shape == (48, 64)
    expected = np.full((48, 64), 200, dtype=np.uint8)
    expected[0:8, :] = 0
    expected[40:48, 50:64] = 0  # clipped to the image
    assert np.array_equal(px, expected)
    assert out.dataset.BurnedInAnnotation == "NO"
    assert "113101" in _codes(out.dataset)
    assert ("PixelData", "C") in out.actions


def test_every_frame_is_cleaned() -> None:
    out = run(image("US", frames=3), burned_in=_clean())
    px = out.dataset.pixel_array
    assert px.shape == (3, 48, 64)
    assert (px[:, 0:8, :] == 0).all() and (px[:, 8:40, :] == 200).all()


def test_rle_compressed_pixels_are_decoded_cleaned_and_written_uncompressed() -> None:
    ds = image("US")
    ds.compress(RLELossless, generate_instance_uid=False)
    data, out = DicomDeidentifier(DeidProfile(project=PROJECT, burned_in=_clean()), KEY).apply_bytes(_part10(ds))
    assert data is not None
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (back.pixel_array[0:8] == 0).all() and (back.pixel_array[8:40] == 200).all()


def test_undecodable_compressed_pixels_are_blocked() -> None:
    ds = instance(transfer_syntax="1.2.840.10008.1.2.4.50")  # fake JPEG frame, no JPEG decoder installed
    ds.Modality = "US"
    ds.Manufacturer = "FAKEVENDOR"
    ds.Rows, ds.Columns = 48, 64
    out = run(ds, burned_in=_clean())
    assert out.dataset is None
    assert out.blocked is not None and out.blocked.startswith("pixel data could not be decoded (JPEG Baseline")


def test_burned_in_annotation_yes_is_blocked_whatever_the_modality() -> None:
    ds = image("CT")
    ds.BurnedInAnnotation = "YES"
    out = run(ds)
    assert out.dataset is None
    assert out.blocked == "Burned In Annotation is YES; burned_in mode is 'block'"
    assert run(image("CT")).dataset is not None  # a CT without the flag passes


def test_secondary_capture_and_listed_devices_need_cleaning() -> None:
    sc = image("OT")
    sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    assert run(sc).blocked == "SOP class is listed as carrying burned-in text; burned_in mode is 'block'"
    ct = image("CT")
    devices = [{"manufacturer": "FakeVendor", "model": "sono 1"}]
    assert run(ct, burned_in={"devices": devices}).blocked is not None
    assert run(ct, burned_in={"devices": [{"manufacturer": "FakeVendor", "model": "other"}]}).blocked is None


def test_images_without_pixel_data_are_not_burned_in_candidates() -> None:
    ds = image("US")
    del ds.PixelData
    assert run(ds).dataset is not None


@pytest.mark.parametrize("region", [[10, 0, 5, 8], [-1, 0, 5, 8]])
def test_region_rules_are_validated(region: list[int]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DeidProfile(burned_in={"mode": "clean", "rules": [{"modality": "US", "regions": [region]}]})


def _part10(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
