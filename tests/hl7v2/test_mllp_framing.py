"""MLLP framing: encode, and the incremental decoder under split reads, bursts and faults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.hl7v2.mllp import FrameTooLarge, MllpDecoder, encode
from tests.hl7v2.samples import ADT_A08, ORM_O01

ORM, ADT = ORM_O01.encode(), ADT_A08.encode()


def test_encode_wraps_and_refuses_framing_bytes() -> None:
    assert encode(b"MSH|x\r") == b"\x0bMSH|x\r\x1c\r"
    for bad in (b"MSH|\x0b", b"MSH|\x1c"):
        with pytest.raises(ValueError, match="framing byte"):
            encode(bad)


def test_one_frame_in_one_read() -> None:
    d = MllpDecoder()
    assert d.feed(encode(ORM)) == [ORM]
    assert not d.in_frame and d.buffered == 0 and d.started == 1 and d.garbage == 0


def test_frame_split_byte_by_byte() -> None:
    d = MllpDecoder()
    data = encode(ORM)
    out = []
    for i in range(len(data)):
        out += d.feed(data[i : i + 1])
        if 0 < i < len(data) - 2:
            assert d.in_frame and out == []
    assert out == [ORM]


def test_several_frames_in_one_read_and_a_partial_one() -> None:
    d = MllpDecoder()
    data = encode(ORM) + encode(ADT) + encode(ORM)[:40]
    assert d.feed(data) == [ORM, ADT]
    assert d.in_frame and d.buffered == 39
    assert d.feed(encode(ORM)[40:]) == [ORM]


def test_whitespace_between_frames_is_not_garbage() -> None:
    d = MllpDecoder()
    data = b"\r\n " + encode(ORM) + b"\n\r\n\t" + encode(ADT) + b"\n"
    assert d.feed(data) == [ORM, ADT]
    assert d.garbage == 0 and not d.in_frame


def test_missing_cr_after_end_block_still_ends_the_frame() -> None:
    d = MllpDecoder()
    assert d.feed(b"\x0b" + ORM + b"\x1c") == [ORM]
    assert d.feed(b"\x0b" + ADT + b"\x1c") == [ADT]


def test_garbage_outside_frames_is_discarded_and_counted() -> None:
    d = MllpDecoder()
    assert d.feed(b"hello" + encode(ORM) + b"\x1cjunk\r\n" + encode(ADT) + b"tail") == [ORM, ADT]
    assert d.garbage == len(b"hello") + len(b"\x1cjunk") + len(b"tail")  # whitespace around them not counted
    assert d.garbage_runs == 3


def test_start_block_inside_a_frame_restarts_it() -> None:
    d = MllpDecoder()
    assert d.feed(b"\x0bMSH|half a mess") == []
    assert d.feed(b"age\x0b" + ORM + b"\x1c\r") == [ORM]
    assert d.restarts == 1 and d.started == 2


def test_oversize_frame_raises_before_buffering_it() -> None:
    d = MllpDecoder(max_size=100)
    assert d.feed(b"\x0b" + b"x" * 60) == []
    with pytest.raises(FrameTooLarge) as info:
        d.feed(b"y" * 60)
    assert info.value.max_size == 100 and d.buffered == 0
    with pytest.raises(FrameTooLarge):
        MllpDecoder(max_size=10).feed(encode(b"z" * 11))


def test_frame_of_exactly_max_size_passes() -> None:
    assert MllpDecoder(max_size=len(ORM)).feed(encode(ORM)) == [ORM]


def test_bom_and_lf_separators_are_kept_for_the_reader() -> None:
    payload = b"\xef\xbb\xbf" + ORM.replace(b"\r", b"\n")
    assert MllpDecoder().feed(encode(payload)) == [payload]


@given(
    st.lists(st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")),
             min_size=1, max_size=6),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50),
    st.sampled_from([b"", b"\r", b"\n", b"\r\n"]),
)  # fmt: skip
def test_any_split_of_a_stream_yields_the_same_frames(payloads: list[bytes], cuts: list[int], gap: bytes) -> None:
    stream = b"".join(encode(p) + gap for p in payloads)
    d = MllpDecoder()
    out: list[bytes] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out += d.feed(stream[pos : pos + step])
        pos += step
        i += 1
    assert out == payloads
    assert d.garbage == 0 and not d.in_frame
