"""HL7 v2 DTM/TS and DT values to Python datetimes and dates.

DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]. Missing parts take their lowest value
(a date alone is midnight). Without an offset the value is local time at the site, so it gets the
site's time zone (ambiguous/non-existent local times resolve with fold=0, zoneinfo's default).
Errors say what is wrong, never the value (it may be a birth date).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo

__all__ = ["parse_date", "parse_dtm"]

_LENGTHS = (4, 6, 8, 10, 12, 14)
_SHAPE = "expected YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]"


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _split_offset(value: str) -> tuple[str, timezone | None]:
    cut = max(value.rfind("+"), value.rfind("-"))
    if cut == -1:
        return value, None
    if cut < 4:
        raise ValueError(f"DTM: {_SHAPE}")
    zone = value[cut + 1 :]
    if not _digits(value[:cut].replace(".", "", 1)):
        raise ValueError(f"DTM: {_SHAPE}")
    if len(zone) != 4 or not _digits(zone):
        raise ValueError("DTM: time zone offset must be +/-HHMM")
    hours, minutes = int(zone[:2]), int(zone[2:])
    if hours > 14 or minutes > 59:
        raise ValueError("DTM: time zone offset out of range")
    delta = timedelta(hours=hours, minutes=minutes)
    return value[:cut], timezone(-delta if value[cut] == "-" else delta)


def _fields(body: str, kind: str) -> list[int]:
    """[year, month, day, hour, minute, second, microsecond] with defaults for what is missing."""
    main, dot, fraction = body.partition(".")
    if not _digits(main) or len(main) not in _LENGTHS:
        raise ValueError(f"{kind}: {_SHAPE}")
    if dot and (len(main) != 14 or not _digits(fraction) or not 1 <= len(fraction) <= 6):
        raise ValueError(f"{kind}: fractional seconds need all of YYYYMMDDHHMMSS and 1-6 digits")
    parts = [int(main[:4])] + [int(main[i : i + 2]) for i in range(4, len(main), 2)]
    parts += [1, 1, 0, 0, 0][len(parts) - 1 :]
    micro = int(fraction.ljust(6, "0")) if dot else 0
    names = ("year", "month", "day", "hour", "minute", "second")
    limits = ((1, 9999), (1, 12), (1, 31), (0, 23), (0, 59), (0, 59))
    for name, (lo, hi), v in zip(names, limits, parts, strict=True):
        if not lo <= v <= hi:
            raise ValueError(f"{kind}: {name} out of range")
    return parts + [micro]


def parse_dtm(value: str, site_tz: tzinfo) -> datetime:
    """An aware datetime; values without an offset are taken as local time in `site_tz`."""
    body, tz = _split_offset(value.strip())
    y, mo, d, h, mi, s, us = _fields(body, "DTM")
    try:
        return datetime(y, mo, d, h, mi, s, us, tzinfo=tz or site_tz)
    except ValueError:
        raise ValueError("DTM: day out of range for month") from None


def parse_date(value: str) -> date:
    """A DT (YYYY[MM[DD]]); a longer DTM is accepted and gives its calendar date as written."""
    body, _ = _split_offset(value.strip())
    y, mo, d = _fields(body, "DT")[:3]
    try:
        return date(y, mo, d)
    except ValueError:
        raise ValueError("DT: day out of range for month") from None
