"""Build an outbound ER7 message from values placed at HL7 paths (`to: hl7v2` mappings).

Segments come out in the order the mapping first names their segment id (MSH always first),
repeats of one segment id in occurrence order. Every value is
escaped with the message's own delimiters, so structure comes only from paths: write MSH-9.1 and
MSH-9.2, not "ORM^O01". MSH-1/MSH-2 are fixed (| and ^~\\&); MSH-7 (now), MSH-10 (a fresh control
id), MSH-11 (P) and MSH-12 (2.5.1) are filled in when the mapping leaves them empty.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo

from engine.hl7v2.escape import DEFAULT_DELIMITERS, escape
from engine.hl7v2.path import Path
from engine.mapping.functions import format_hl7

__all__ = ["SegmentKey", "build_er7", "segment_key"]

SegmentKey = tuple[str, int]  # (segment id, occurrence 1-based)
_AUTO = ((11, "P"), (12, "2.5.1"))


def segment_key(p: Path) -> SegmentKey:
    return (p.segment, p.occurrence or 1)


@dataclass(slots=True)
class _Seg:
    fields: dict[int, dict[int, dict[int, dict[int, str]]]]  # field -> rep -> comp -> sub -> text

    def put(self, p: Path, text: str) -> None:
        reps = self.fields.setdefault(p.field, {})
        comps = reps.setdefault(p.repetition or 1, {})
        if p.component is None:
            comps.clear()
            comps[1] = {1: text}
            return
        subs = comps.setdefault(p.component, {})
        if p.subcomponent is None:
            subs.clear()
            subs[1] = text
        else:
            subs[p.subcomponent] = text

    def has(self, number: int) -> bool:
        return any(t for reps in self.fields.get(number, {}).values() for c in reps.values() for t in c.values())


def _join(parts: dict[int, str], sep: str) -> str:
    return sep.join(parts.get(i, "") for i in range(1, max(parts, default=0) + 1))


def _render(seg: _Seg) -> list[str]:
    d = DEFAULT_DELIMITERS
    out: list[str] = []
    for number in range(1, max(seg.fields, default=0) + 1):
        reps = seg.fields.get(number, {})
        rep_texts = []
        for r in range(1, max(reps, default=0) + 1):
            comps = reps.get(r, {})
            comp_texts = [_join(comps.get(c, {}), d.subcomponent) for c in range(1, max(comps, default=0) + 1)]
            rep_texts.append(d.component.join(comp_texts).rstrip(d.component))
        out.append(d.repetition.join(rep_texts).rstrip(d.repetition))
    return out


def build_er7(
    order: Iterable[SegmentKey],
    values: Iterable[tuple[Path, object]],
    *,
    site_tz: tzinfo,
    control_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """ER7 text, segments separated by CR. `values` are (target path, value) pairs written in turn
    (later ones win); None values are skipped."""
    segs: dict[SegmentKey, _Seg] = {key: _Seg({}) for key in order}
    rank: dict[str, int] = {}
    for name, _occ in segs:
        rank.setdefault(name, len(rank))
    segs.setdefault(("MSH", 1), _Seg({}))
    for p, value in values:
        if value is None:
            continue
        text = value if isinstance(value, str) else format_hl7(value, site_tz)
        segs.setdefault(segment_key(p), _Seg({})).put(p, escape(text, DEFAULT_DELIMITERS))
    msh = segs[("MSH", 1)]
    if not msh.has(7):
        msh.put(Path("MSH", 7), format_hl7(now or datetime.now(site_tz), site_tz))
    if not msh.has(10):
        msh.put(Path("MSH", 10), escape(control_id or uuid.uuid4().hex[:20].upper(), DEFAULT_DELIMITERS))
    for number, default in _AUTO:
        if not msh.has(number):
            msh.put(Path("MSH", number), default)
    d = DEFAULT_DELIMITERS
    lines = []
    # MSH first, then by where the mapping first names a segment id; repeats in occurrence order.
    for (name, _occ), seg in sorted(segs.items(), key=lambda kv: (kv[0][0] != "MSH", rank.get(kv[0][0], 0), kv[0][1])):
        fields = _render(seg)
        if name == "MSH":
            # fields[0] and [1] would be MSH-1/MSH-2, the delimiters themselves: written literally.
            lines.append("MSH" + d.field + d.encoding_characters + d.field + d.field.join(fields[2:]))
        else:
            lines.append(d.field.join([name, *fields]).rstrip(d.field) or name)
    return "\r".join(lines) + "\r"
