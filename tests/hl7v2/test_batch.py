"""Splitting files of one or many HL7 messages, with or without FHS/BHS batch envelopes."""

from __future__ import annotations

import pytest

from engine.hl7v2 import Message
from engine.hl7v2.batch import BatchError, read_batch, split_messages
from engine.hl7v2.mllp import encode
from tests.hl7v2.samples import ADT_A08, OMI_O23, ORM_O01

ORM, OMI, ADT = ORM_O01.encode(), OMI_O23.encode(), ADT_A08.encode()
FHS = b"FHS|^~\\&|RIS|GENHOSP|RADBRIDGE|AIHUB|20261121101500||||FILE001\r"
BHS = b"BHS|^~\\&|RIS|GENHOSP|RADBRIDGE|AIHUB|20261121101500||||BATCH001\r"


def controls(messages: list[bytes]) -> list[str | None]:
    return [Message.parse(m).control_id for m in messages]


def test_single_message() -> None:
    assert split_messages(ORM) == [ORM]


@pytest.mark.parametrize("eol", [b"\r", b"\n", b"\r\n"])
def test_line_endings_and_blank_lines(eol: bytes) -> None:
    data = (ORM + b"\r" + OMI + b"\r\r" + ADT).replace(b"\r", eol)
    messages = split_messages(data)
    assert messages == [ORM, OMI, ADT]  # normalised to CR, blank lines gone
    assert controls(messages) == ["CTRL0001", "CTRL0002", "CTRL0003"]


def test_fhs_bhs_batch_with_counts() -> None:
    data = FHS + BHS + ORM + OMI + b"BTS|2\r" + BHS + ADT + b"BTS|1\rFTS|2\r"
    batch = read_batch(data.replace(b"\r", b"\r\n"))
    assert batch.messages == [ORM, OMI, ADT]
    assert (batch.files, batch.batches, batch.declared) == (1, 2, [2, 1])


def test_batch_count_mismatch_is_an_error() -> None:
    with pytest.raises(BatchError, match=r"line \d+: BTS-1 declares 3 messages, the batch holds 2"):
        split_messages(BHS + ORM + OMI + b"BTS|3\r")
    with pytest.raises(BatchError, match="not a number"):
        split_messages(BHS + ORM + b"BTS|two\r")


def test_envelope_without_counts_or_trailers() -> None:
    assert split_messages(BHS + ORM + ADT) == [ORM, ADT]
    assert split_messages(FHS + ORM + b"BTS\rFTS\r") == [ORM]


def test_text_before_the_first_header_is_an_error_without_content() -> None:
    with pytest.raises(BatchError, match="line 1: expected an MSH") as info:
        split_messages(b"PID|1||MRN-FAKE-4471902\r" + ORM)
    assert "MRN" not in str(info.value)


def test_bom_is_dropped_and_utf16_refused() -> None:
    assert split_messages(b"\xef\xbb\xbf" + ORM) == [ORM]
    with pytest.raises(BatchError, match="UTF-16"):
        split_messages(ORM_O01.encode("utf-16"))


def test_mllp_framed_dump() -> None:
    data = encode(ORM) + b"\n" + encode(BHS + OMI.replace(b"\r", b"\n") + ADT + b"BTS|2")
    assert split_messages(data) == [ORM, OMI, ADT]
    with pytest.raises(BatchError, match="not terminated"):
        split_messages(encode(ORM)[:-2])
    with pytest.raises(BatchError, match="outside MLLP frames"):
        split_messages(encode(ORM) + ADT)


def test_empty_file() -> None:
    assert split_messages(b"") == [] and split_messages(b"\r\n\n") == []


def test_segment_ids_must_be_followed_by_a_separator() -> None:
    # "MSHX" is not an MSH segment: it belongs to the message before it
    messages = split_messages(ORM + b"MSHX|1\r")
    assert len(messages) == 1 and messages[0].endswith(b"MSHX|1\r")
