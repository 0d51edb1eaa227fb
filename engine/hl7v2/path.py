"""HL7 v2 field paths in the standard's own notation, with 1-based brackets for repeats.

    PID-3          field 3, first repetition (whole repetition, components joined)
    PID-3.1        component 1          PID-3.1.2   sub-component 2 of component 1
    PID-3[2].1     second repetition    PID-3[*].1  every repetition
    OBX[3]-5       third OBX segment    OBX[*]-5    every OBX segment

Errors carry a 0-based column into the text so the config linter can report file:line:col.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ALL", "Path", "PathSyntaxError", "parse_path"]

ALL = -1
"""Index value meaning `[*]`: every occurrence / repetition."""


class PathSyntaxError(ValueError):
    """A path that does not follow the grammar; `column` is a 0-based index into `text`."""

    def __init__(self, message: str, text: str, column: int) -> None:
        super().__init__(f"{message} (column {column})")
        self.reason = message
        self.text = text
        self.column = column


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed path. `occurrence`/`repetition`: None = not written (first), ALL = `[*]`, else 1-based."""

    segment: str
    field: int
    occurrence: int | None = None
    repetition: int | None = None
    component: int | None = None
    subcomponent: int | None = None

    def __str__(self) -> str:
        out = self.segment + _bracket(self.occurrence) + "-" + str(self.field) + _bracket(self.repetition)
        if self.component is not None:
            out += "." + str(self.component)
            if self.subcomponent is not None:
                out += "." + str(self.subcomponent)
        return out

    @property
    def is_open(self) -> bool:
        """True when the path explicitly asks for every occurrence or repetition (`[*]`)."""
        return self.occurrence == ALL or self.repetition == ALL


def _bracket(index: int | None) -> str:
    if index is None:
        return ""
    return "[*]" if index == ALL else f"[{index}]"


class _Scanner:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def fail(self, message: str) -> PathSyntaxError:
        return PathSyntaxError(message, self.text, self.pos)

    def number(self, what: str, after: str) -> int:
        start = self.pos
        while self.peek().isascii() and self.peek().isdigit():
            self.pos += 1
        if self.pos == start:
            raise self.fail(f"expected {what} after {after}")
        digits = self.text[start : self.pos]
        if digits[0] == "0":
            self.pos = start
            raise self.fail(f"{what} has a leading zero" if int(digits) else f"{what} must be 1 or more (1-based)")
        return int(digits)

    def index(self, what: str) -> int | None:
        """An optional `[n]` or `[*]`."""
        if self.peek() != "[":
            return None
        self.pos += 1
        if self.peek() == "*":
            self.pos += 1
            value = ALL
        elif self.peek().isascii() and self.peek().isdigit():
            value = self.number(f"{what} number", "'['")
        else:
            raise self.fail(f"expected {what} number or '*' after '['")
        if self.peek() != "]":
            raise self.fail("expected ']'")
        self.pos += 1
        return value


def _is_segment_id(text: str) -> bool:
    return len(text) == 3 and "A" <= text[0] <= "Z" and all("A" <= c <= "Z" or "0" <= c <= "9" for c in text[1:])


@lru_cache(maxsize=4096)
def parse_path(text: str) -> Path:
    """Parse `text`; raises PathSyntaxError with the column of the first problem."""
    if not isinstance(text, str):
        raise TypeError("path must be a string")
    s = _Scanner(text)
    if not _is_segment_id(text[:3]):
        raise s.fail("expected segment id (3 characters: A-Z, then A-Z or 0-9)")
    s.pos = 3
    occurrence = s.index("segment occurrence")
    if s.peek() != "-":
        raise s.fail("expected '-' after segment id")
    s.pos += 1
    field = s.number("field number", "'-'")
    repetition = s.index("repetition")
    component = subcomponent = None
    if s.peek() == ".":
        s.pos += 1
        component = s.number("component number", "'.'")
        if s.peek() == ".":
            s.pos += 1
            subcomponent = s.number("sub-component number", "'.'")
    if s.pos < len(text):
        if s.peek() == "." and subcomponent is not None:
            raise s.fail("unexpected '.': paths stop at the sub-component")
        if s.peek() == "[" and component is not None:
            raise s.fail("unexpected '[': only segments and fields repeat")
        raise s.fail("unexpected character")
    return Path(text[:3], field, occurrence, repetition, component, subcomponent)
