"""Each feature of the mapping language, on small inline messages."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from engine.core.component import Problem
from engine.core.errors import PermanentError
from engine.mapping import FUNCTIONS, MappingError, MappingRefused, Record
from engine.mapping.functions import convert, format_hl7
from tests.mapping.util import TZ, compile_yaml, er7

MSH = "MSH|^~\\&|RIS|GENHOSP|RB|AI|20260101120000||ORM^O01|C1|P|2.3.1"
PID = "PID|1||ID1^^^HOSP^MR~ID2^^^OTHER^PI||FAM^GIV^MID||19470312|f"


def order(fields: str, *, extra: str = "", tables: str = "") -> str:
    """A `to: order` mapping whose `event` is fixed, plus the given field lines."""
    body = "from: hl7v2\nto: order\n" + extra + "fields:\n  event: { value: accepted }\n" + fields
    return body + ("tables:\n" + tables if tables else "")


def one(mapping_text: str, *segments: str) -> dict:
    (record,) = compile_yaml(mapping_text).apply(er7(MSH, *segments), site_tz=TZ)
    return record.fields


def test_first_path_with_a_value_wins() -> None:
    m = order("  accession: { from: [OBR-18, IPC-1.1, ORC-3.1] }\n")
    assert one(m, "ORC|NW||F1^PACS", "OBR|1") == {"event": "accepted", "accession": "F1"}
    assert one(m, "ORC|NW||F1", "OBR|1", "IPC|I1^X") == {"event": "accepted", "accession": "I1"}
    assert one(m, "ORC|NW||F1", "OBR|1" + "|" * 17 + "O1", "IPC|I1")["accession"] == "O1"
    assert one(m, "ORC|NW") == {"event": "accepted"}  # not required: left out


def test_paths_read_components_repetitions_and_occurrences() -> None:
    m = order(
        '  patient_id: { from: "PID-3[2].1" }\n'
        '  patient_id_issuer: { from: "PID-3[*].4" }\n'
        "  patient_name: { from: PID-5 }\n"
        '  procedure_code: { from: "OBX[2]-5" }\n'
        '  procedure_text: { from: "OBX[*]-3" }\n'
        "  reason: { from: OBR-13 }\n"
    )
    fields = one(m, PID, "OBR|1||||||||||||Pain \\T\\ swelling", "OBX|1||||A", "OBX|2||C||B")
    assert fields["patient_id"] == "ID2"
    assert fields["patient_id_issuer"] == "HOSP"
    assert fields["patient_name"] == "FAM^GIV^MID"  # a whole field: components as written
    assert fields["procedure_code"] == "B"
    assert fields["procedure_text"] == "C"  # first non-empty over every OBX
    assert fields["reason"] == "Pain & swelling"  # escapes resolved


def test_constant_value_and_default() -> None:
    m = order("  modality: { value: CT }\n  body_part: { from: OBR-15, default: UNKNOWN }\n")
    assert one(m, "OBR|1") == {"event": "accepted", "modality": "CT", "body_part": "UNKNOWN"}
    assert one(m, "OBR|1" + "|" * 14 + "HEAD")["body_part"] == "HEAD"


def test_required_field_missing_names_mapping_field_and_paths() -> None:
    m = compile_yaml(order("  accession: { from: [OBR-18, ORC-3.1], required: true }\n"), "mappings/orm.yaml")
    with pytest.raises(MappingError) as info:
        m.apply(er7(MSH, PID, "ORC|NW", "OBR|1"), site_tz=TZ)
    err = info.value
    assert str(err) == "mapping orm: required field 'accession' is empty (tried OBR-18, ORC-3.1)"
    assert isinstance(err, PermanentError)
    assert (err.code, err.field, err.paths, err.mapping) == (101, "accession", ("OBR-18", "ORC-3.1"), "orm")
    assert err.location == ("OBR", 1, 18)
    assert err.problem() == Problem(str(err), 101, "OBR", 1, 18)


def test_required_field_located_in_the_failing_group() -> None:
    m = compile_yaml(order("  accession: { from: OBR-18, required: true }\n", extra="each: ORC\n"))
    message = er7(MSH, "ORC|NW", "OBR|1" + "|" * 17 + "A1", "ORC|NW", "OBR|2")
    with pytest.raises(MappingError) as info:
        m.apply(message, site_tz=TZ)
    assert info.value.location == ("OBR", 2, 18)
    assert info.value.group == 2


def test_map_translates_with_star_fallback_and_empty_meaning_no_value() -> None:
    tables = '  t: { S: stat, R: routine, "*": asap }\n  blank: { X: "", "*": CT }\n'
    m = order("  priority: { from: ORC-1, map: t }\n  modality: { from: ORC-2, map: blank }\n", tables=tables)
    assert one(m, "ORC|S|Y")["priority"] == "stat"
    assert one(m, "ORC|Q|Y") == {"event": "accepted", "priority": "asap", "modality": "CT"}
    assert "modality" not in one(m, "ORC|R|X")


def test_map_unknown_code_is_error_103_without_the_code() -> None:
    m = compile_yaml(order("  priority: { from: ORC-7.6, map: p }\n", tables="  p: { S: stat }\n"), "mappings/o.yaml")
    with pytest.raises(MappingError) as info:
        m.apply(er7(MSH, "ORC|NW||||||^^^^^ZQX"), site_tz=TZ)
    err = info.value
    assert str(err) == "mapping o: field 'priority': code not found in table 'p' (read from ORC-7.6)"
    assert "ZQX" not in repr(err.__dict__)
    assert (err.code, err.location) == (103, ("ORC", 1, 7))


def test_conversions_explicit_and_inferred_from_the_record_field() -> None:
    m = order(
        "  birth_date: { from: PID-7 }\n"  # inferred: date
        "  ordered_at: { from: ORC-9 }\n"  # inferred: datetime, site time zone
        "  requested_at: { from: ORC-15, as: datetime }\n"
    )
    fields = one(m, PID, "ORC|NW||||||||20260704153000||||||20260705+0000")
    assert fields["birth_date"] == date(1947, 3, 12)
    assert fields["ordered_at"] == datetime(2026, 7, 4, 15, 30, tzinfo=TZ)
    assert fields["ordered_at"].utcoffset() == timedelta(hours=2)  # summer time in Berlin
    assert fields["requested_at"] == datetime(2026, 7, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("str", "x", "x"),
        ("int", "-42", -42),
        ("int", "+7", 7),
        ("decimal", "1.50", Decimal("1.50")),
        ("date", "202607", date(2026, 7, 1)),
        ("datetime", "2026070415", datetime(2026, 7, 4, 15, tzinfo=TZ)),
    ],
)
def test_convert(kind: str, text: str, expected: object) -> None:
    assert convert(kind, text, TZ) == expected


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("int", "4x"),
        ("int", ""),
        ("decimal", "NaN"),
        ("decimal", "1,5"),
        ("date", "19471340"),
        ("datetime", "2026-07-04"),
    ],
)
def test_convert_errors_do_not_quote_the_value(kind: str, text: str) -> None:
    with pytest.raises(ValueError) as info:
        convert(kind, text, TZ)
    assert not text or text not in str(info.value)


def test_conversion_failure_is_error_102_naming_the_field() -> None:
    m = compile_yaml(order("  birth_date: { from: PID-7 }\n"), "mappings/o.yaml")
    with pytest.raises(MappingError) as info:
        m.apply(er7(MSH, "PID|1||||||19471340"), site_tz=TZ)
    assert str(info.value) == "mapping o: field 'birth_date': DT: month out of range (read from PID-7)"
    assert info.value.code == 102 and info.value.location == ("PID", 1, 7)


def test_record_validation_failure_is_error_102_naming_the_field() -> None:
    m = compile_yaml(order("  priority: { from: OBR-5 }\n"), "mappings/o.yaml")
    with pytest.raises(MappingError) as info:
        m.apply(er7(MSH, "OBR|1||||S"), site_tz=TZ)
    assert str(info.value) == ("mapping o: field 'priority': input should be 'routine', 'urgent', 'asap' or 'stat'")
    assert info.value.code == 102 and info.value.location == ("OBR", 1, 5)


FN_CASES = {
    "trim": ("  a b  ", "a b"),
    "upper": ("ct", "CT"),
    "lower": ("CT", "ct"),
    "digits": ("(555) 01-99", "5550199"),
    "first_component": ("A&x^B^C", "A"),
    "second_component": ("A^B^C", "B"),
    "third_component": ("A^B", ""),
    "strip_leading_zeros": ("000120", "120"),
    "person_name": ("FAM&VAN^GIV^^JR^DR", "FAM^GIV"),
    "control_id": ("std-0001/stat", "RB3BAA721870F7E021AB"),  # "/" does not fit MSH-10 as is: hashed
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function(name: str) -> None:
    from engine.hl7v2 import DEFAULT_DELIMITERS

    value, expected = FN_CASES[name]
    assert FUNCTIONS[name][0](value, DEFAULT_DELIMITERS) == expected


def test_strip_leading_zeros_keeps_a_zero() -> None:
    from engine.hl7v2 import DEFAULT_DELIMITERS

    assert FUNCTIONS["strip_leading_zeros"][0]("000", DEFAULT_DELIMITERS) == "0"


def test_functions_chain_and_an_emptied_value_tries_the_next_path() -> None:
    m = order("  accession: { from: [OBR-18, ORC-3], fn: [trim, digits, strip_leading_zeros] }\n")
    assert one(m, "ORC|NW||ACC-00123", "OBR|1" + "|" * 17 + " N/A ")["accession"] == "123"


def test_fn_applies_to_the_message_own_delimiters() -> None:
    m = compile_yaml(order("  patient_name: { from: PID-5, fn: person_name }\n"))
    msg = er7("MSH#*~\\&#RIS#H#RB#AI#20260101##ORM*O01#C1#P#2.3.1", "PID#1####FAM*GIV*MID*JR")
    assert m.apply(msg, site_tz=TZ)[0].fields["patient_name"] == "FAM^GIV^MID"


WHEN = order(
    '  study_uid: { from: ZDS-1, required: true, default: "1.2.3", when: { path: ORC-1, in: [NW, XO] } }\n'
    "  reason: { value: changed, when: { path: ORC-1, not_in: [NW] } }\n"
    "  modality: { value: CT, when: { path: OBR-24, equals: CT } }\n"
    "  body_part: { value: GIVEN, when: { path: OBR-15, present: true } }\n"
    '  procedure_text: { value: "no", when: { path: OBR-15, present: false } }\n'
)


def test_when_tests() -> None:
    assert one(WHEN, "ORC|NW", "OBR|1") == {
        "event": "accepted", "study_uid": "1.2.3", "procedure_text": "no",
    }  # fmt: skip
    fields = one(WHEN, "ORC|CA", "OBR|1" + "|" * 14 + "HEAD" + "|" * 9 + "CT")
    # ORC-1 = CA: the study_uid rule does not apply at all (no default, no required error)
    assert fields == {"event": "accepted", "reason": "changed", "modality": "CT", "body_part": "GIVEN"}
    assert one(WHEN, "ORC|XO", "OBR|1" + "|" * 23 + "MR", "ZDS|9.9")["study_uid"] == "9.9"


def test_each_makes_one_record_per_group_and_never_reads_a_neighbour() -> None:
    m = compile_yaml(
        order(
            "  accession: { from: OBR-18 }\n  study_uid: { from: ZDS-1 }\n  patient_id: { from: PID-3.1 }\n"
            "  sending_facility: { from: MSH-4 }\n",
            extra="each: ORC\n",
        )
    )
    message = er7(MSH, PID, "PV1|1", "ORC|NW", "OBR|1" + "|" * 17 + "A1", "ZDS|U1", "ORC|NW", "OBR|2" + "|" * 17 + "A2")
    first, second = m.apply(message, site_tz=TZ)
    assert first.fields == {
        "event": "accepted",
        "accession": "A1",
        "study_uid": "U1",
        "patient_id": "ID1",
        "sending_facility": "GENHOSP",
    }
    assert second.fields == {
        "event": "accepted",
        "accession": "A2",
        "patient_id": "ID1",
        "sending_facility": "GENHOSP",
    }  # no ZDS of its own: none borrowed


def test_each_without_its_segment_is_error_100() -> None:
    m = compile_yaml(order("", extra="each: ORC\n"), "mappings/o.yaml")
    with pytest.raises(MappingError) as info:
        m.apply(er7(MSH, PID), site_tz=TZ)
    assert str(info.value) == "mapping o: the message has no ORC segment"
    assert info.value.code == 100 and info.value.segment == "ORC"


def test_without_each_the_whole_message_is_one_record() -> None:
    m = compile_yaml(order('  accession: { from: "OBR[2]-18" }\n'))
    records = m.apply(er7(MSH, "ORC|NW", "OBR|1", "ORC|NW", "OBR|2" + "|" * 17 + "A2"), site_tz=TZ)
    assert [r.fields["accession"] for r in records] == ["A2"]


def test_accept_refuses_other_types_and_events() -> None:
    m = compile_yaml(order("", extra="accept: [ORM^O01, OMI]\n"), "mappings/o.yaml")
    assert m.accepts("ORM^O01") and m.accepts("OMI^O23") and not m.accepts("ORM^O02") and not m.accepts(None)
    assert m.apply(er7(MSH), site_tz=TZ)[0].fields == {"event": "accepted"}
    with pytest.raises(MappingRefused) as info:
        m.apply(er7(MSH.replace("ORM^O01", "ORU^R01")), site_tz=TZ)
    assert str(info.value) == "mapping o does not accept ORU^R01 (accepts ORM^O01, OMI)"
    assert info.value.code == 200 and info.value.problem() == Problem(str(info.value), 200, "MSH", 1, 9)
    with pytest.raises(MappingRefused) as info:
        m.apply(er7(MSH.replace("ORM^O01", "ORM^O02")), site_tz=TZ)
    assert info.value.code == 201 and info.value.message_type == "ORM^O02"


def test_topic_default_constant_and_rule() -> None:
    assert compile_yaml(order("")).apply(er7(MSH), site_tz=TZ)[0].topic == "order.accepted"
    constant = compile_yaml(order("", extra="topic: orders.all\n"))
    assert constant.apply(er7(MSH), site_tz=TZ)[0].topic == "orders.all"
    rule = compile_yaml(
        order("", extra="topic: { from: ORC-1, map: t }\n", tables='  t: { CA: order.cancelled, "*": order.other }\n')
    )
    assert rule.apply(er7(MSH, "ORC|CA"), site_tz=TZ)[0].topic == "order.cancelled"
    assert rule.apply(er7(MSH, "ORC|NW"), site_tz=TZ)[0].topic == "order.other"
    conditional = compile_yaml(order("", extra="topic: { value: order.urgent, when: { path: ORC-1, equals: XO } }\n"))
    assert conditional.apply(er7(MSH, "ORC|XO"), site_tz=TZ)[0].topic == "order.urgent"
    assert conditional.apply(er7(MSH, "ORC|NW"), site_tz=TZ)[0].topic == "order.accepted"  # no value: the default


def test_record_json_is_deterministic_and_round_trips() -> None:
    m = compile_yaml(order("  ordered_at: { from: ORC-9 }\n  birth_date: { from: PID-7 }\n"))
    (record,) = m.apply(er7(MSH, PID, "ORC|NW||||||||20260101120000"), site_tz=TZ)
    data = record.to_json()
    assert data == (
        b'{"fields":{"birth_date":"1947-03-12","event":"accepted","ordered_at":"2026-01-01T12:00:00+01:00"},'
        b'"topic":"order.accepted","type":"order"}'
    )
    again = Record.from_json(data)
    assert again == record and again.to_json() == data
    assert "1947" not in repr(record) and "birth_date" in repr(record)


def test_record_to_record_mapping() -> None:
    m = compile_yaml(
        "from: order\nto: patient\nfields:\n  event: { value: updated }\n"
        "  patient_id: { from: order.patient_id, required: true }\n  birth_date: { from: order.birth_date }\n"
    )
    fields = {"event": "accepted", "patient_id": "P1", "birth_date": date(2000, 1, 2)}
    source = Record("order", "order.accepted", fields)
    (out,) = m.apply(source, site_tz=TZ)
    assert out == Record(
        "patient", "patient.updated", {"event": "updated", "patient_id": "P1", "birth_date": date(2000, 1, 2)}
    )
    with pytest.raises(MappingError) as info:
        m.apply({"event": "accepted"}, site_tz=TZ)
    assert info.value.code == 101 and info.value.location == (None, None, None)


def test_format_hl7() -> None:
    assert format_hl7(datetime(2026, 1, 1, 11, 0, tzinfo=UTC), TZ) == "20260101120000+0100"
    assert format_hl7(datetime(2026, 1, 1, 11, 0, 0, 250000, tzinfo=TZ), TZ) == "20260101110000.25+0100"
    assert format_hl7(date(2026, 1, 2), TZ) == "20260102"
    assert (format_hl7(True, TZ), format_hl7(Decimal("1.5"), TZ), format_hl7(3, TZ)) == ("Y", "1.5", "3")
