"""ACK/NACK building, checked by parsing back with our reader and with hl7apy."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from engine.hl7v2 import AckError, Hl7ParseError, Message, build_ack, sniff_control_id
from engine.hl7v2.ack import ErrorCode
from tests import phi
from tests.hl7v2 import samples

NOW = datetime(2026, 11, 21, 10, 15, 1, tzinfo=timezone(timedelta(hours=1)))


def hl7apy(ack: bytes):
    return parse_message(ack.decode(), validation_level=VALIDATION_LEVEL.TOLERANT)


def test_aa_for_v231_order() -> None:
    msg = Message.parse(samples.ORM_O01)
    ack = build_ack(msg, "AA", control_id="ACK0001", now=NOW)
    assert ack.endswith(b"\r") and ack.count(b"\r") == 2
    back = Message.parse(ack)
    assert back.message_type == "ACK^O01" and back.get("MSH-9.3") is None  # v2.3.1 MSG has 2 parts
    assert (back.sending_app, back.sending_facility) == ("RADBRIDGE", "AIHUB")
    assert (back.receiving_app, back.receiving_facility) == ("RIS", "GENHOSP")
    assert back.control_id == "ACK0001" and back.version == "2.3.1" and back.processing_id == "P"
    assert back.get("MSH-7") == "20261121101501+0100"
    assert (back.get("MSA-1"), back.get("MSA-2")) == ("AA", "CTRL0001")
    assert back.segment("ERR") is None
    parsed = hl7apy(ack)
    assert parsed.msa.msa_1.value == "AA" and parsed.msa.msa_2.value == "CTRL0001"


def test_ae_with_err_in_v25_form() -> None:
    msg = Message.parse(samples.OMI_O23)
    error = AckError(ErrorCode.REQUIRED_FIELD_MISSING, "PID-3 (patient identifier) is missing", "PID", 1, 3)
    ack = build_ack(msg, "AE", control_id="ACK0002", error=error, now=NOW)
    back = Message.parse(ack)
    assert back.get("MSH-9") == "ACK^O23^ACK"
    assert back.get("MSH-18") == "UNICODE UTF-8"
    assert back.get("MSA-3") is None  # withdrawn text field: not used from v2.5
    assert back.get("ERR-1") is None
    assert back.get("ERR-2") == "PID^1^3"
    assert back.get("ERR-3") == "101^Required field missing^HL70357"
    assert back.get("ERR-4") == "E"
    assert back.get("ERR-8") == "PID-3 (patient identifier) is missing"
    parsed = hl7apy(ack)
    parsed.validate()  # strict v2.5.1 structure holds
    assert parsed.err.err_3.err_3_1.value == "101"
    assert parsed.err.err_4.value == "E"


def test_v231_sender_gets_msa3_and_err1() -> None:
    msg = Message.parse(samples.ORM_O01)
    error = AckError(103, "OBR-4.1 procedure code is not in the procedure table", "OBR", 2, 4)
    ack = build_ack(msg, "AE", control_id="ACK0003", error=error, now=NOW)
    back = Message.parse(ack)
    assert back.get("MSA-3") == "OBR-4.1 procedure code is not in the procedure table"
    assert back.get("ERR-1") == "OBR^2^4^103&Table value not found&HL70357"
    assert back.get("ERR-1.4.1") == "103"
    assert back.get("ERR-3.1") == "103"
    parsed = hl7apy(ack)
    assert parsed.msa.msa_1.value == "AE"


def test_error_text_is_escaped() -> None:
    msg = Message.parse(samples.ADT_A08)
    text = "ZPI-2 must look like CODE^TEXT & not contain | or ~"
    ack = build_ack(msg, "AE", control_id="A|4", error=AckError(102, text, "ZPI", 1, 2), now=NOW)
    back = Message.parse(ack)
    assert back.get("ERR-8") == text
    assert back.control_id == "A|4"
    hl7apy(ack)


def test_nonstandard_delimiters_are_echoed() -> None:
    msg = Message.parse("MSH#$*@!#RIS#GENHOSP#RB#HUB#20261121##ORM$O01#C9#P#2.5\rPID#1")
    ack = build_ack(msg, "AR", control_id="N1", error=AckError(200, "ORM^O01 not accepted here"), now=NOW)
    assert ack.startswith(b"MSH#$*@!#RB#HUB#RIS#GENHOSP#")
    back = Message.parse(ack)
    assert back.get("ERR-8") == "ORM^O01 not accepted here"
    assert back.get("ERR-2") is None  # no location given
    assert back.get("ERR-3.2") == "Unsupported message type"


def test_charset_is_echoed_and_used() -> None:
    text = "MSH|^~\\&|RIS|KLINIKUM MÜNCHEN|RB|HUB|20261121||ORM^O01|C1|P|2.5||||||8859/1\rPID|1\r"
    msg = Message.parse(text.encode("latin-1"))
    ack = build_ack(msg, "AE", control_id="A5", error=AckError(207, "Speicher voll: später erneut"), now=NOW)
    back = Message.parse(ack)
    assert back.codec == "iso8859-1" and back.receiving_facility == "KLINIKUM MÜNCHEN"
    assert back.get("ERR-8") == "Speicher voll: später erneut"


def test_unparseable_inbound_still_gets_a_valid_nack() -> None:
    raw = (f"\x0bjunk MSH|^^\\&|RIS|GENHOSP|RB|HUB|20261121||ORM^O01|CTRL-77|P|2.3\r"
           f"PID|1||{phi.MRN}||{phi.NAME_FAMILY}^{phi.NAME_GIVEN}||{phi.DOB}\r\x1c\r").encode()  # fmt: skip
    with pytest.raises(Hl7ParseError) as info:
        Message.parse(raw)
    recovered = sniff_control_id(raw)
    assert recovered == "CTRL-77"
    error = AckError.from_parse_error(info.value)
    ack = build_ack(None, "AR", control_id="ACK9", error=error, original_control_id=recovered, now=NOW)
    assert not phi.leaks_in_bytes(ack)
    back = Message.parse(ack)
    assert back.get("MSA-2") == "CTRL-77" and back.get("MSA-1") == "AR"
    assert back.version == "2.5.1" and back.sending_app == "RADBRIDGE"
    assert back.get("ERR-3.1") == "100"
    assert "must start with an MSH" in (back.get("ERR-8") or "")
    hl7apy(ack).validate()


def test_msh_error_location_from_parse_error() -> None:
    raw = f"MSH|^^\\&|RIS|GENHOSP|RB|HUB|20261121||ORM^O01|C-8|P|2.5\rPID|1||{phi.MRN}\r".encode()
    with pytest.raises(Hl7ParseError) as info:
        Message.parse(raw)
    error = AckError.from_parse_error(info.value)
    assert (error.code, error.segment, error.sequence, error.field) == (102, "MSH", 1, 2)
    ack = build_ack(None, "AR", control_id="A8", error=error, original_control_id=sniff_control_id(raw), now=NOW)
    back = Message.parse(ack)
    assert back.get("ERR-2") == "MSH^1^2" and back.get("MSA-2") == "C-8"


def test_without_control_id_msa2_is_empty() -> None:
    ack = build_ack(None, "AR", control_id="A9", error=AckError(100, "empty message: no segments"), now=NOW)
    back = Message.parse(ack)
    assert back.get("MSA-2") is None and back.get("MSA-1") == "AR"
    hl7apy(ack)


def test_naive_now_has_no_offset() -> None:
    ack = build_ack(None, "CA", control_id="A10", now=datetime(2026, 1, 2, 3, 4, 5))
    assert Message.parse(ack).get("MSH-7") == "20260102030405"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"MSH|^~\\&|A|B|C|D|2026||ORM^O01|ID-1|P|2.3\r", "ID-1"),
        (b"\xef\xbb\xbf\x0b  garbage\nMSH|^~\\&|A|B|C|D|2026||ORM^O01| ID-2 |P|2.3\nPID", "ID-2"),
        (b"MSH|^^^^|A|B|C|D|2026||ORM^O01|ID-3|P", "ID-3"),
        (b"MSH|^~\\&|A|B|C|D|2026||ORM^O01|ID\\F\\4|P", "ID|4"),
        (b"MSH|^~\\&|A|B|C|D|2026||ORM^O01|", None),
        (b"MSH|^~\\&|A|B|C|D|2026||ORM^O01||P", None),
        (b"MSH|^~\\&|A|B", None),
        (b"PID|1||X", None),
        (b"", None),
        (b"MSHA^~\\&A1A2A3A4A5A6A7A8", None),
        (b"MSH|^~\\&|A|B|C|D|2026||ORM^O01|ID\x01|P", None),
    ],
)
def test_sniff_control_id(raw: bytes, expected: str | None) -> None:
    assert sniff_control_id(raw) == expected
