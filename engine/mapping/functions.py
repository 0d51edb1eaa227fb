"""The mapping language's building blocks: string functions (`fn:`), conversions (`as:`) and
table lookups (`map:`). All are plain functions chosen once at compile time.

Error texts name what is wrong, never the value: values are patient data.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import date, datetime, time, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.hl7v2.escape import Delimiters
from engine.hl7v2.timestamps import parse_date, parse_dtm

__all__ = ["CONVERSIONS", "FUNCTIONS", "TableMiss", "control_id", "convert", "format_hl7", "lookup"]

StrFn = Callable[[str, Delimiters], str]
_CONTROL_ID = re.compile(r"[A-Za-z0-9._-]{1,20}")


def _trim(value: str, d: Delimiters) -> str:
    return value.strip()


def _upper(value: str, d: Delimiters) -> str:
    return value.upper()


def _lower(value: str, d: Delimiters) -> str:
    return value.lower()


def _digits(value: str, d: Delimiters) -> str:
    return "".join(c for c in value if c.isascii() and c.isdigit())


def _first_component(value: str, d: Delimiters) -> str:
    return value.split(d.component, 1)[0].split(d.subcomponent, 1)[0]


def _component(n: int) -> StrFn:
    def pick(value: str, d: Delimiters) -> str:
        parts = value.split(d.component)
        return parts[n - 1] if n <= len(parts) else ""

    return pick


def _strip_leading_zeros(value: str, d: Delimiters) -> str:
    stripped = value.lstrip("0")
    return stripped if stripped or not value else "0"


def control_id(value: str, d: Delimiters | None = None) -> str:
    """An MSH-10 (ST, at most 20 characters in v2.3.1 and v2.5.1) derived from an id: the id itself
    when it fits (1-20 letters, digits, '.', '-', '_'), else 'RB' and the first 18 hex digits of its
    SHA-256. The same id always gives the same control id, so the engine knows its message again."""
    if _CONTROL_ID.fullmatch(value):
        return value
    return "RB" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:18].upper()


def _person_name(value: str, d: Delimiters) -> str:
    # XPN family^given^middle^suffix^prefix -> DICOM-style family^given^middle (no trailing '^').
    parts = value.split(d.component)[:3]
    parts[0] = parts[0].split(d.subcomponent, 1)[0]
    return "^".join([p.strip() for p in parts]).rstrip("^")


FUNCTIONS: dict[str, tuple[StrFn, str]] = {
    "trim": (_trim, "remove leading and trailing spaces"),
    "upper": (_upper, "upper-case"),
    "lower": (_lower, "lower-case"),
    "digits": (_digits, "keep only the digits 0-9"),
    "first_component": (_first_component, "text before the first component (^) or sub-component (&) separator"),
    "second_component": (_component(2), "text between the first and second component separator (^)"),
    "third_component": (_component(3), "text between the second and third component separator (^)"),
    "strip_leading_zeros": (_strip_leading_zeros, "remove leading zeros (all zeros become 0)"),
    "person_name": (
        _person_name,
        "an HL7 name (XPN) as family^given^middle, trailing empty parts dropped (DICOM PatientName order)",
    ),
    "control_id": (control_id, "the value if it fits MSH-10 (20 characters), else 'RB' + 18 hex digits of its SHA-256"),
}
"""Name -> (function, one-line description). Each takes the value and the message's delimiters."""


# --- conversions (`as:`) ------------------------------------------------------------------------


def _as_str(value: Any, tz: tzinfo) -> Any:
    return value if isinstance(value, str) else format_hl7(value, tz)


def _as_int(value: Any, tz: tzinfo) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    body = text[1:] if text[:1] in "+-" else text
    if not (body.isascii() and body.isdigit()):
        raise ValueError("not an integer")
    return int(text)


def _as_decimal(value: Any, tz: tzinfo) -> Any:
    if isinstance(value, Decimal):
        return value
    try:
        out = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError("not a decimal number") from None
    if not out.is_finite():
        raise ValueError("not a decimal number")
    return out


# The usual shapes (YYYYMMDD; YYYYMMDDHHMM[SS] with an optional +/-ZZZZ) go through the C ISO
# parsers, ~10x faster than parse_date/parse_dtm; anything else, and any value those reject, takes
# the full parsers, which give the same results and the error texts.


def _as_date(value: Any, tz: tzinfo) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(tz).date()
    if isinstance(value, date):
        return value
    text = str(value)
    if len(text) == 8 and text.isdigit() and text.isascii():
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    if len(text) == 10 and text[4] == "-" == text[7]:  # ISO 8601, as records read back from JSON hold dates
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    return parse_date(text)


def _as_datetime(value: Any, tz: tzinfo) -> Any:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=tz)
    text = str(value)
    return _quick_dtm(text, tz) or parse_dtm(text, tz)


def _quick_dtm(text: str, tz: tzinfo) -> datetime | None:
    """`parse_dtm` for YYYYMMDDHHMM[SS][+/-ZZZZ]; None for other shapes and invalid values."""
    zone = ""
    if len(text) > 16 and text[-5] in "+-":
        text, zone = text[:-5], text[-5:]
        # parse_dtm's limits (fromisoformat takes up to 23:59)
        if not (zone[1:].isdigit() and zone[1:].isascii() and zone[1:3] <= "14" and zone[3:] <= "59"):
            return None
    if not ((len(text) == 14 or len(text) == 12) and text.isdigit() and text.isascii()):
        return None
    try:
        if zone:
            return datetime.fromisoformat(f"{text[:8]}T{text[8:]}{zone}")
        return datetime.combine(date.fromisoformat(text[:8]), time.fromisoformat(text[8:]), tz)
    except ValueError:
        return None


CONVERSIONS: dict[str, Callable[[Any, tzinfo], Any]] = {
    "str": _as_str,
    "int": _as_int,
    "decimal": _as_decimal,
    "date": _as_date,
    "datetime": _as_datetime,
}


def convert(kind: str, value: Any, tz: tzinfo) -> Any:
    """Convert `value` per `as: kind`; ValueError says what is wrong without quoting the value."""
    return CONVERSIONS[kind](value, tz)


def format_hl7(value: Any, tz: tzinfo) -> str:
    """A Python value as HL7 text: DTM (site time, with offset) for datetimes, DT for dates."""
    if isinstance(value, datetime):
        local = value.astimezone(tz) if value.tzinfo else value.replace(tzinfo=tz)
        text = local.strftime("%Y%m%d%H%M%S")
        if local.microsecond // 100:  # DTM allows at most four fractional digits (S.SSSS)
            text += f".{local.microsecond // 100:04d}".rstrip("0")
        return text + local.strftime("%z")
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, float):  # HL7 NM: plain digits, never an exponent
        text = repr(value)
        return format(Decimal(text), "f") if "e" in text or "E" in text else text
    return str(value)


# --- tables (`map:`) ----------------------------------------------------------------------------


class TableMiss(LookupError):
    """A code is not in the table and the table has no "*" entry."""


def lookup(table: dict[str, str], code: str) -> str:
    """Translate `code`; "*" is the fallback entry when present."""
    out = table.get(code)
    if out is None:
        out = table.get("*")
        if out is None:
            raise TableMiss()  # never the code itself: it may be patient data
    return out
