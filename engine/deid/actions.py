"""The values the actions write: dummies per VR (D), empty values (Z), cleaned text and ages (C).

D on a sequence writes one empty item (a non-zero-length dummy); Z on a sequence writes no items.
"""

from __future__ import annotations

import re

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

__all__ = ["DUMMY_TEXT", "clean_text", "dummy_value", "generalise_age", "zero"]

DUMMY_TEXT = "ANONYMIZED"
_DUMMIES: dict[str, object] = {
    "AE": DUMMY_TEXT,
    "AS": "000Y",
    "AT": 0,
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "FL": 0.0,
    "FD": 0.0,
    "IS": "0",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "OB": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "OW": b"\x00\x00",
    "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "SL": 0,
    "SS": 0,
    "ST": DUMMY_TEXT,
    "SV": 0,
    "TM": "000000",
    "UC": DUMMY_TEXT,
    "UL": 0,
    "UN": b"\x00\x00",
    "UR": DUMMY_TEXT,
    "US": 0,
    "UT": DUMMY_TEXT,
    "UV": 0,
}
_WORD = re.compile(r"[A-Za-z0-9]+")
_AGE = re.compile(r"^(\d{3})([DWMY])$")


def dummy_value(vr: str) -> object:
    """A non-empty value valid for `vr` that carries no information (UI is mapped by the caller)."""
    if vr == "SQ":
        return Sequence([Dataset()])
    return _DUMMIES.get(vr, b"\x00\x00")


def zero(elem: DataElement) -> None:
    """Z: keep the attribute, with a zero-length value."""
    elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value


def clean_text(value: str, allowed: frozenset[str]) -> str:
    """Keep only allow-listed words (case-insensitive), in their order; '' when none is left."""
    return " ".join(w for w in _WORD.findall(value) if w.upper() in allowed)


def generalise_age(value: str) -> tuple[str, bool]:
    """(age, changed): ages over 89 years become '090Y' (HIPAA Safe Harbor); unreadable ages become ''."""
    m = _AGE.match(value.strip())
    if not m:
        return "", True
    if m.group(2) == "Y" and int(m.group(1)) > 89:
        return "090Y", True
    return value, False
