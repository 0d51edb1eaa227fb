"""Burned-in text: which images may carry it, and Clean Pixel Data by region rules.

An image needs cleaning when Burned In Annotation (0028,0301) is YES, or its modality, SOP class or
manufacturer/model is on the configured lists (those are trusted over a device's own "NO", which many
devices do not set truthfully). Pixel data is decoded with pydicom + numpy (native, RLE Lossless, and any
codec pydicom has a plugin for); cleaned images are written uncompressed (Explicit VR Little Endian).
Reasons returned here name the rule that fired, never a value from the image or the patient.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from engine.core.errors import PermanentError
from engine.deid.profile import BurnedInConfig, RegionRule

__all__ = ["PixelCleanError", "burned_in_reason", "clean_regions", "find_rule"]


class PixelCleanError(PermanentError):
    """The pixel data could not be decoded or re-encoded, so it cannot be cleaned."""


def _same(a: object, b: str | None) -> bool:
    return b is None or str(a or "").strip().upper() == b.strip().upper()


def burned_in_reason(ds: Dataset, cfg: BurnedInConfig) -> str | None:
    """Why this image may carry burned-in text, or None. Images without pixel data never do."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return None
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "Burned In Annotation is YES"
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality and modality in {m.upper() for m in cfg.modalities}:
        return f"modality {modality} is listed as carrying burned-in text"
    if str(ds.get("SOPClassUID", "")) in cfg.sop_classes:
        return "SOP class is listed as carrying burned-in text"
    manufacturer, model = ds.get("Manufacturer", ""), ds.get("ManufacturerModelName", "")
    for device in cfg.devices:
        if _same(manufacturer, device.manufacturer) and _same(model, device.model):
            return "device is listed as carrying burned-in text"
    return None


def find_rule(ds: Dataset, cfg: BurnedInConfig) -> RegionRule | None:
    """The first region rule matching modality, manufacturer, model and size."""
    for rule in cfg.rules:
        if (
            _same(ds.get("Modality", ""), rule.modality)
            and _same(ds.get("Manufacturer", ""), rule.manufacturer)
            and _same(ds.get("ManufacturerModelName", ""), rule.model)
            and (rule.rows is None or ds.get("Rows") == rule.rows)
            and (rule.columns is None or ds.get("Columns") == rule.columns)
        ):
            return rule
    return None


def clean_regions(ds: Dataset, rule: RegionRule) -> None:
    """Zero the rule's regions in every frame and write the pixel data back uncompressed."""
    if "PixelData" not in ds:
        raise PixelCleanError("only integer Pixel Data can be cleaned (float pixel data present)")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = np.array(ds.pixel_array)  # writable copy; YBR is converted to RGB
    except Exception as exc:  # pydicom raises several types for missing codecs and corrupt data
        name = ts.name if ts is not None else "unknown transfer syntax"
        raise PixelCleanError(f"pixel data could not be decoded ({name}: {type(exc).__name__})") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1) > 1
    samples = int(ds.get("SamplesPerPixel", 1) or 1) > 1
    rows, cols = arr.shape[1:3] if frames else arr.shape[0:2]
    for x0, y0, x1, y1 in rule.regions:
        ys, xs = slice(min(y0, rows), min(y1, rows)), slice(min(x0, cols), min(x1, cols))
        if frames:
            arr[:, ys, xs, ...] = 0
        else:
            arr[ys, xs, ...] = 0
    photometric = str(ds.PhotometricInterpretation)
    if samples and photometric.startswith("YBR"):
        photometric = "RGB"  # pixel_array converted it
    try:
        ds.set_pixel_data(arr, photometric, int(ds.BitsStored), generate_instance_uid=False)
    except (ValueError, NotImplementedError, AttributeError) as exc:
        raise PixelCleanError(f"cleaned pixel data could not be written ({type(exc).__name__})") from exc
    ds.BurnedInAnnotation = "NO"
