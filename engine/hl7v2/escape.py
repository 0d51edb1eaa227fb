"""HL7 v2 escape sequences (ER7, chapter 2 "Use of escape sequences in text fields").

Unescaped: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (the message's own delimiters), \\P\\ (truncation character,
v2.7+, only when MSH-2 declares one) and \\Xhh..\\ (bytes decoded with the message's charset;
consecutive hex escapes are joined first so a multi-byte UTF-8 character split across them decodes).

Left as written, on purpose: formatting escapes (\\H\\ \\N\\ \\.br\\ \\.sp\\ ...), character-set
switches (\\Cxxyy\\ \\Mxxyyzz\\), local escapes (\\Zxx\\), and anything malformed or unknown. They
carry presentation, not data; a report renderer can interpret them, a mapping should not guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["DEFAULT_DELIMITERS", "Delimiters", "escape", "unescape"]


@dataclass(frozen=True, slots=True)
class Delimiters:
    """MSH-1 and MSH-2 of a message. `truncation` is the optional fifth MSH-2 character (v2.7+)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it is written."""
        return self.component + self.repetition + self.escape + self.subcomponent + (self.truncation or "")


DEFAULT_DELIMITERS = Delimiters()


@lru_cache(maxsize=64)
def _named(d: Delimiters) -> dict[str, str]:
    table = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": d.escape}
    if d.truncation:
        table["P"] = d.truncation
    return table


def _hex(seq: str) -> bytes | None:
    digits = seq[1:]
    if not digits or len(digits) % 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
        return None
    return bytes.fromhex(digits)


def unescape(value: str, d: Delimiters = DEFAULT_DELIMITERS, codec: str = "utf-8") -> str:
    """Replace escape sequences in `value` (one field, component or sub-component)."""
    esc = d.escape
    if esc not in value:
        return value
    named = _named(d)
    parts = value.split(esc)
    # Well-formed text alternates literal, sequence, literal, ...: sequences sit at odd indexes.
    out = [parts[0]]
    pending = bytearray()  # hex bytes waiting to be decoded together
    pending_raw: list[str] = []
    last = len(parts) - 1
    i = 1
    while i <= last:
        seq = parts[i]
        if i == last:  # unterminated sequence: keep it literally
            _flush(out, pending, pending_raw, codec)
            out.append(esc + seq)
            break
        literal = parts[i + 1]
        data = _hex(seq) if seq[:1] == "X" else None
        if data is not None:
            pending += data
            pending_raw.append(esc + seq + esc)
        else:
            _flush(out, pending, pending_raw, codec)
            out.append(named.get(seq, esc + seq + esc))
        if literal:
            _flush(out, pending, pending_raw, codec)
            out.append(literal)
        i += 2
    _flush(out, pending, pending_raw, codec)
    return "".join(out)


def _flush(out: list[str], pending: bytearray, pending_raw: list[str], codec: str) -> None:
    if not pending:
        return
    try:
        out.append(pending.decode(codec))
    except (UnicodeDecodeError, LookupError):
        out.extend(pending_raw)  # undecodable: leave the escapes as written
    pending.clear()
    pending_raw.clear()


def escape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Escape delimiters (and CR/LF, which would end the segment) for writing `value` into ER7."""
    esc = d.escape
    swaps = [(d.field, "F"), (d.component, "S"), (d.subcomponent, "T"), (d.repetition, "R")]
    if d.truncation:
        swaps.append((d.truncation, "P"))
    if esc not in value and "\r" not in value and "\n" not in value and not any(c in value for c, _ in swaps):
        return value
    value = value.replace(esc, f"{esc}E{esc}")  # first, so later replacements are not re-escaped
    for char, name in swaps:
        value = value.replace(char, f"{esc}{name}{esc}")
    return value.replace("\r", f"{esc}X0D{esc}").replace("\n", f"{esc}X0A{esc}")
