"""Split a file holding one or many HL7 v2 messages into messages.

Accepted layouts: bare messages one after another; an HL7 batch file (FHS, BHS, messages, BTS,
FTS — headers and trailers optional, several batches allowed); and MLLP-framed dumps (each frame
is a message). Segment terminators may be CR, LF or CRLF, blank lines are ignored, and a UTF-8
byte-order mark at the start is dropped. Each message comes back as bytes with CR terminators,
in its own encoding (bytes are never decoded here: MSH-18 is the ER7 reader's business).

Errors name line numbers and segment ids, never content.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

from engine.hl7v2.mllp import START_BLOCK, MllpDecoder

__all__ = ["BatchError", "BatchFile", "read_batch", "split_messages"]

_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")
_LINES = re.compile(rb"\r\n|\r|\n")


class BatchError(ValueError):
    """The file is not a sequence of HL7 messages (with an optional batch envelope)."""


@dataclass
class BatchFile:
    messages: list[bytes] = field(default_factory=list)
    batches: int = 0  # BHS segments seen
    files: int = 0  # FHS segments seen
    declared: list[int] = field(default_factory=list)  # BTS-1 message counts, when given


def _is_segment(line: bytes, name: bytes) -> bool:
    return line[:3] == name and (len(line) == 3 or not line[3:4].isalnum())


def read_batch(data: bytes, *, max_size: int = 1 << 26) -> BatchFile:
    """Messages and envelope facts of `data`. A BTS-1 count that disagrees with the messages of
    its batch raises BatchError (a truncated transfer is better caught here than downstream)."""
    if data[:3] == codecs.BOM_UTF8:
        data = data[3:]
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise BatchError("UTF-16 files are not supported: convert to UTF-8 first")
    if START_BLOCK in data:
        decoder = MllpDecoder(max_size)
        frames = decoder.feed(data)
        if decoder.in_frame:
            raise BatchError(f"MLLP frame {decoder.started} is not terminated")
        if decoder.garbage:
            raise BatchError(f"{decoder.garbage} bytes outside MLLP frames (mixed framed and unframed text?)")
        out = BatchFile()
        for frame in frames:
            out.messages += read_batch(frame, max_size=max_size).messages
        return out

    out = BatchFile()
    current: list[bytes] | None = None
    in_batch = 0  # messages since the last BHS

    def flush() -> None:
        nonlocal current, in_batch
        if current:
            out.messages.append(b"\r".join(current) + b"\r")
            in_batch += 1
        current = None

    for number, raw in enumerate(_LINES.split(data), 1):
        line = raw.lstrip(b" \t\x0b\x1c").rstrip(b"\x1c")
        if not line.strip():
            continue
        if _is_segment(line, b"MSH"):
            flush()
            current = [line]
        elif any(_is_segment(line, name) for name in _ENVELOPE):
            flush()
            name = line[:3]
            if name == b"FHS":
                out.files += 1
            elif name == b"BHS":
                out.batches += 1
                in_batch = 0
            elif name == b"BTS":
                parts = line.split(line[3:4]) if len(line) > 3 else [line]
                count = parts[1].strip() if len(parts) > 1 else b""
                if count:
                    if not count.isdigit():
                        raise BatchError(f"line {number}: BTS-1 (batch message count) is not a number")
                    out.declared.append(int(count))
                    if int(count) != in_batch:
                        raise BatchError(
                            f"line {number}: BTS-1 declares {int(count)} messages, the batch holds {in_batch}"
                        )
        elif current is not None:
            current.append(line)
        else:
            raise BatchError(f"line {number}: expected an MSH, FHS or BHS segment before other segments")
    flush()
    return out


def split_messages(data: bytes) -> list[bytes]:
    """The messages in `data` (see the module docstring), each ending in CR."""
    return read_batch(data).messages
