"""The path grammar: every form, round-trips, and syntax errors with exact columns."""

from __future__ import annotations

import dataclasses

import pytest

from engine.hl7v2 import ALL, Path, PathSyntaxError, parse_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PID-3", Path("PID", 3)),
        ("PID-3.1", Path("PID", 3, component=1)),
        ("PID-3.1.2", Path("PID", 3, component=1, subcomponent=2)),
        ("PID-3[2].1", Path("PID", 3, repetition=2, component=1)),
        ("PID-3[1].1", Path("PID", 3, repetition=1, component=1)),
        ("PID-3[*].1", Path("PID", 3, repetition=ALL, component=1)),
        ("OBX[3]-5", Path("OBX", 5, occurrence=3)),
        ("OBX[*]-5", Path("OBX", 5, occurrence=ALL)),
        ("OBX[12]-5[10].3.4", Path("OBX", 5, 12, 10, 3, 4)),
        ("ZPI-2.2", Path("ZPI", 2, component=2)),
        ("Z01-1", Path("Z01", 1)),
        ("MSH-1", Path("MSH", 1)),
        ("OBR-27.6", Path("OBR", 27, component=6)),
    ],
)
def test_forms_parse_and_round_trip(text: str, expected: Path) -> None:
    path = parse_path(text)
    assert path == expected
    assert str(path) == text
    assert parse_path(str(path)) == path


def test_open_paths_and_cache() -> None:
    assert parse_path("OBX[*]-5").is_open and parse_path("PID-3[*]").is_open
    assert not parse_path("PID-3[1]").is_open
    assert parse_path("PID-3.1") is parse_path("PID-3.1")  # lru_cache
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_path("PID-3").field = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("", 0, "expected segment id"),
        ("pid-3", 0, "expected segment id"),
        ("1ID-3", 0, "expected segment id"),
        ("PI-3", 0, "expected segment id"),
        ("PID3", 3, "expected '-' after segment id"),
        ("PID", 3, "expected '-' after segment id"),
        ("PID-", 4, "expected field number after '-'"),
        ("PID-x", 4, "expected field number after '-'"),
        ("PID-0", 4, "field number must be 1 or more"),
        ("PID-03", 4, "field number has a leading zero"),
        ("PID-3[", 6, "expected repetition number or '*' after '['"),
        ("PID-3[x]", 6, "expected repetition number or '*' after '['"),
        ("PID-3[0]", 6, "repetition number must be 1 or more"),
        ("PID-3[2", 7, "expected ']'"),
        ("PID-3[*", 7, "expected ']'"),
        ("PID-3.", 6, "expected component number after '.'"),
        ("PID-3.1.", 8, "expected sub-component number after '.'"),
        ("PID-3.1.2.3", 9, "paths stop at the sub-component"),
        ("PID-3.1[2]", 7, "only segments and fields repeat"),
        ("PID-3 ", 5, "unexpected character"),
        (" PID-3", 0, "expected segment id"),
        ("PID-3-4", 5, "unexpected character"),
        ("OBX[-5", 4, "expected segment occurrence number or '*' after '['"),
        ("OBX[0]-5", 4, "segment occurrence number must be 1 or more"),
        ("OBX[3]5", 6, "expected '-' after segment id"),
        ("OBX[3-5", 5, "expected ']'"),
        ("PID.3", 3, "expected '-' after segment id"),
    ],
)
def test_syntax_errors_carry_the_column(text: str, column: int, message: str) -> None:
    with pytest.raises(PathSyntaxError) as info:
        parse_path(text)
    assert info.value.column == column
    assert message in info.value.reason
    assert isinstance(info.value, ValueError)
    assert info.value.text == text
    assert str(info.value).endswith(f"(column {column})")
