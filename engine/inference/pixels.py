"""From a study's DICOM instances to the pixel volume a model computes on.

`load_series` picks one series of the study, orders its slices in space (not by arrival or
instance number, which modalities do not guarantee), decodes the pixel data and rescales it to
modality units (Hounsfield units for CT). `prepare` turns such a volume into the tensor a model
declared in its `Preprocessing`: resampled, windowed and cast.

Memory: headers are read first without pixel data, and only the chosen series is decoded, one
instance at a time, into a preallocated float32 array, so the peak is about one volume plus one
instance. Error messages name series by number and transfer syntaxes by UID, never patient data
or study/series/instance UIDs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID
from scipy import ndimage

from engine.core.errors import PermanentError
from engine.inference.models import Preprocessing

Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class Volume:
    """One series as a volume: `array` is float32 (slices, rows, columns) in modality units, slices
    ordered along the slice normal (increasing position); `sop_uids[k]` is the instance of slice k."""

    array: np.ndarray
    spacing: Spacing  # mm: between slices, between rows, between columns
    series_uid: str
    sop_uids: tuple[str, ...]
    modality: str


@dataclass
class _Series:
    number: str  # SeriesNumber, or the series' rank of appearance: what messages name it by
    uid: str
    members: list[tuple[int, Dataset]]  # (index into the instances, header without pixel data)


def load_series(
    instances: Sequence[bytes],
    choose: Literal["largest", "thinnest"] = "largest",
    *,
    require_modality: str | None = None,
) -> Volume:
    """The chosen image series of a study as a volume in modality units.

    `choose`: "largest" takes the series with most instances, "thinnest" the one with the smallest
    slice spacing (ties go to the larger, then the first seen). `require_modality` refuses any other
    modality before a pixel is decoded."""
    series = _group(instances)
    if not series:
        raise PermanentError("study has no image series")
    geometry = {s.uid: _geometry(s) for s in series}
    if choose == "thinnest":
        chosen = min(series, key=lambda s: (geometry[s.uid][1], -len(s.members)))
    else:
        chosen = max(series, key=lambda s: len(s.members))  # max keeps the first of equals
    order, z_spacing = geometry[chosen.uid]
    first = chosen.members[0][1]
    modality = str(first.get("Modality", "") or "")
    if require_modality is not None and modality != require_modality:
        raise PermanentError(f"modality {modality or '(none)'} is not {require_modality}")
    _check_decodable(chosen)
    rows, columns = int(first.Rows), int(first.Columns)
    array = np.empty((len(order), rows, columns), dtype=np.float32)
    sop_uids = []
    for k, member in enumerate(order):
        index, header = chosen.members[member]
        array[k] = _decode(instances[index], chosen.number, k)
        sop_uids.append(str(header.SOPInstanceUID))
    row_mm, column_mm = _pixel_spacing(first)
    return Volume(array, (z_spacing, row_mm, column_mm), chosen.uid, tuple(sop_uids), modality)


def _group(instances: Sequence[bytes]) -> list[_Series]:
    """Image instances by series, in order of first appearance; non-image instances (SR, KOS,
    presentation states) are skipped."""
    by_uid: dict[str, _Series] = {}
    for index, data in enumerate(instances):
        try:
            header = dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types on bad input; their text may quote values
            raise PermanentError(f"instance {index}: not a readable DICOM file ({type(exc).__name__})") from None
        if "Rows" not in header or "Columns" not in header or "SeriesInstanceUID" not in header:
            continue
        uid = str(header.SeriesInstanceUID)
        if uid not in by_uid:
            number = header.get("SeriesNumber")
            by_uid[uid] = _Series(str(number) if number not in (None, "") else str(len(by_uid) + 1), uid, [])
        by_uid[uid].members.append((index, header))
    for s in by_uid.values():
        sizes = {(int(h.Rows), int(h.Columns)) for _, h in s.members}
        if len(sizes) > 1:
            raise PermanentError(f"series {s.number}: slices differ in size")
        if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for _, h in s.members):
            raise PermanentError(f"series {s.number}: multi-frame instances are not supported")
        if any(int(h.get("SamplesPerPixel", 1) or 1) != 1 for _, h in s.members):
            raise PermanentError(f"series {s.number}: colour images are not supported")
    return list(by_uid.values())


def _geometry(s: _Series) -> tuple[list[int], float]:
    """Slice order (indices into s.members) and the spacing between slices in mm.

    Ordered by ImagePositionPatient projected on the slice normal (the cross product of the row
    and column direction cosines); by InstanceNumber when a slice lacks position or orientation."""
    headers = [h for _, h in s.members]
    if all("ImagePositionPatient" in h and "ImageOrientationPatient" in h for h in headers):
        cosines = np.asarray([float(v) for v in headers[0].ImageOrientationPatient], dtype=np.float64)
        normal = np.cross(cosines[:3], cosines[3:])
        where = [float(np.dot(normal, [float(v) for v in h.ImagePositionPatient])) for h in headers]
        order = sorted(range(len(headers)), key=lambda i: where[i])
        if len(order) > 1:
            steps = np.diff([where[i] for i in order])
            spacing = float(np.median(steps))
            if spacing <= 1e-3:
                raise PermanentError(f"series {s.number}: slices share a position")
            return order, spacing
        return order, _declared_spacing(headers[0])
    order = sorted(range(len(headers)), key=lambda i: int(headers[i].get("InstanceNumber", 0) or 0))
    return order, _declared_spacing(headers[0])


def _declared_spacing(header: Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = header.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def _pixel_spacing(header: Dataset) -> tuple[float, float]:
    """(between rows, between columns) in mm; PixelSpacing, else ImagerPixelSpacing, else 1 mm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = header.get(keyword)
        if value is not None and len(value) == 2:
            return float(value[0]), float(value[1])
    return 1.0, 1.0


def _check_decodable(s: _Series) -> None:
    for _, header in s.members:
        ts = UID(str(header.file_meta.get("TransferSyntaxUID", "") or ""))
        try:
            available = get_decoder(ts).is_available
        except (NotImplementedError, ValueError):
            available = False
        if not available:
            label = f"{ts} ({ts.name})" if ts.name != str(ts) else str(ts)
            raise PermanentError(f"series {s.number}: transfer syntax {label} cannot be decoded")


def _decode(data: bytes, series_number: str, slice_index: int) -> np.ndarray:
    """One instance's pixels as float32 in modality units (RescaleSlope/RescaleIntercept applied)."""
    ds = dcmread(io.BytesIO(data))
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # codec errors come as many types; the text may quote header values
        raise PermanentError(
            f"series {series_number}: pixel data of slice {slice_index} cannot be decoded ({type(exc).__name__})"
        ) from None
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    out = pixels.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def resample(
    array: np.ndarray,
    spacing: Spacing,
    *,
    to_spacing: Spacing | None = None,
    to_shape: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, Spacing]:
    """Linear resampling to a voxel spacing, then to a shape; returns the array and its spacing.

    Voxels are treated as cells (scipy's grid_mode): the volume's extent (count x spacing) is kept,
    so resampling n slices of s mm to m slices gives slices of exactly n*s/m mm."""
    if to_spacing is not None:
        shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(array.shape, spacing, to_spacing, strict=True))
        array, spacing = _zoom(array, spacing, shape)  # type: ignore[arg-type]
    if to_shape is not None:
        array, spacing = _zoom(array, spacing, to_shape)
    return array, spacing


def _zoom(array: np.ndarray, spacing: Spacing, shape: tuple[int, int, int]) -> tuple[np.ndarray, Spacing]:
    if tuple(array.shape) == tuple(shape):
        return array, spacing
    factors = [m / n for m, n in zip(shape, array.shape, strict=True)]
    out = ndimage.zoom(array, factors, output=np.float32, order=1, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # zoom rounds n*factor; guard against a float landing on .5
        raise PermanentError(f"resampling produced shape {out.shape}, expected {tuple(shape)}")
    new_spacing = tuple(s * n / m for s, n, m in zip(spacing, array.shape, shape, strict=True))
    return out, new_spacing  # type: ignore[return-value]


def prepare(volume: Volume, pre: Preprocessing) -> np.ndarray:
    """The tensor a model declared: see `prepare_with_spacing`."""
    return prepare_with_spacing(volume, pre)[0]


def prepare_with_spacing(volume: Volume, pre: Preprocessing) -> tuple[np.ndarray, Spacing]:
    """Resample (to `spacing`, then to `shape`), window, cast; returns the tensor and its spacing.

    Window: values are clipped to center +/- width/2 and scaled to 0..1. Casting: float32/float16
    keep those values (modality units without a window); uint8 scales 0..1 to 0..255 (without a
    window the volume's own minimum..maximum is scaled); int16 keeps modality units, rounded, clipped
    to the window when there is one."""
    array, spacing = resample(volume.array, volume.spacing, to_spacing=pre.spacing, to_shape=pre.shape)
    if pre.dtype == "int16":
        if pre.window is not None:
            low, high = pre.window.center - pre.window.width / 2, pre.window.center + pre.window.width / 2
            array = np.clip(array, low, high)
        info = np.iinfo(np.int16)
        return np.clip(np.rint(array), info.min, info.max).astype(np.int16), spacing
    if pre.window is not None:
        low = pre.window.center - pre.window.width / 2
        array = (np.clip(array, low, low + pre.window.width) - np.float32(low)) / np.float32(pre.window.width)
    elif pre.dtype == "uint8":
        low, high = float(array.min()), float(array.max())
        array = (array - np.float32(low)) / np.float32(high - low) if high > low else np.zeros_like(array)
    if pre.dtype == "uint8":
        return np.rint(array * 255).astype(np.uint8), spacing
    return np.ascontiguousarray(array, dtype=np.dtype(pre.dtype)), spacing
