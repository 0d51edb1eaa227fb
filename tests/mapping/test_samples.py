"""The shipped mappings applied to every sample in samples/hl7."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

import pytest

from engine.hl7v2 import Hl7ParseError, Message
from engine.mapping import MappingError, MappingRefused, Record
from tests import phi
from tests.mapping.util import ROOT, SAMPLES, TZ, sample, sample_text, shipped

ORM = shipped("orm-to-order.yaml")
OMI = shipped("omi-to-order.yaml")
ADT = shipped("adt-to-patient.yaml")
CET = timezone(timedelta(hours=1))


def test_every_sample_uses_cr_and_is_listed_in_the_readme() -> None:
    readme = (ROOT / "samples" / "README.md").read_text()
    files = sorted(SAMPLES.glob("*.hl7"))
    assert len(files) == 13
    for path in files:
        data = path.read_bytes()
        assert b"\n" not in data and data.endswith(b"\r"), path.name
        assert f"`hl7/{path.name}`" in readme, path.name


def test_orm_ct_head() -> None:
    (record,) = ORM.apply(sample("orm-o01-ct-head.hl7"), site_tz=TZ)
    assert record.type == "order" and record.topic == "order.accepted"
    assert record.fields == {
        "event": "accepted",
        "order_control": "NW",
        "order_status": "SC",
        "accession": phi.ACCESSION,
        "placer_number": "PLC1001",
        "filler_number": phi.ACCESSION,
        "requested_procedure_id": "RP1001",
        "patient_id": phi.MRN,
        "patient_id_issuer": "GENHOSP",
        "patient_name": f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}^A",
        "birth_date": date(1947, 3, 12),
        "sex": "F",
        "priority": "stat",
        "procedure_code": "CTHEAD",
        "procedure_text": "CT HEAD W/O CONTRAST",
        "modality": "CT",
        "study_uid": "1.2.826.0.1.3680043.10.1234.1001",
        "ordered_at": datetime(2026, 11, 21, 10, 15, tzinfo=TZ),
        "requested_at": datetime(2026, 11, 21, 10, 30, tzinfo=TZ),
        "reason": "Sudden severe headache",
        "ordering_provider": "FAKEDOC-0042",
        "sending_application": "RIS",
        "sending_facility": "GENHOSP",
    }
    assert Record.from_json(record.to_json()) == record


def test_orm_two_orders_give_two_records() -> None:
    first, second = ORM.apply(sample("orm-o01-two-orders.hl7"), site_tz=TZ)
    assert (first.fields["accession"], second.fields["accession"]) == ("ACCFAKE88213", "ACCFAKE88214")
    assert (first.fields["priority"], second.fields["priority"]) == ("stat", "routine")
    assert (first.fields["modality"], second.fields["modality"]) == ("CT", "CR")
    assert first.fields["study_uid"] != second.fields["study_uid"]
    assert first.fields["patient_id"] == second.fields["patient_id"] == phi.MRN
    assert first.topic == second.topic == "order.accepted"


def test_orm_cancel() -> None:
    (record,) = ORM.apply(sample("orm-o01-cancel.hl7"), site_tz=TZ)
    assert record.topic == "order.cancelled"
    assert (record.fields["event"], record.fields["order_control"]) == ("cancelled", "CA")
    assert record.fields["accession"] == phi.ACCESSION and "study_uid" not in record.fields


def test_orm_change_raises_priority() -> None:
    (record,) = ORM.apply(sample("orm-o01-change.hl7"), site_tz=TZ)
    assert record.topic == "order.changed"
    assert (record.fields["event"], record.fields["priority"]) == ("changed", "stat")
    assert record.fields["accession"] == "ACCFAKE88214"


def test_omi_takes_accession_and_study_uid_from_ipc() -> None:
    (record,) = OMI.apply(sample("omi-o23-mr-knee.hl7"), site_tz=TZ)
    assert record.topic == "order.accepted"
    f = record.fields
    assert (f["accession"], f["accession_issuer"]) == ("ACCFAKE88215", "GENHOSP")
    assert f["filler_number"] == "FIL3001"  # ORC-3 is a filler number here, not the accession
    assert f["study_uid"] == "1.2.826.0.1.3680043.10.1234.3001"
    assert (f["priority"], f["modality"], f["requested_procedure_id"]) == ("asap", "MR", "RP3001")
    assert f["ordered_at"] == datetime(2026, 11, 21, 10, 15, tzinfo=CET)
    assert f["requested_at"] == datetime(2026, 11, 22, 8, 0, tzinfo=CET)
    assert f["patient_id_issuer"] == "GENHOSP"  # HD sub-component 1


@pytest.mark.parametrize(
    ("name", "topic", "prior"),
    [
        ("adt-a08.hl7", "patient.updated", None),
        ("adt-a40-merge.hl7", "patient.merged", "MRN-FAKE-0000001"),
        ("adt-a47.hl7", "patient.identifier_changed", "MRN-FAKE-4471900"),
    ],
)
def test_adt(name: str, topic: str, prior: str | None) -> None:
    (record,) = ADT.apply(sample(name), site_tz=TZ)
    assert record.type == "patient" and record.topic == topic
    assert record.fields["patient_id"] == phi.MRN
    assert record.fields.get("prior_patient_id") == prior
    assert record.fields["name"] == f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}^A"
    assert record.fields["birth_date"] == date(1947, 3, 12)


def test_a40_without_mrg_is_an_error() -> None:
    text = sample_text("adt-a40-merge.hl7").split("\rMRG|")[0] + "\r"
    with pytest.raises(MappingError) as info:
        ADT.apply(Message.parse(text), site_tz=TZ)
    assert str(info.value) == "mapping adt-to-patient: required field 'prior_patient_id' is empty (tried MRG-1[1].1)"
    assert info.value.location == ("MRG", None, 1)


@pytest.mark.parametrize(("name", "code"), [("malformed-no-msh.hl7", 100), ("malformed-bad-encoding.hl7", 102)])
def test_malformed_samples_do_not_parse(name: str, code: int) -> None:
    with pytest.raises(Hl7ParseError) as info:
        sample(name)
    assert info.value.code == code


def test_missing_accession_is_code_101_without_phi() -> None:
    message = sample("malformed-missing-accession.hl7")
    with pytest.raises(MappingError) as info:
        ORM.apply(message, site_tz=TZ)
    err = info.value
    assert err.code == 101 and err.field == "accession" and err.paths == ("OBR-18", "ORC-3.1")
    assert str(err) == "mapping orm-to-order: required field 'accession' is empty (tried OBR-18, ORC-3.1)"
    assert err.location == ("OBR", 1, 18)
    problem = err.problem()
    exposed = " ".join(map(str, [err, repr(err), err.args, problem, vars(err)]))
    assert phi.leaks_in_bytes(exposed.encode(), (*phi.STRINGS, "PLC1009", "FAKEDOCTOR")) == []


@pytest.mark.parametrize(
    ("mapping", "name", "code"),
    [
        (ORM, "unsupported-oru.hl7", 200),
        (ORM, "omi-o23-mr-knee.hl7", 200),
        (OMI, "orm-o01-ct-head.hl7", 200),
        (ADT, "orm-o01-ct-head.hl7", 200),
    ],
)
def test_types_a_mapping_does_not_accept_are_refused(mapping: object, name: str, code: int) -> None:
    with pytest.raises(MappingRefused) as info:
        mapping.apply(sample(name), site_tz=TZ)  # type: ignore[attr-defined]
    assert info.value.code == code


def test_adt_event_not_accepted_is_201() -> None:
    text = sample_text("adt-a08.hl7").replace("ADT^A08^ADT_A01", "ADT^A01^ADT_A01", 1)
    with pytest.raises(MappingRefused) as info:
        ADT.apply(Message.parse(text), site_tz=TZ)
    assert info.value.code == 201
    assert str(info.value) == ("mapping adt-to-patient does not accept ADT^A01 (accepts ADT^A08, ADT^A40, ADT^A47)")


def test_unknown_order_control_is_code_103() -> None:
    text = sample_text("orm-o01-ct-head.hl7").replace("\rORC|NW|", "\rORC|HD|", 1)
    with pytest.raises(MappingError) as info:
        ORM.apply(Message.parse(text), site_tz=TZ)
    assert info.value.code == 103 and info.value.field == "event" and info.value.location == ("ORC", 1, 1)


def test_apply_stays_lean() -> None:
    message = sample("orm-o01-ct-head.hl7")
    ORM.apply(message, site_tz=TZ)
    runs = 500
    start = time.perf_counter()
    for _ in range(runs):
        ORM.apply(message, site_tz=TZ)
    per_message = (time.perf_counter() - start) / runs
    assert per_message < 0.001  # ~35 µs on a laptop; the bound only catches an order-of-magnitude slip
