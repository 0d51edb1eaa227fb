"""`to: hl7v2`: build ER7 from a record, then read it back with the ER7 reader."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from engine.hl7v2 import Message
from engine.mapping import MappingError, Record
from tests.mapping.util import TZ, compile_yaml, sample, shipped

XO = """
from: order
to: hl7v2
template:
  MSH-3: RADBRIDGE
  MSH-4: AIHUB
  MSH-9.1: ORM
  MSH-9.2: O01
  MSH-12: "2.3.1"
fields:
  PID-3.1:     { from: order.patient_id, required: true }
  PID-3.4:     { from: order.patient_id_issuer }
  PID-5.1:     { from: order.patient_name, fn: first_component }
  PID-5.2:     { from: order.patient_name, fn: second_component }
  PID-7:       { from: order.birth_date }
  ORC-1:       { value: XO }
  ORC-3.1:     { from: order.accession, required: true }
  ORC-7.6:     { from: order.priority, map: priority_code }
  ORC-9:       { from: order.ordered_at }
  "OBR[1]-4.1": { from: order.procedure_code }
  OBR-4.2:     { from: order.procedure_text }
  OBR-13:      { from: order.reason }
  "OBX[2]-5":  { from: order.study_uid }
  "OBX[1]-5":  { value: first }
  ORC-7.4:     { from: order.ordered_at, as: date }
tables:
  priority_code: { stat: S, asap: A, urgent: T, routine: R }
"""


def test_round_trip_through_the_er7_reader() -> None:
    mapping = compile_yaml(XO, "mappings/order-to-orm.yaml")
    (order,) = shipped("orm-to-order.yaml").apply(sample("orm-o01-ct-head.hl7"), site_tz=TZ)
    text = mapping.build(order, site_tz=TZ, control_id="OUT-1", now=datetime(2026, 11, 22, 9, 0, tzinfo=TZ))
    assert text.endswith("\r") and "\n" not in text
    assert [line[:3] for line in text.split("\r")[:-1]] == ["MSH", "PID", "ORC", "OBR", "OBX", "OBX"]
    msg = Message.parse(text)
    assert (msg.message_type, msg.control_id, msg.version, msg.processing_id) == ("ORM^O01", "OUT-1", "2.3.1", "P")
    assert msg.get("MSH-7") == "20261122090000+0100"
    assert (msg.sending_app, msg.sending_facility) == ("RADBRIDGE", "AIHUB")
    assert msg.get("PID-3.1") == order.fields["patient_id"]
    assert msg.get("PID-3.4") == "GENHOSP"
    assert (msg.get("PID-5.1"), msg.get("PID-5.2")) == tuple(order.fields["patient_name"].split("^")[:2])
    assert msg.get("PID-7") == "19470312"
    assert (msg.get("ORC-1"), msg.get("ORC-3.1"), msg.get("ORC-7.6")) == ("XO", order.fields["accession"], "S")
    assert msg.get("ORC-7.4") == "20261121"
    assert msg.get("ORC-9") == "20261121101500+0100"
    assert (msg.get("OBR-4.1"), msg.get("OBR-4.2")) == ("CTHEAD", "CT HEAD W/O CONTRAST")
    assert msg.get("OBR-13") == "Sudden severe headache"
    assert (msg.get("OBX[1]-5"), msg.get("OBX[2]-5")) == ("first", order.fields["study_uid"])


def test_values_are_escaped_and_read_back_unchanged() -> None:
    mapping = compile_yaml(XO)
    tricky = "a|b^c&d~e\\f\rg"
    text = mapping.build({"patient_id": "P1", "accession": "A1", "reason": tricky}, site_tz=TZ)
    msg = Message.parse(text)
    assert msg.get("OBR-13") == tricky
    assert len(msg.segments("OBR")) == 1 and msg.control_id and msg.get("MSH-7")


def test_apply_returns_an_hl7v2_record_and_required_fields_still_apply() -> None:
    mapping = compile_yaml(XO, "mappings/x.yaml")
    (record,) = mapping.apply(
        Record("order", None, {"patient_id": "P1", "accession": "A1", "birth_date": date(2000, 2, 29)}), site_tz=TZ
    )
    assert record.type == "hl7v2" and record.topic is None
    assert Message.parse(record.fields["er7"]).get("PID-7") == "20000229"
    with pytest.raises(MappingError) as info:
        mapping.build({"patient_id": "P1"}, site_tz=TZ)
    assert str(info.value) == "mapping x: required field 'ORC-3.1' is empty (tried order.accession)"


def test_later_values_win_and_whole_fields_replace_components() -> None:
    mapping = compile_yaml(
        "from: order\nto: hl7v2\ntemplate: { MSH-9.1: ACK, MSH-3: ONE }\n"
        "fields:\n  MSH-3: { value: TWO }\n  PV1-3.2: { value: B }\n  PV1-3: { value: WHOLE }\n"
    )
    msg = Message.parse(mapping.build({}, site_tz=TZ))
    assert msg.sending_app == "TWO" and msg.get("PV1-3") == "WHOLE" and msg.get("PV1-3.2") is None


def test_build_is_only_for_hl7v2_mappings() -> None:
    with pytest.raises(TypeError):
        shipped("orm-to-order.yaml").build({}, site_tz=TZ)
