"""What a mapping raises on content it cannot map. Texts name the mapping, field and paths, never
a value: they end up in ACKs, logs and the message list.

Both are PermanentErrors (retrying the same message will not help). `problem()` gives the
`engine.core.component.Problem` a source turns into an ACK's ERR segment.
"""

from __future__ import annotations

from engine.core.component import Problem
from engine.core.errors import PermanentError
from engine.hl7v2.ack import ErrorCode  # HL7 table 0357

__all__ = ["MappingError", "MappingRefused"]



class MappingError(PermanentError):
    """Content the mapping cannot turn into a valid record (answer AE).

    `code`: HL7 table 0357 (101 required field missing, 102 data type error, 103 table value not
    found, 100 a group's opening segment is missing). `field`: the output field. `paths`: the paths
    read, as written. `segment`/`sequence`/`hl7_field`: where in the inbound HL7 message, when the
    failing path is an HL7 path (`sequence` is the segment's occurrence in the message, 1-based).
    `group`: which record of a mapping with `each:` (1-based).
    """

    def __init__(
        self,
        text: str,
        *,
        mapping: str,
        field: str | None,
        paths: tuple[str, ...] = (),
        code: int = ErrorCode.DATA_TYPE_ERROR,
        segment: str | None = None,
        sequence: int | None = None,
        hl7_field: int | None = None,
        group: int | None = None,
    ) -> None:
        super().__init__(text)
        self.text = text
        self.mapping = mapping
        self.field = field
        self.paths = paths
        self.code = code
        self.segment = segment
        self.sequence = sequence
        self.hl7_field = hl7_field
        self.group = group

    @property
    def location(self) -> tuple[str | None, int | None, int | None]:
        """(segment id, occurrence, field number) in the inbound message; Nones when unknown."""
        return (self.segment, self.sequence, self.hl7_field)

    def problem(self) -> Problem:
        return Problem(self.text, self.code, self.segment, self.sequence, self.hl7_field)


class MappingRefused(PermanentError):
    """The mapping does not take this message type (answer AR): code 200 for the message code,
    201 when the code is taken but not this trigger event."""

    def __init__(self, text: str, *, mapping: str, message_type: str | None, code: int) -> None:
        super().__init__(text)
        self.text = text
        self.mapping = mapping
        self.message_type = message_type
        self.code = code

    def problem(self) -> Problem:
        return Problem(self.text, self.code, "MSH", 1, 9)
