"""Structure validation with hl7apy: is this message what its version's standard says an
MSH-9 message looks like? Used by `radbridge lint` on samples and by channels in strict mode.

hl7apy is slow (milliseconds a message) but knows every structure; that is what it is for here.
Its validator checks every member of a *choice* group as if each were required (hl7apy issue
#151, open): ORM^O01 with an OBR is reported as missing RQD. We pass it a copy of the message's
reference with choice members made optional. Only hl7apy's errors are reported, never its
warnings, which quote field values.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message
from hl7apy.validation import Validator, load_reference


def _relax(ref: Any) -> Any:
    if not (isinstance(ref, tuple) and ref and ref[0] in ("sequence", "choice")):
        return ref
    children = []
    for child in ref[1]:
        name, structure, cardinality, *rest = child
        if ref[0] == "choice":
            cardinality = (0, cardinality[1])
        children.append((name, _relax(structure), cardinality, *rest))
    return (ref[0], tuple(children), *ref[2:])


@lru_cache(maxsize=64)
def _reference(structure: str, version: str) -> Any:
    return _relax(load_reference(structure, "Message", version))


def validate_structure(text: str) -> str | None:
    """None when the message matches its structure; else the first problem, naming elements only."""
    er7 = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x0b\x1c")
    try:
        message = parse_message(er7, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
        Validator.validate(message, reference=_reference(message.name, message.version))
    except HL7apyException as exc:
        return f"{type(exc).__name__}: {exc}"
    except (ValueError, KeyError, IndexError) as exc:  # hl7apy's own parse failures on odd input
        return f"not parseable as HL7 ({type(exc).__name__})"
    return None
