"""Fake PHI and synthetic instances for the de-identification tests."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.dicomdata import make_instance

KEY = b"deid-test-key-not-a-real-key-32b"
PROJECT = "proj-alpha"
NAME = "Testpatient^Alice"
MRN = "MRN-TEST-0042"
DOB = "19510214"
ACCESSION = "ACC-TEST-7781"
PHI = ("Testpatient", "Alice", MRN, DOB, ACCESSION)

US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def instance(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    number: int = 1,
    mrn: str = MRN,
    name: str = NAME,
    **options: object,
) -> Dataset:
    """A small CT instance carrying the fake PHI of this module."""
    ds = make_instance(
        study_uid=study_uid,
        series_uid=series_uid,
        number=number,
        pixel_bytes=2 * 1024,
        patient_name=name,
        accession=ACCESSION,
        **options,  # type: ignore[arg-type]
    )
    ds.PatientID = mrn
    ds.PatientBirthDate = DOB
    return ds


def image(modality: str = "US", rows: int = 48, columns: int = 64, frames: int = 1, **options: object) -> Dataset:
    """An 8-bit grayscale image of constant value 200, per frame, with the fake PHI in its header."""
    ds = instance(sop_class=US_STORAGE if modality == "US" else "1.2.840.10008.5.1.4.1.1.2", **options)
    ds.Modality = modality
    shape = (frames, rows, columns) if frames > 1 else (rows, columns)
    ds.set_pixel_data(np.full(shape, 200, dtype=np.uint8), "MONOCHROME2", 8, generate_instance_uid=False)
    ds.Manufacturer = "FAKEVENDOR"
    ds.ManufacturerModelName = "SONO 1"
    return ds


def uid() -> str:
    return generate_uid()
