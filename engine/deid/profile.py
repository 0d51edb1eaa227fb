"""The de-identification profile: which Annex E table edition, which options, and the site lists.

Every option defaults to off, which gives the strictest result (Basic Profile, HIPAA Safe Harbor).
The field descriptions are the documentation of the YAML profile file (`radbridge deid --profile`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.deid.table import DEFAULT_EDITION, editions

__all__ = [
    "DEFAULT_DESCRIPTOR_WORDS",
    "SECONDARY_CAPTURE_SOP_CLASSES",
    "BurnedInConfig",
    "BurnedInDevice",
    "DeidProfile",
    "Hl7DeidConfig",
    "RegionRule",
    "SafePrivateTag",
]

_PRIVATE_TAG = re.compile(r"^\(([0-9A-Fa-f]{4}),[xX]{2}([0-9A-Fa-f]{2})\)$")

# Secondary Capture Image Storage and its multi-frame variants: screenshots, scanned documents.
SECONDARY_CAPTURE_SOP_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
]

# Words that describe an examination without identifying anyone (Clean Descriptors option).
DEFAULT_DESCRIPTOR_WORDS = sorted(
    """CT MR MRI US XR CR DX MG NM PT PET SPECT RF XA CTA MRA HEAD BRAIN NECK CHEST THORAX LUNG LUNGS HEART
    CARDIAC ABDOMEN ABD PELVIS SPINE CERVICAL THORACIC LUMBAR KNEE HIP SHOULDER ANKLE WRIST HAND FOOT ELBOW BREAST
    LIVER KIDNEY RENAL PROSTATE SINUS FACE ORBIT WHOLE BODY LEFT RIGHT BILATERAL AXIAL AX CORONAL COR SAGITTAL SAG
    WITH WITHOUT W WO AND OR CONTRAST IV ORAL NONCONTRAST NON ANGIO ANGIOGRAPHY PERFUSION DIFFUSION DWI ADC FLAIR
    T1 T2 STIR SWI GRE MPRAGE LOCALIZER SCOUT TOPOGRAM ROUTINE SCREENING DIAGNOSTIC FOLLOW UP PROTOCOL SERIES
    STANDARD SOFT TISSUE BONE LUNG MIP MPR RECON RECONSTRUCTION THIN THICK PRE POST DELAYED ARTERIAL VENOUS
    PORTAL PHASE LOW DOSE HIGH RESOLUTION HR PA AP LAT LATERAL OBLIQUE VIEW VIEWS CC MLO TOMOSYNTHESIS""".split()
)


class SafePrivateTag(BaseModel):
    """A private attribute kept by the Retain Safe Private option, named by its creator and element offset."""

    model_config = ConfigDict(extra="forbid")

    creator: str = Field(
        min_length=1, description="Private Creator value reserving the block, e.g. 'SIEMENS CT VA0 COAD'."
    )
    tag: str = Field(
        description="'(gggg,xxee)': odd group gggg, element offset ee within the creator's block (xx is the block).",
    )

    @field_validator("tag")
    @classmethod
    def _check_tag(cls, v: str) -> str:
        m = _PRIVATE_TAG.match(v.strip())
        if not m:
            raise ValueError("expected '(gggg,xxee)', e.g. '(0019,xx23)'")
        if int(m.group(1), 16) % 2 == 0:
            raise ValueError("a private group is odd")
        return v.strip()

    @property
    def group(self) -> int:
        m = _PRIVATE_TAG.match(self.tag)
        assert m is not None  # validated
        return int(m.group(1), 16)

    @property
    def offset(self) -> int:
        m = _PRIVATE_TAG.match(self.tag)
        assert m is not None
        return int(m.group(2), 16)


class RegionRule(BaseModel):
    """Clean Pixel Data: regions blanked in every frame of matching images."""

    model_config = ConfigDict(extra="forbid")

    modality: str = Field(description="Modality (0008,0060) the rule applies to, e.g. 'US'.")
    manufacturer: str | None = Field(None, description="Manufacturer (0008,0070), compared case-insensitively.")
    model: str | None = Field(None, description="Manufacturer's Model Name (0008,1090), case-insensitive.")
    rows: int | None = Field(None, gt=0, description="Only images of this many rows.")
    columns: int | None = Field(None, gt=0, description="Only images of this many columns.")
    regions: list[tuple[int, int, int, int]] = Field(
        min_length=1,
        description="Rectangles [x0, y0, x1, y1] in pixels, x1/y1 exclusive, set to zero in every frame.",
    )

    @field_validator("regions")
    @classmethod
    def _check_regions(cls, v: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
        for x0, y0, x1, y1 in v:
            if min(x0, y0) < 0 or x1 <= x0 or y1 <= y0:
                raise ValueError("each region is [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1")
        return v


class BurnedInDevice(BaseModel):
    """A device known to burn text into its images."""

    model_config = ConfigDict(extra="forbid")

    manufacturer: str = Field(description="Manufacturer (0008,0070), case-insensitive.")
    model: str | None = Field(None, description="Manufacturer's Model Name (0008,1090); any model when absent.")


class BurnedInConfig(BaseModel):
    """Images that may carry burned-in text are cleaned by region rules or blocked; never sent as they are."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["clean", "block"] = Field(
        "block",
        description="'clean': blank the regions of the first matching rule (no rule: blocked); 'block': never send.",
    )
    modalities: list[str] = Field(
        default_factory=lambda: ["US"],
        description="Modalities treated as carrying burned-in text even when Burned In Annotation says NO.",
    )
    sop_classes: list[str] = Field(
        default_factory=lambda: list(SECONDARY_CAPTURE_SOP_CLASSES),
        description="SOP Class UIDs treated likewise (default: the Secondary Capture family).",
    )
    devices: list[BurnedInDevice] = Field(
        default_factory=list, description="Manufacturer/model pairs treated likewise."
    )
    rules: list[RegionRule] = Field(default_factory=list, description="Region rules for mode 'clean'.")


class Hl7DeidConfig(BaseModel):
    """HL7 v2 de-identification choices (HIPAA Safe Harbor identifiers)."""

    model_config = ConfigDict(extra="forbid")

    keep_free_text: bool = Field(
        False, description="Keep NTE-3, OBX-5 of types TX/FT/ST and other free text (may hold names): off blanks it."
    )
    keep_provider_names: bool = Field(
        False,
        description="Keep ordering/attending/interpreting provider names. Not patient identifiers under Safe Harbor, "
        "but removed by default as no model needs them.",
    )


class DeidProfile(BaseModel):
    """PS3.15 Annex E Basic Application Level Confidentiality Profile with its options."""

    model_config = ConfigDict(extra="forbid")

    project: str = Field(
        "default", min_length=1, description="Project name: pseudonyms and date shifts are stable within a project."
    )
    table_edition: str = Field(
        DEFAULT_EDITION, description="Edition of Table E.1-1 from dicom-anonymizer, e.g. '2026c', '2024b', '2023'."
    )
    retain_uids: bool = Field(False, description="Retain UIDs Option: UIDs are kept instead of replaced.")
    retain_longitudinal_temporal: bool = Field(
        False,
        description="Retain Longitudinal Temporal Information, Modified Dates: dates shifted by a per-patient "
        "offset of 1..3650 days back (HMAC of the patient id), times kept. Off: dates dummied or removed.",
    )
    retain_patient_characteristics: bool = Field(
        False, description="Retain Patient Characteristics Option: sex, age (over 89 given as 090Y), size, weight..."
    )
    retain_device_identity: bool = Field(
        False, description="Retain Device Identity Option: station name, serial numbers, device ids."
    )
    retain_institution_identity: bool = Field(
        False, description="Retain Institution Identity Option: institution name, address, department."
    )
    clean_descriptors: bool = Field(
        False,
        description="Clean Descriptors Option: study/series descriptions, comments etc. keep only words of "
        "descriptor_allow_list (else blank) instead of being removed.",
    )
    retain_safe_private: bool = Field(
        False, description="Retain Safe Private Option: keep the private attributes listed in safe_private."
    )
    safe_private: list[SafePrivateTag] = Field(
        default_factory=list, description="Private attributes known to be safe; all other private data is removed."
    )
    descriptor_allow_list: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DESCRIPTOR_WORDS),
        description="Non-identifying words kept by Clean Descriptors (case-insensitive).",
    )
    burned_in: BurnedInConfig = Field(default_factory=BurnedInConfig, description="Burned-in text handling.")
    hl7: Hl7DeidConfig = Field(default_factory=Hl7DeidConfig, description="HL7 v2 de-identification choices.")

    @field_validator("table_edition")
    @classmethod
    def _check_edition(cls, v: str) -> str:
        known = editions()
        if v not in known:
            raise ValueError(f"unknown edition; installed: {', '.join(known)}")
        return v

    @model_validator(mode="after")
    def _check_safe_private(self) -> DeidProfile:
        if self.safe_private and not self.retain_safe_private:
            raise ValueError("safe_private is listed but retain_safe_private is off: set it to true or drop the list")
        return self
