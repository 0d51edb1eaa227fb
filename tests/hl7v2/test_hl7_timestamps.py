"""HL7 DTM/DT parsing with and without offsets, with the site time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from engine.hl7v2 import parse_date, parse_dtm
from tests import phi

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def test_offset_given() -> None:
    dt = parse_dtm("20261121101500+0100", NY)
    assert dt == datetime(2026, 11, 21, 9, 15, tzinfo=UTC)
    assert dt.utcoffset() == timedelta(hours=1)
    assert parse_dtm("20261121101500-0530", NY).utcoffset() == -timedelta(hours=5, minutes=30)
    assert parse_dtm("20261121101500+0000", NY).utcoffset() == timedelta(0)


def test_no_offset_takes_the_site_zone() -> None:
    winter = parse_dtm("20261121101500", NY)
    assert winter.tzinfo is NY and winter.utcoffset() == -timedelta(hours=5)
    summer = parse_dtm("20260715101500", NY)
    assert summer.utcoffset() == -timedelta(hours=4)
    assert parse_dtm("20260715101500", BERLIN).utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026", datetime(2026, 1, 1)),
        ("202611", datetime(2026, 11, 1)),
        ("20261121", datetime(2026, 11, 21)),
        ("2026112110", datetime(2026, 11, 21, 10)),
        ("202611211015", datetime(2026, 11, 21, 10, 15)),
        ("20261121101530", datetime(2026, 11, 21, 10, 15, 30)),
        ("20261121101530.1", datetime(2026, 11, 21, 10, 15, 30, 100000)),
        ("20261121101530.1234", datetime(2026, 11, 21, 10, 15, 30, 123400)),
    ],
)
def test_precisions(value: str, expected: datetime) -> None:
    assert parse_dtm(value, BERLIN) == expected.replace(tzinfo=BERLIN)
    assert parse_dtm(value + "+0200", BERLIN) == expected.replace(tzinfo=timezone(timedelta(hours=2)))
    assert parse_dtm(f" {value} ", BERLIN) == expected.replace(tzinfo=BERLIN)  # padding tolerated


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "expected YYYY"),
        ("2026112", "expected YYYY"),
        ("20261321", "month out of range"),
        ("20261100", "day out of range"),
        ("19470229", "day out of range for month"),  # 1947 had no 29 February
        ("2026112125", "hour out of range"),
        ("202611211060", "minute out of range"),
        ("20261121101560", "second out of range"),
        ("20261121.5", "fractional seconds"),
        ("20261121101500.", "fractional seconds"),
        ("20261121101500+01", "+/-HHMM"),
        ("20261121101500+0160", "offset out of range"),
        ("2026-11-21", "expected YYYY"),
        ("-2026", "expected YYYY"),
        ("2026112110150０", "expected YYYY"),
    ],
)
def test_errors_name_the_problem_not_the_value(value: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_dtm(value, NY)
    assert fragment in str(info.value)
    assert not value.strip() or value.strip() not in str(info.value)


def test_parse_date() -> None:
    assert parse_date("19470228") == date(1947, 2, 28)
    assert parse_date("1947") == date(1947, 1, 1)
    assert parse_date("194702") == date(1947, 2, 1)
    assert parse_date("19470228235959+0100") == date(1947, 2, 28)  # the date as written
    assert parse_date(phi.DOB) == date(1947, 3, 12)
    with pytest.raises(ValueError, match="DT: day out of range") as info:
        parse_date("19470229")
    assert "19470229" not in str(info.value)
