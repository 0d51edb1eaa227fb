"""The compiled fast path of HL7 -> record mappings gives exactly what the rules give when walked
one by one (`_value` + pydantic): the same records, JSON bytes and errors. Also the quick DTM/DT
conversions against the full parsers, and Record.to_json against json.dumps."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.hl7v2 import Message
from engine.hl7v2.timestamps import parse_date, parse_dtm
from engine.mapping import CompiledMapping, MappingError, MappingRefused, Record
from engine.mapping.functions import convert
from engine.mapping.records import _json_default
from tests.mapping.util import SAMPLES, TZ, compile_yaml, er7, shipped

UNREADABLE = {"malformed-no-msh.hl7", "malformed-bad-encoding.hl7"}  # Message.parse refuses them
MAPPINGS = {name: shipped(f"{name}.yaml") for name in ("orm-to-order", "omi-to-order", "adt-to-patient")}


def careful(mapping: CompiledMapping) -> CompiledMapping:
    """The same mapping without its compiled fast path."""
    slow = dataclasses.replace(mapping)
    object.__setattr__(slow, "_fast", None)
    return slow


def outcome(mapping: CompiledMapping, message: Message) -> object:
    try:
        records = mapping.apply(message, site_tz=TZ)
    except (MappingError, MappingRefused) as exc:
        return type(exc), vars(exc)
    return [(r, r.to_json()) for r in records]


def same(mapping: CompiledMapping, *texts: str) -> None:
    assert mapping._fast is not None  # type: ignore[attr-defined]
    for text in texts:
        fast = outcome(mapping, Message.parse(text))
        assert fast == outcome(careful(mapping), Message.parse(text)), text


@pytest.mark.parametrize("mapping", sorted(MAPPINGS))
@pytest.mark.parametrize("sample", [p.name for p in sorted(SAMPLES.glob("*.hl7")) if p.name not in UNREADABLE])
def test_shipped_mappings_on_every_sample(mapping: str, sample: str) -> None:
    same(MAPPINGS[mapping], (SAMPLES / sample).read_bytes().decode("utf-8"))


MSH = "MSH|^~\\&|RIS|GENHOSP|RB|AI|20260101120000||ORM^O01|C1|P|2.3.1"
ORDER = """
    from: hl7v2
    to: order
    each: ORC
    fields:
      event: { from: ORC-1, map: ev, required: true }
      order_status: { from: ORC-5, default: SC, when: { path: ORC-1, not_in: [CA] } }
      accession: { from: [OBR-18, ORC-3.1], fn: [trim, digits, strip_leading_zeros], required: true }
      priority: { from: [ORC-7.6, OBR-5], fn: [trim, upper], map: prio }
      modality: { value: CT, when: { path: OBR-24, equals: CT } }
      body_part: { value: GIVEN, when: { path: OBR-15, present: true } }
      reason: { from: "OBR[2]-13" }
      patient_id: { from: "PID-3[2].1" }
      patient_name: { from: PID-5, fn: person_name }
      birth_date: { from: PID-7 }
      ordered_at: { from: ORC-9 }
      requested_at: { from: ORC-15, as: datetime }
      study_uid: { from: ZDS-1, required: true, default: "1.2.3", when: { path: ORC-1, in: [NW, XO] } }
      sending_facility: { from: MSH-4 }
      sex: { from: PID-8, fn: upper, map: sex, default: U }
    tables:
      sex: { F: F, M: M, X: "" }
      ev: { NW: accepted, XO: changed, CA: cancelled, ZZ: "" }
      prio: { S: stat, R: routine, X: "", "*": urgent }
    """
PID = "PID|1||ID1^^^HOSP^MR~ID2^^^OTHER^PI||FAM&VAN^GIV^MID||19470312|f"


@pytest.mark.parametrize(
    "segments",
    [
        [PID, "ORC|NW||A-0012||SC||^^^^^S||20260704153000", "OBR|1" + "|" * 17 + " 00077 "],
        [PID, "ORC|CA||ACC1|||||||||||||20260705+0000", "OBR|1||||r"],
        [PID, "ORC|XO||ACC2||||^^^^^x", "OBR|1" + "|" * 14 + "HEAD" + "|" * 9 + "CT", "ZDS|9.9"],
        [PID, "ORC|NW||ACC3", "OBR|1||||X", "OBR|2" + "|" * 12 + "Pain \\T\\ swelling", "ORC|XO||ACC4"],
        ["ORC|NW||ACC5||||||20261340"],  # bad date: the careful path's error
        ["ORC|NW||ACC6||||||||||||||2026"],  # a date alone is a datetime at midnight
        ["ORC|HD||ACC7"],  # not in the table: 103
        ["ORC|ZZ||ACC8"],  # "" in the table: no value, required: 101
        ["ORC|NW", "OBR|1" + "|" * 17 + "N/A"],  # accession emptied by fn, nothing else: 101
        ["ORC|NW||ABC", "OBR|1" + "|" * 17 + "N/A"],  # emptied by fn on every path: 101
        ["PID|1||||^^||19470312|x", "ORC|NW||1"],  # name emptied by fn; sex mapped to "": the default
        [PID, "ORC|NW||ACC9", "ORC|NW"],  # the second group fails
        [PID],  # no ORC: 100
    ],
)
def test_inline_order_mapping(segments: list[str]) -> None:
    same(compile_yaml(ORDER), "\r".join([MSH, *segments]))


def test_literal_field_without_a_table_checks_its_values() -> None:
    m = compile_yaml("from: hl7v2\nto: order\nfields:\n  event: { value: accepted }\n  priority: { from: OBR-5 }\n")
    same(m, "\r".join([MSH, "OBR|1||||stat"]), "\r".join([MSH, "OBR|1||||S"]), MSH)


def test_model_required_field_left_empty_is_the_careful_error() -> None:
    m = compile_yaml("from: hl7v2\nto: order\nfields:\n  event: { from: ORC-1 }\n")
    same(m, "\r".join([MSH, "ORC|accepted"]), "\r".join([MSH, "ORC|"]), MSH)


def test_topic_rules_and_accept() -> None:
    m = compile_yaml(
        "from: hl7v2\nto: order\naccept: [ORM^O01]\nfields:\n  event: { value: accepted }\n"
        "topic: { from: ORC-1, map: t }\ntables:\n  t: { CA: order.cancelled, NW: '' }\n"
    )
    same(m, "\r".join([MSH, "ORC|CA"]), "\r".join([MSH, "ORC|NW"]), "\r".join([MSH, "ORC|XO"]))
    same(m, MSH.replace("ORM^O01", "ADT^A08"))


def test_star_paths_take_the_careful_path() -> None:
    m = compile_yaml('from: hl7v2\nto: order\nfields:\n  event: { value: accepted }\n  reason: { from: "OBX[*]-5" }\n')
    assert m._fast is None  # type: ignore[attr-defined]
    assert m.apply(er7(MSH, "OBX|1", "OBX|2||||B"), site_tz=TZ)[0].fields["reason"] == "B"


def test_the_code_is_readable() -> None:
    source = MAPPINGS["orm-to-order"]._fast.source  # type: ignore[attr-defined]
    assert "    # accession\n    v = S1.value(18, 1, None, None)  # OBR-18\n" in source


# --- quick conversions ------------------------------------------------------------------------------

DIGITS = st.text(alphabet="0123456789", min_size=0, max_size=15)
DTM = st.builds(
    lambda body, sign, zone: body + (sign + zone if sign else ""),
    st.one_of(DIGITS, st.sampled_from(["20261121101500", "20240229235959", "19000101000000", "202611211015"])),
    st.sampled_from(["", "+", "-"]),
    st.text(alphabet="0123456789", min_size=3, max_size=5),
)


def result(fn: object, *args: object) -> object:
    try:
        value = fn(*args)  # type: ignore[operator]
    except ValueError as exc:
        return str(exc)
    return value, type(value), value.isoformat(), getattr(value, "utcoffset", lambda: None)()


@given(st.one_of(DTM, st.text(alphabet="0123456789+-. T:", max_size=20)))
def test_quick_conversions_match_the_full_parsers(text: str) -> None:
    assert result(convert, "datetime", text, TZ) == result(parse_dtm, text, TZ)
    assert result(convert, "date", text, TZ) == result(parse_date, text)


# --- to_json ----------------------------------------------------------------------------------------

VALUES = st.one_of(
    st.text(),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([None, UTC, TZ, timezone(timedelta(hours=-5, minutes=-30))])),
    st.integers(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.none(),
    st.booleans(),
)


@given(st.dictionaries(st.text(), VALUES, max_size=8), st.one_of(st.none(), st.text()))
def test_to_json_is_what_json_dumps_gives(fields: dict, topic: str | None) -> None:
    record = Record("order", topic, fields)
    body = {"type": "order", "topic": topic, "fields": fields}
    try:
        expected = json.dumps(body, default=_json_default, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        data = expected.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: both refuse
        with pytest.raises(UnicodeEncodeError):
            record.to_json()
        return
    assert record.to_json() == data


def test_to_json_of_a_mapped_record() -> None:
    record = Record("order", "order.accepted", {"b": date(1947, 3, 12), "a": 'x"y\\é', "c": Decimal("1.5")})
    assert record.to_json() == ('{"fields":{"a":"x\\"y\\\\é","b":"1947-03-12","c":"1.5"},'
                                '"topic":"order.accepted","type":"order"}').encode()  # fmt: skip
    aware = Record("order", None, {"t": datetime(2026, 7, 4, 15, 30, tzinfo=TZ)})
    assert aware.to_json() == b'{"fields":{"t":"2026-07-04T15:30:00+02:00"},"topic":null,"type":"order"}'
