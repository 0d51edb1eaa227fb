"""Keyed pseudonyms and date shifts: HMAC-SHA256 under the project's de-identification key.

Deterministic, so the same input gives the same output within a project without storing anything per
value; different projects (or keys) give unlinkable outputs. Each derivation has its own label so a
UID pseudonym never equals a patient or identifier pseudonym of the same text.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import date, timedelta

__all__ = [
    "MAX_SHIFT_DAYS",
    "UidMapper",
    "day_shift",
    "id_pseudonym",
    "patient_pseudonym",
    "shift_da",
    "shift_dt",
    "uid_pseudonym",
    "year_only",
]

MAX_SHIFT_DAYS = 3650
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(.*)$", re.S)


def _mac(key: bytes, *parts: str) -> bytes:
    return hmac.new(key, "\x00".join(parts).encode("utf-8"), hashlib.sha256).digest()


def uid_pseudonym(key: bytes, project: str, uid: str) -> str:
    """HMAC-SHA256(key, project || uid) -> '2.25.' + the first 128 bits as an integer (PS3.5 B.2)."""
    digest = hmac.new(key, f"{project}\x00{uid.strip()}".encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def patient_pseudonym(key: bytes, project: str, patient_id: str) -> str:
    """'ANON-' + 12 hex digits: replaces Patient ID and Patient's Name (DICOM) and PID-3/PID-5 (HL7)."""
    return "ANON-" + _mac(key, "patient", project, patient_id.strip()).hex()[:12].upper()


def id_pseudonym(key: bytes, project: str, value: str) -> str:
    """'ID-' + 12 hex digits (16 characters, fits SH): accession, placer/filler numbers, visit numbers."""
    return "ID-" + _mac(key, "id", project, value.strip()).hex()[:12].upper()


def day_shift(key: bytes, project: str, patient_id: str) -> int:
    """Days to add to every date of one patient: -1 .. -MAX_SHIFT_DAYS."""
    n = int.from_bytes(_mac(key, "shift", project, patient_id.strip())[:8], "big")
    return -(n % MAX_SHIFT_DAYS + 1)


class UidMapper:
    """Replaces UIDs and records the crosswalk (pseudonym -> original) for the caller to seal."""

    def __init__(self, key: bytes, project: str) -> None:
        self._key = key
        self._project = project
        self.crosswalk: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        uid = uid.strip().rstrip("\x00")
        if not uid:
            return uid
        new = uid_pseudonym(self._key, self._project, uid)
        self.crosswalk[new] = uid
        return new


def _shift_date(y: int, m: int, d: int, days: int) -> date | None:
    try:
        return date(y, m, d) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None


def shift_da(value: str, days: int) -> str | None:
    """Shift a DA value (YYYYMMDD); None when it is not a readable date (the caller blanks it)."""
    v = value.strip()
    if len(v) != 8 or not v.isdigit():
        return None
    shifted = _shift_date(int(v[:4]), int(v[4:6]), int(v[6:]), days)
    return shifted.strftime("%Y%m%d") if shifted else None


def shift_dt(value: str, days: int) -> str | None:
    """Shift the date part of a DT / HL7 DTM value, keeping its precision, time and offset."""
    m = _DT.match(value.strip())
    if not m:
        return None
    year, month, day, rest = m.groups()
    if rest and not day and rest[0] not in "+-":  # e.g. '2026.1' or '2026111': not a DT
        return None
    shifted = _shift_date(int(year), int(month or 1), int(day or 1), days)
    if shifted is None:
        return None
    text = shifted.strftime("%Y%m%d")
    precision = 8 if day else 6 if month else 4
    return text[:precision] + (rest or "")


def year_only(value: str) -> str:
    """The year of a DA/DT/DTM value, or '' when there is none (HIPAA Safe Harbor keeps years)."""
    v = value.strip()
    return v[:4] if len(v) >= 4 and v[:4].isdigit() else ""
