"""Synthetic DICOM instances for tests and benchmarks, carrying the fake PHI of tests/phi.py.

Instances are CT Image Storage by default with a pixel payload of a chosen size; compressed transfer
syntaxes get encapsulated pixel data that is fake but well-formed (a real JPEG / JPEG 2000 marker
frame, a real RLE header), enough for anything that stores or forwards instances without decoding.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from tests.phi import ACCESSION, DOB, MRN, NAME_FAMILY, NAME_GIVEN

PATIENT_NAME = f"{NAME_FAMILY}^{NAME_GIVEN}"
# Non-ASCII names per character set: each still holds the fake family and given names.
LATIN1_NAME = f"{NAME_FAMILY}Ö^{NAME_GIVEN}É"  # ISO_IR 100 (Latin-1)
UTF8_NAME = f"{NAME_FAMILY}Ł^{NAME_GIVEN}Ω"  # ISO_IR 192 (UTF-8): outside Latin-1
COMPRESSED = {"jpeg": JPEGBaseline8Bit, "j2k": JPEG2000Lossless, "rle": RLELossless}
KB = 1024


@dataclass(frozen=True)
class Study:
    study_uid: str
    series_uid: str
    paths: list[Path]
    sop_instance_uids: list[str]


def _frame(transfer_syntax: UID, size: int) -> bytes:
    """One fake compressed frame of about `size` bytes, with the codec's own framing."""
    body = bytes(range(256)) * (size // 256 + 1)
    body = body[: max(size - 64, 16)].replace(b"\xff", b"\xfe")  # no accidental JPEG markers
    if transfer_syntax == JPEGBaseline8Bit:
        return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + body + b"\xff\xd9"
    if transfer_syntax == JPEG2000Lossless:
        return b"\xff\x4f\xff\x51\x00\x29" + body + b"\xff\xd9"
    # RLE: a 64-byte header (segment count, 15 offsets), then one segment
    header = struct.pack("<16L", 1, 64, *([0] * 14))
    return header + body


def make_instance(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    number: int = 1,
    pixel_bytes: int = 512 * KB,
    charset: str | None = None,
    patient_name: str | None = None,
    transfer_syntax: UID | str = ExplicitVRLittleEndian,
    sop_class: str = CTImageStorage,
    accession: str = ACCESSION,
    omit: tuple[str, ...] = (),
    undefined_lengths: bool = False,
) -> Dataset:
    """One instance as a pydicom Dataset with file meta (not yet written). `omit` drops keywords
    (e.g. "StudyInstanceUID") to make an instance whose header the engine must refuse.
    `undefined_lengths` writes RequestAttributesSequence and its item with undefined lengths, as
    many modalities do (dcmtk's storescu re-encodes them with explicit lengths when it sends)."""
    ts = UID(str(transfer_syntax))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = "20261121"
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.Modality = "CT"
    ds.StudyDescription = "CT HEAD WITHOUT CONTRAST"
    ds.PatientName = patient_name or {None: PATIENT_NAME, "ISO_IR 100": LATIN1_NAME}.get(charset, UTF8_NAME)
    ds.PatientID = MRN
    ds.PatientBirthDate = DOB
    ds.PatientSex = "F"
    ds.BodyPartExamined = "HEAD"
    request = Dataset()
    request.AccessionNumber = accession
    request.RequestedProcedureID = "RP1"
    request.is_undefined_length_sequence_item = undefined_lengths
    ds.RequestAttributesSequence = [request]
    ds["RequestAttributesSequence"].is_undefined_length = undefined_lengths
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    compressed = ts in COMPRESSED.values()
    ds.Columns = 512
    if compressed:
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.Rows = max(pixel_bytes // 512, 1)
        ds.PixelData = encapsulate([_frame(ts, pixel_bytes)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.Rows = max(pixel_bytes // (512 * 2), 1)
        ds.PixelData = (bytes(range(256)) * (ds.Rows * 512 * 2 // 256 + 1))[: ds.Rows * 512 * 2]
        ds["PixelData"].VR = "OW"
    for keyword in omit:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def part10_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dataset_part(part10: bytes) -> bytes:
    """The dataset bytes of a Part 10 file: everything after the file meta group."""
    if part10[128:132] != b"DICM":
        raise ValueError("not a Part 10 file")
    # (0002,0000) UL, explicit VR little endian: tag 4 + VR 2 + length 2 + value 4
    group_length = struct.unpack("<L", part10[140:144])[0]
    return part10[144 + group_length :]


def write_instance(folder: Path, ds: Dataset, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{ds.SOPInstanceUID}.dcm")
    path.write_bytes(part10_bytes(ds))
    return path


def write_study(
    folder: Path,
    count: int = 3,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    **options: object,
) -> Study:
    """`count` instances of one series, written as Part 10 files into folder."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths, uids = [], []
    for n in range(1, count + 1):
        ds = make_instance(study_uid=study_uid, series_uid=series_uid, number=n, **options)  # type: ignore[arg-type]
        paths.append(write_instance(folder, ds, f"{n:04d}.dcm"))
        uids.append(str(ds.SOPInstanceUID))
    return Study(study_uid, series_uid, paths, uids)


def write_truncated(folder: Path, cut: int = 1000, **options: object) -> Path:
    """A Part 10 file whose pixel data stops `cut` bytes early (the file was cut off in transit)."""
    ds = make_instance(**options)  # type: ignore[arg-type]
    data = part10_bytes(ds)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "truncated.dcm"
    path.write_bytes(data[:-cut])
    return path


__all__ = [
    "COMPRESSED",
    "KB",
    "LATIN1_NAME",
    "PATIENT_NAME",
    "UTF8_NAME",
    "ImplicitVRLittleEndian",
    "Study",
    "dataset_part",
    "make_instance",
    "part10_bytes",
    "write_instance",
    "write_study",
    "write_truncated",
]
