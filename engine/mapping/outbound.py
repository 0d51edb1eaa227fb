"""Build an outbound ER7 message from values placed at HL7 paths (`to: hl7v2` mappings).

A mapping compiles to a `Block`: its segments in write order, the rules that fill them, and the
groups written after them (once, or once per item of a record list; groups nest). Segments of a
block come out in the order the mapping first names their segment id (MSH always first), repeats of
one id in occurrence order; then each group's segments, in the order the groups are listed.

Every value is escaped with the message's delimiters, so structure comes only from paths: write
MSH-9.1 and MSH-9.2, not "ORM^O01". MSH-1/MSH-2 are fixed (| and ^~\\&); MSH-7 (now), MSH-10 (a
fresh control id), MSH-11 (P) and MSH-12 (2.5.1) are filled in when the mapping leaves them empty.
A segment that gets no value (`seq` numbers aside) is left out; `seq: segment` numbers the
segments actually written.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from engine.hl7v2.escape import DEFAULT_DELIMITERS, escape
from engine.hl7v2.path import Path
from engine.mapping.functions import format_hl7
from engine.mapping.recordpath import RecordPath

__all__ = ["SEGMENT", "Block", "Group", "SegmentKey", "build_er7", "segment_key", "write_order"]

SegmentKey = tuple[str, int]  # (segment id, occurrence 1-based)
SEGMENT = -1
"""`Rule.seq` for `seq: segment` (other values: the level of the group whose item number is meant)."""
_AUTO = ((11, "P"), (12, "2.5.1"))
_D = DEFAULT_DELIMITERS  # outbound messages always use | ^ ~ \\ & (render writes them literally)
_SPECIAL = re.compile(r"[|^~\\&\r\n]")


def _escaped(text: str) -> str:
    return escape(text, _D) if _SPECIAL.search(text) else text


def segment_key(p: Path) -> SegmentKey:
    return (p.segment, p.occurrence or 1)


def write_order(keys: Iterable[SegmentKey], *, msh_first: bool) -> tuple[SegmentKey, ...]:
    """Keys in write order: by where the segment id is first named, repeats in occurrence order."""
    keys = list(dict.fromkeys(keys))
    rank: dict[str, int] = {}
    for name, _occ in keys:
        rank.setdefault(name, len(rank))
    return tuple(sorted(keys, key=lambda k: (not (msh_first and k[0] == "MSH"), rank[k[0]], k[1])))


@dataclass(frozen=True, slots=True)
class Group:
    """Segments written once (`each` None) or once per item of the list `each` reads."""

    each: RecordPath | None
    block: Block


@dataclass(frozen=True, slots=True)
class Block:
    """`keys`: segments in write order; `constants`: (path, escaped text, index into keys) from
    `template`; `rules`: (rule, index into keys, escaped text, paths) in file order, where the text is
    set for a rule that always writes the same constant, and the paths for a rule that only reads
    record paths (no function, table, default, test...): both skip the general rule evaluation."""

    keys: tuple[SegmentKey, ...]
    rules: tuple[tuple[Any, int, str | None, tuple[RecordPath, ...] | None], ...]
    groups: tuple[Group, ...] = ()
    constants: tuple[tuple[Path, str, int], ...] = ()
    widths: tuple[int, ...] = ()  # per key: the highest field number written (MSH: at least 12)


class _Seg:
    """One segment being built: fields[n] is None or a list of repetitions, each a list of
    components, each a string or (with sub-components) a list of strings. Texts are escaped."""

    __slots__ = ("fields", "filled", "name", "seq")

    def __init__(self, name: str, width: int) -> None:
        self.name = name
        self.fields: list[list[list[Any]] | None] = [None] * (width + 1)  # width: the highest field written
        self.filled = False
        self.seq: list[Path] | None = None

    def put(self, p: Path, text: str) -> None:
        fields = self.fields
        f = p.field
        reps = fields[f]
        if reps is None:
            reps = fields[f] = [[]]
        r = p.repetition
        if r is None or r == 1:
            comps = reps[0]
        else:
            while len(reps) < r:
                reps.append([])
            comps = reps[r - 1]
        c = p.component
        if c is None:  # a whole field replaces what was there
            comps[:] = [text]
            return
        n = len(comps)
        if n < c:
            comps.extend([""] * (c - n))
        sub = p.subcomponent
        if sub is None:
            comps[c - 1] = text
            return
        subs = comps[c - 1]
        if type(subs) is str:
            subs = comps[c - 1] = [subs]
        if len(subs) < sub:
            subs.extend([""] * (sub - len(subs)))
        subs[sub - 1] = text

    def has(self, number: int) -> bool:
        reps = self.fields[number] if number < len(self.fields) else None
        return any(c if type(c) is str else any(c) for rep in reps or () for c in rep)

    def render(self) -> str:
        out: list[str] = []
        for reps in self.fields[1:]:
            if not reps:
                out.append("")
            elif len(reps) == 1 and len(reps[0]) == 1 and type(reps[0][0]) is str:
                out.append(reps[0][0])
            else:
                texts = ["^".join([c if type(c) is str else "&".join(c) for c in rep]).rstrip("^") for rep in reps]
                out.append("~".join(texts).rstrip("~"))
        if self.name == "MSH":  # out[0] and [1] would be MSH-1/MSH-2, the delimiters: written literally
            return "MSH|" + _D.encoding_characters + "|" + "|".join(out[2:])
        return "|".join([self.name, *out]).rstrip("|") or self.name


Value = Callable[[Any], Any]  # rule -> value, or the `no value` marker


class _Builder:
    __slots__ = ("index", "items", "no", "out", "tz", "value")

    def __init__(self, value: Value, no: object, items: list[Any], index: list[int], tz: tzinfo) -> None:
        self.value = value
        self.no = no
        self.items = items
        self.index = index
        self.tz = tz
        self.out: list[_Seg] = []

    def emit(self, block: Block, read: Callable[[RecordPath], Any]) -> None:
        segs = [_Seg(name, width) for (name, _occ), width in zip(block.keys, block.widths, strict=True)]
        for p, text, slot in block.constants:
            seg = segs[slot]
            seg.put(p, text)
            seg.filled = True
        no, tz = self.no, self.tz
        for rule, slot, const, paths in block.rules:
            seg = segs[slot]
            if const is not None:
                seg.put(rule.target, const)
                seg.filled = True
                continue
            if paths is not None:
                for path in paths:
                    v = read(path)
                    if v is not None and v != "":
                        break
                else:
                    continue
            elif rule.seq == SEGMENT:
                if seg.seq is None:
                    seg.seq = []
                seg.seq.append(rule.target)
                continue
            else:
                v = self.value(rule)
                if v is no or v is None:
                    continue
            seg.put(rule.target, _escaped(v if type(v) is str else format_hl7(v, tz)))
            seg.filled = True
        self.out += segs
        for group in block.groups:
            if group.each is None:
                self.emit(group.block, read)
                continue
            items = read(group.each) or ()
            self.items.append(None)
            self.index.append(0)
            for n, item in enumerate(items):
                self.items[-1] = item
                self.index[-1] = n
                self.emit(group.block, read)
            self.items.pop()
            self.index.pop()


def build_er7(
    block: Block,
    value: Value,
    no_value: object,
    read: Callable[[RecordPath], Any],
    items: list[Any],
    index: list[int],
    *,
    site_tz: tzinfo,
    control_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """ER7 text, segments separated by CR. `value(rule)` gives each rule's value (`no_value` for
    none), `read(path)` what a record path holds; `items` and `index` are the stacks of the current
    group items and their 0-based numbers that `value` and `read` read, kept here: one entry per
    enclosing `each` group."""
    builder = _Builder(value, no_value, items, index, site_tz)
    builder.emit(block, read)
    segs = builder.out
    msh = next((s for s in segs if s.name == "MSH"), None)
    if msh is None:
        msh = _Seg("MSH", 12)
        segs.insert(0, msh)
    if not msh.has(7):
        msh.put(Path("MSH", 7), format_hl7(now or datetime.now(site_tz), site_tz))
    if not msh.has(10):
        msh.put(Path("MSH", 10), _escaped(control_id or uuid.uuid4().hex[:20].upper()))
    for number, default in _AUTO:
        if not msh.has(number):
            msh.put(Path("MSH", number), default)
    msh.filled = True
    counts: dict[str, int] = {}
    lines = []
    for seg in segs:
        if not seg.filled:
            continue
        n = counts[seg.name] = counts.get(seg.name, 0) + 1
        if seg.seq is not None:
            for p in seg.seq:
                seg.put(p, str(n))
        lines.append(seg.render())
    return "\r".join(lines) + "\r"
