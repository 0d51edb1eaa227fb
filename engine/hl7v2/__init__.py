"""HL7 v2: a lazy ER7 reader, the path grammar, escapes, ACK building and HL7 time stamps.

`escape`/`unescape` live in `engine.hl7v2.escape` (not re-exported: the names would shadow the module).
"""

from engine.hl7v2.ack import AckError, build_ack, sniff_control_id
from engine.hl7v2.er7 import Group, Hl7ParseError, Message, Segment, codec_for_charset
from engine.hl7v2.escape import DEFAULT_DELIMITERS, Delimiters
from engine.hl7v2.path import ALL, Path, PathSyntaxError, parse_path
from engine.hl7v2.timestamps import parse_date, parse_dtm

__all__ = [
    "ALL",
    "DEFAULT_DELIMITERS",
    "AckError",
    "Delimiters",
    "Group",
    "Hl7ParseError",
    "Message",
    "Path",
    "PathSyntaxError",
    "Segment",
    "build_ack",
    "codec_for_charset",
    "parse_date",
    "parse_dtm",
    "parse_path",
    "sniff_control_id",
]
