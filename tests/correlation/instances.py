"""A small DICOM instance with the fake PHI of tests/phi.py, as Part 10 bytes."""

from __future__ import annotations

import io

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from tests import phi


def instance(
    study: str,
    series: str,
    sop: str,
    *,
    accession: str = phi.ACCESSION,
    patient_id: str = phi.MRN,
    extra_accession: str | None = None,
    pixels: int = 64,
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName = f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}"
    ds.PatientID, ds.IssuerOfPatientID = patient_id, "GENHOSP"
    ds.PatientBirthDate, ds.PatientSex = phi.DOB, "F"
    ds.AccessionNumber = accession
    if extra_accession:
        item = Dataset()
        item.AccessionNumber = extra_accession
        ds.RequestAttributesSequence = [item]
    ds.Modality, ds.BodyPartExamined = "CT", "HEAD"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(pixels * 2)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
