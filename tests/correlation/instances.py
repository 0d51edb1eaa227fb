"""A small DICOM instance (tests/dicomdata.py) with the fake PHI of tests/phi.py, as Part 10 bytes."""

from __future__ import annotations

from pydicom.dataset import Dataset

from tests import phi
from tests.dicomdata import make_instance, part10_bytes


def instance(
    study: str,
    series: str,
    sop: str,
    *,
    accession: str = phi.ACCESSION,
    patient_id: str = phi.MRN,
    extra_accession: str | None = None,
) -> bytes:
    ds = make_instance(study_uid=study, series_uid=series, sop_instance_uid=sop, pixel_bytes=128, accession=accession)
    ds.PatientID, ds.IssuerOfPatientID, ds.BodyPartExamined = patient_id, "GENHOSP", "HEAD"
    if extra_accession:
        item = Dataset()
        item.AccessionNumber = extra_accession
        ds.RequestAttributesSequence = [item]
    return part10_bytes(ds)
