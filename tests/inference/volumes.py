"""Synthetic head CT series with known answers, as Part 10 CT Image Storage instances.

A head is an ellipsoid: scalp (40 HU), a 6 mm skull shell (1000 HU), brain (35 HU) with two CSF
ventricles (8 HU); optional shapes of known volume are painted in (a hyperdense sphere standing for
acute blood, a calcified disc). Each slice averages five sub-slices across its thickness (the
partial-volume effect of thick slices), is blurred in plane by a 0.5 mm point spread and gets
Gaussian noise, then is stored as signed 16-bit values with RescaleIntercept -1024. Headers carry
the fake PHI of tests/phi.py. Slices are numbered from the top of the head down (InstanceNumber 1
is the most superior slice), so an order by instance number is the reverse of the spatial order.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from tests.dicomdata import PATIENT_NAME
from tests.phi import ACCESSION, DOB, MRN

SKULL = (64.0, 58.0, 52.0)  # outer semi-axes of the skull (z, y, x) in mm
SKULL_MM = 6.0
SCALP_MM = 3.0
VENTRICLES = (((4.0, 2.0, -7.0), (14.0, 20.0, 4.0)), ((4.0, 2.0, 7.0), (14.0, 20.0, 4.0)))  # centre, semi-axes
SUBSAMPLES = 5


@dataclass(frozen=True)
class Sphere:
    """A sphere of `volume_ml` at `center` (z, y, x) mm from the head's centre, of density `hu`."""

    center: tuple[float, float, float]
    volume_ml: float
    hu: float

    @property
    def radius(self) -> float:
        return (3 * self.volume_ml * 1000 / (4 * math.pi)) ** (1 / 3)

    def contains(self, z: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        c, r = self.center, self.radius
        return (z - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r

    def fraction(self, z_low: float, z_high: float) -> float:
        """Share of a slice's thickness the sphere fills on the column through its centre."""
        low, high = max(z_low, self.center[0] - self.radius), min(z_high, self.center[0] + self.radius)
        return max(0.0, high - low) / (z_high - z_low)


@dataclass(frozen=True)
class Disc:
    """An upright cylinder (a calcified plaque): `height` mm tall, `radius` mm wide, at `center`."""

    center: tuple[float, float, float]
    radius: float
    height: float
    hu: float

    def contains(self, z: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        c = self.center
        inside = (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= self.radius**2
        return inside & (abs(z - c[0]) <= self.height / 2)


Shape = Sphere | Disc

# Known answers. The bleed spans slices [5, 25] mm fully and only 12 % of the slices on either side.
BLEED_5ML = Sphere((15.0, -22.0, 22.0), 5.0, 70.0)
SMALL_BLOB = Sphere((-10.0, 15.0, -20.0), 0.2, 70.0)
# 300 HU filling the slice [-10, -5] mm and 0.5 mm of the one above: there, thick-slice averaging
# makes a 7 mm disc of ~62 HU (0.77 mL), dense enough to pass for blood unless bone's slice
# neighbourhood is excluded.
CALCIFICATION = Disc((-7.25, -30.0, -15.0), 7.0, 5.5, 300.0)


@dataclass
class SyntheticSeries:
    instances: list[bytes]  # Part 10 bytes, in the order a sender would deliver them
    sop_uids: list[str]  # in spatial order: inferior to superior
    hu: np.ndarray  # the stored values in modality units, spatial order (what load_series must return)
    spacing: tuple[float, float, float]
    series_uid: str
    study_uid: str
    z: list[float] = field(default_factory=list)  # slice centre positions (mm), spatial order

    def slices_holding(self, sphere: Sphere, at_least: float = 0.5) -> list[str]:
        """SOP UIDs of the slices where the sphere fills at least `at_least` of the thickness."""
        half = self.spacing[0] / 2
        return [
            uid for uid, z in zip(self.sop_uids, self.z, strict=True) if sphere.fraction(z - half, z + half) >= at_least
        ]


def _ellipsoid(z: float, yy: np.ndarray, xx: np.ndarray, center, axes) -> np.ndarray:  # type: ignore[no-untyped-def]
    return ((z - center[0]) / axes[0]) ** 2 + ((yy - center[1]) / axes[1]) ** 2 + ((xx - center[2]) / axes[2]) ** 2 <= 1


def _plane(z: float, yy: np.ndarray, xx: np.ndarray, shapes: tuple[Shape, ...], skull: bool) -> np.ndarray:
    """Densities (HU) of the plane at height z, sampled at voxel centres."""
    out = np.full(yy.shape, -1000.0)
    origin = (0.0, 0.0, 0.0)
    if skull:
        out[_ellipsoid(z, yy, xx, origin, tuple(a + SCALP_MM for a in SKULL))] = 40.0
        out[_ellipsoid(z, yy, xx, origin, SKULL)] = 1000.0
        out[_ellipsoid(z, yy, xx, origin, tuple(a - SKULL_MM for a in SKULL))] = 35.0
    else:  # a body-like cylinder of soft tissue: no enclosed intracranial space
        out[(yy / 50.0) ** 2 + (xx / 60.0) ** 2 <= 1] = 35.0
    for center, axes in VENTRICLES if skull else ():
        out[_ellipsoid(z, yy, xx, center, axes)] = 8.0
    for shape in shapes:
        out[shape.contains(z, yy, xx)] = shape.hu
    return out


def head_ct(
    *,
    slices: int = 28,
    size: int = 256,
    pixel_mm: float = 0.5,
    slice_mm: float = 5.0,
    shapes: tuple[Shape, ...] = (),
    skull: bool = True,
    noise_hu: float = 5.0,
    seed: int = 0,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    shuffle: bool = False,
    study_uid: str | None = None,
    series_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> SyntheticSeries:
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    grid = (np.arange(size) - (size - 1) / 2) * pixel_mm
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    zs = [(k - (slices - 1) / 2) * slice_mm for k in range(slices)]  # inferior to superior
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5
    hu = np.empty((slices, size, size), dtype=np.float32)
    datasets = []
    for k, z in enumerate(zs):
        plane = np.mean([_plane(z + o * slice_mm, yy, xx, shapes, skull) for o in offsets], axis=0)
        plane = ndimage.gaussian_filter(plane, sigma=0.5 / pixel_mm) + rng.normal(0.0, noise_hu, plane.shape)
        stored = np.clip(np.rint((plane - intercept) / slope), -32768, 32767).astype(np.int16)
        hu[k] = stored * slope + intercept
        datasets.append(ct_slice(
            stored, z=z, number=slices - k, study_uid=study_uid, series_uid=series_uid, series_number=series_number,
            slope=slope, intercept=intercept, pixel_mm=pixel_mm, slice_mm=slice_mm, modality=modality,
            transfer_syntax=transfer_syntax,
        ))  # fmt: skip
    sop_uids = [str(ds.SOPInstanceUID) for ds in datasets]
    instances = [part10(ds) for ds in datasets]
    if shuffle:
        instances = [instances[i] for i in rng.permutation(len(instances))]
    return SyntheticSeries(instances, sop_uids, hu, (slice_mm, pixel_mm, pixel_mm), series_uid, study_uid, zs)


def ct_slice(
    stored: np.ndarray,
    *,
    z: float,
    number: int,
    study_uid: str,
    series_uid: str,
    series_number: int = 1,
    slope: float = 1.0,
    intercept: float = -1024.0,
    pixel_mm: float = 0.5,
    slice_mm: float = 5.0,
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """One axial CT Image Storage instance holding `stored` (int16, rows x columns) at height z,
    centred on the patient axis, with the fake PHI of tests/phi.py."""
    rows, columns = stored.shape
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SeriesNumber, ds.InstanceNumber = series_number, number
    ds.Modality = modality
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, MRN, DOB, "F"
    ds.AccessionNumber = ACCESSION
    ds.StudyDate, ds.StudyTime = "20261121", "101500"
    ds.StudyDescription = "CT HEAD WITHOUT CONTRAST"
    ds.BodyPartExamined = "HEAD"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-(columns - 1) / 2 * pixel_mm, -(rows - 1) / 2 * pixel_mm, round(z, 4)]
    ds.SliceThickness = slice_mm
    ds.PixelSpacing = [pixel_mm, pixel_mm]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleType = "HU"
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
