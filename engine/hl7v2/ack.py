"""Original/enhanced-mode ACK messages (MSH, MSA, optional ERR) in ER7.

The ACK echoes the inbound delimiters, version, processing id and charset, swaps sender and
receiver, and acknowledges MSH-10 in MSA-2. Errors go in an ERR segment in v2.5+ form (ERR-2
location, ERR-3 HL7 table 0357 code, ERR-4 severity, ERR-8 user message); senders older than v2.5
also get ERR-1 (their only ERR field) and MSA-3 text. Error text is ours: it names what is wrong and
where, and must never quote message content (PHI).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Literal

from engine.hl7v2.er7 import Hl7ParseError, Message
from engine.hl7v2.escape import DEFAULT_DELIMITERS, Delimiters, escape, unescape

__all__ = ["AckCode", "AckError", "ErrorCode", "build_ack", "sniff_control_id"]

AckCode = Literal["AA", "AE", "AR", "CA", "CE", "CR"]
DEFAULT_VERSION = "2.5.1"


class ErrorCode(IntEnum):
    """HL7 table 0357, message error condition codes."""

    MESSAGE_ACCEPTED = 0
    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207


_CODE_TEXT = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


@dataclass(frozen=True, slots=True)
class AckError:
    """What to report in ERR. `text` must not contain patient data."""

    code: int
    text: str
    segment: str | None = None
    sequence: int | None = None  # occurrence of `segment` in the message, 1-based
    field: int | None = None
    severity: Literal["E", "W", "I"] = "E"

    @classmethod
    def from_parse_error(cls, exc: Hl7ParseError) -> AckError:
        located = exc.segment is not None
        return cls(
            exc.code,
            str(exc),
            exc.segment,
            exc.sequence if located else None,
            exc.field if located else None,
        )


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (2, 5)  # unreadable version: answer in the current form


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y%m%d%H%M%S") + (now.strftime("%z")[:5] if now.tzinfo else "")


def build_ack(
    msg: Message | None,
    code: AckCode,
    *,
    control_id: str,
    error: AckError | None = None,
    now: datetime,
    original_control_id: str | None = None,
    local_app: str = "RADBRIDGE",
    local_facility: str = "",
) -> bytes:
    """An ER7 ACK for `msg` (None when the inbound MSH was unreadable: then defaults are used and
    MSA-2 is `original_control_id`, e.g. from `sniff_control_id`). Returned without MLLP framing."""
    d = msg.encoding if msg is not None else DEFAULT_DELIMITERS
    fs, cs, ss = d.field, d.component, d.subcomponent
    msh = msg.msh if msg is not None else None
    version = (msg.version if msg is not None else None) or DEFAULT_VERSION
    old = _version_tuple(version) < (2, 5)

    def inbound(n: int) -> str:  # raw inbound MSH field: same delimiters, so safe to copy
        return msh.field(n) if msh is not None else ""

    trigger = msg.trigger_event if msg is not None else None
    trigger = escape(trigger, d) if trigger else ""
    # MSG.3 (message structure) exists from v2.4 and is what tells a parser the ACK's structure.
    msh9 = ("ACK" + cs + trigger if trigger else "ACK") if old else cs.join(("ACK", trigger, "ACK"))
    acked = msg.control_id if msg is not None else original_control_id
    charset = inbound(18)
    fields = [
        "MSH",
        d.encoding_characters,
        inbound(5) or escape(local_app, d),
        inbound(6) or escape(local_facility, d),
        inbound(3),
        inbound(4),
        _timestamp(now),
        "",
        msh9,
        escape(control_id, d),
        inbound(11) or "P",
        escape(version, d),
    ]
    if charset:
        fields += [""] * 5 + [charset]  # MSH-13..17 empty, MSH-18 echoed
    msa = ["MSA", code, escape(acked or "", d)]
    segments = [fs.join(fields)]
    err = []
    if error is not None:
        code_field = [str(error.code), _CODE_TEXT.get(error.code, ""), "HL70357"]
        loc = [error.segment, str(error.sequence or 1)] if error.segment else []
        if loc and error.field:
            loc.append(str(error.field))
        err = ["ERR", "", cs.join(loc), cs.join(code_field), error.severity, "", "", "", escape(error.text, d)]
        if old:  # ERR-1 (ELD) is the only ERR field before v2.5; MSA-3 carries the text there
            err[1] = cs.join(loc + [""] * (3 - len(loc)) + [ss.join(code_field)])
            msa.append(escape(error.text[:80], d))
    segments.append(fs.join(msa))
    if err:
        segments.append(fs.join(err))
    codec = msg.codec if msg is not None else "utf-8"
    return ("\r".join(segments) + "\r").encode(codec, "replace")


def sniff_control_id(raw: bytes) -> str | None:
    """MSH-10 from bytes too broken to parse (junk before MSH, bad MSH-2, odd line ends...)."""
    head = raw[:65536]
    at = head.find(b"MSH")
    if at == -1:
        return None
    line = head[at:]
    for stop in (b"\r", b"\n"):
        cut = line.find(stop)
        if cut != -1:
            line = line[:cut]
    fs = line[3:4]
    if not fs or fs.isalnum() or fs.isspace():
        return None
    parts = line.split(fs)
    if len(parts) < 10:
        return None
    value = parts[9].strip()
    if not value or len(value) > 199:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    if not text.isprintable():
        return None
    enc = parts[1].decode("latin-1")
    if len(enc) in (4, 5) and len(set(enc + fs.decode("latin-1"))) == len(enc) + 1:
        d = Delimiters(fs.decode("latin-1"), enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else None)
        text = unescape(text, d)
    return text


class _AckIds:
    """MSH-10 for the ACKs we send: 20 characters (the ST limit of MSH-10), unique.

    13 upper-case hex digits of microseconds since 1970 — forced strictly increasing within the
    process, so two ACKs never share one even at a million per second or when the clock steps back
    while running — then 7 hex digits drawn at random per process, so two engine processes (or
    nodes) started in the same microsecond still differ. Good until the year 2112.
    """

    def __init__(self) -> None:
        self._node = os.urandom(4).hex()[:7].upper()
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        now = time.time_ns() // 1000
        with self._lock:
            value = now if now > self._last else self._last + 1
            self._last = value
        return f"{value:013X}{self._node}"


new_ack_control_id = _AckIds().next
