"""What a de-identification run declares: the HIPAA method, the DICOM De-identification Method attributes
(PS3.3 C.7.1.1, codes of CID 7050), and the folder report. Reports carry tags and action codes, never values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset

from engine.deid.profile import DeidProfile

__all__ = ["METHOD_CODES", "FolderReport", "method", "method_codes", "method_description", "set_method_attributes"]

Method = Literal["safe-harbor", "limited-data-set"]

# CID 7050 De-identification Method, coding scheme DCM.
METHOD_CODES = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113105": "Clean Descriptors Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}


def method(profile: DeidProfile) -> Method:
    """'safe-harbor' only when no dates, UIDs, device or institution identity and no free text are kept
    (ages over 89 are always generalised); anything more is a 'limited-data-set'."""
    keeps = (
        profile.retain_longitudinal_temporal
        or profile.retain_uids
        or profile.retain_device_identity
        or profile.retain_institution_identity
        or profile.hl7.keep_free_text
    )
    return "limited-data-set" if keeps else "safe-harbor"


def method_codes(profile: DeidProfile, pixels_cleaned: bool) -> list[str]:
    """CID 7050 code values for what was applied, in code order."""
    flags = {
        "113100": True,
        "113101": pixels_cleaned,
        "113105": profile.clean_descriptors,
        "113107": profile.retain_longitudinal_temporal,
        "113108": profile.retain_patient_characteristics,
        "113109": profile.retain_device_identity,
        "113110": profile.retain_uids,
        "113111": profile.retain_safe_private,
        "113112": profile.retain_institution_identity,
    }
    return [code for code, on in flags.items() if on]


def method_description(profile: DeidProfile, pixels_cleaned: bool) -> list[str]:
    """De-identification Method (0012,0063) values: one LO (<= 64 characters) per profile/option."""
    texts = [f"radbridge PS3.15 E.1-1 Basic Profile ({profile.table_edition})"]
    texts += [METHOD_CODES[c] for c in method_codes(profile, pixels_cleaned)[1:]]
    return [t[:64] for t in texts]


def set_method_attributes(ds: Dataset, profile: DeidProfile, pixels_cleaned: bool) -> None:
    """Patient Identity Removed, De-identification Method (+ Code Sequence), Longitudinal Temporal flag."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = method_description(profile, pixels_cleaned)
    items = []
    for code in method_codes(profile, pixels_cleaned):
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = METHOD_CODES[code]
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if profile.retain_longitudinal_temporal else "REMOVED"


@dataclass
class FolderReport:
    """Result of `deid_folder`. `uids` is the crosswalk (pseudonym -> original): seal it, never write it out."""

    method: Method
    files: list[dict[str, object]] = field(default_factory=list)
    blocked: list[dict[str, object]] = field(default_factory=list)
    skipped: list[dict[str, object]] = field(default_factory=list)
    uids: dict[str, str] = field(default_factory=dict)
    report_path: Path | None = None

    @property
    def written(self) -> int:
        return len(self.files)

    def action_totals(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for f in self.files:
            counts.update(action for _, action in f["actions"])  # type: ignore[attr-defined]
        return dict(sorted(counts.items()))

    def to_json(self, profile: DeidProfile) -> dict[str, object]:
        """The deid-report.json document (no values, no file names, no crosswalk)."""
        return {
            "method": self.method,
            "table_edition": profile.table_edition,
            "project": profile.project,
            "options": {
                name: getattr(profile, name)
                for name in (
                    "retain_uids",
                    "retain_longitudinal_temporal",
                    "retain_patient_characteristics",
                    "retain_device_identity",
                    "retain_institution_identity",
                    "clean_descriptors",
                    "retain_safe_private",
                )
            },
            "burned_in_mode": profile.burned_in.mode,
            "totals": {
                "written": self.written,
                "blocked": len(self.blocked),
                "skipped": len(self.skipped),
                "actions": self.action_totals(),
            },
            "files": self.files,
            "blocked": self.blocked,
            "skipped": self.skipped,
        }
