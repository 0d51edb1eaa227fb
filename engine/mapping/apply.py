"""Running a compiled mapping: the per-message path. Everything is decided at compile time
(parsed paths, chosen functions, converters, tables); here we only read, transform and validate.
"""

from __future__ import annotations

import re
import types
import typing
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.hl7v2.ack import ErrorCode as E  # HL7 table 0357
from engine.hl7v2.er7 import Message, Segment
from engine.hl7v2.escape import DEFAULT_DELIMITERS
from engine.hl7v2.path import ALL, Path
from engine.hl7v2.validate import validate_structure
from engine.mapping.errors import MappingError, MappingRefused
from engine.mapping.functions import StrFn, TableMiss, format_hl7, lookup
from engine.mapping.outbound import Block, build_er7
from engine.mapping.recordpath import RecordPath, read_record
from engine.mapping.records import Record

__all__ = ["CompiledMapping", "Rule", "Source", "When"]

_NO = object()  # "no value": the field is left out of the record
Index = dict[str, list[Segment]]


@dataclass(frozen=True, slots=True)
class Source:
    """One path: `hl7` for HL7 sources, `record` for record sources."""

    text: str
    hl7: Path | None = None
    record: RecordPath | None = None


@dataclass(frozen=True, slots=True)
class When:
    """A compiled `when:`; `op` is in, not_in, equals or present."""

    source: Source
    op: str
    values: frozenset[str] = frozenset()
    present: bool = True


@dataclass(frozen=True, slots=True)
class Rule:
    name: str  # output field (HL7 path text for `to: hl7v2`)
    sources: tuple[Source, ...] = ()
    constant: Any = None
    required: bool = False
    default: Any = None
    fns: tuple[StrFn, ...] = ()
    table_name: str | None = None
    table: Mapping[str, str] | None = None
    conv_name: str | None = None
    conv: Callable[[Any, tzinfo], Any] | None = None
    when: When | None = None
    target: Path | None = None  # `to: hl7v2`: where the value is written
    seq: int | None = None  # `to: hl7v2`: outbound.SEGMENT, or the level of the group whose item number is meant
    join: str | None = None  # read every value the [*] paths give and join them with this
    per_occurrence: bool = False  # `when` tests each occurrence of the segment the [*] paths read


# --- reading --------------------------------------------------------------------------------------


def _read_segs(p: Path, segs: list[Segment]) -> tuple[str | None, Segment | None]:
    occ = p.occurrence
    if occ == ALL:
        for seg in segs:
            v = seg.get(p)
            if v is not None:
                return v, seg
        return None, segs[0]
    index = (occ or 1) - 1
    if index >= len(segs):
        return None, None
    seg = segs[index]
    if p.repetition == ALL:
        return seg.get(p), seg
    return seg.value(p.field, p.repetition or 1, p.component, p.subcomponent), seg


class _Hl7Context:
    """One record's view of a message: its group's segments first, then the header segments
    (those before the first group; the whole message when the mapping has no `each`)."""

    __slots__ = ("d", "group", "header", "message")

    def __init__(self, message: Message, group: Index, header: Index) -> None:
        self.message = message
        self.group = group
        self.header = header
        self.d = message.encoding

    def read(self, src: Source) -> Any:
        p = src.hl7
        segs = self.group.get(p.segment) or self.header.get(p.segment)  # type: ignore[union-attr]
        if not segs:
            return None
        return _read_segs(p, segs)[0]  # type: ignore[arg-type]

    def read_many(self, src: Source, when: When | None, tz: tzinfo, first: bool) -> list[str]:
        """Values of a path over the occurrences it names that pass `when` (tested on each occurrence's
        own field): the first one (`first`), or all, every repetition unless the path fixes one."""
        p: Path = src.hl7  # type: ignore[assignment]
        segs = self.group.get(p.segment) or self.header.get(p.segment)
        if not segs:
            return []
        occ = p.occurrence
        chosen = segs if occ == ALL else segs[(occ or 1) - 1 : (occ or 1)]
        out: list[str] = []
        for seg in chosen:
            if when is not None and not _test(when, seg.get(when.source.hl7), tz):  # type: ignore[arg-type]
                continue
            if first:
                v = seg.get(p)
                if v is not None:
                    return [v]
            else:
                out += seg.get_all(p)
        return out

    def locate(self, src: Source) -> tuple[str | None, int | None, int | None]:
        p = src.hl7
        if p is None:
            return (None, None, None)
        segs = self.group.get(p.segment) or self.header.get(p.segment)
        seg = _read_segs(p, segs)[1] if segs else None
        sequence = None
        if seg is not None:
            sequence = next(i for i, s in enumerate(self.message.segments(p.segment), 1) if s is seg)
        return (p.segment, sequence, p.field)


class _RecordContext:
    """A record's view for a rule: its fields, and for `to: hl7v2` groups the current item of each
    enclosing `each` group and its 0-based number (stacks the builder pushes and pops)."""

    __slots__ = ("d", "fields", "index", "items")

    def __init__(self, fields: Mapping[str, Any], items: list[Any] | None = None, index: list[int] | None = None):
        self.fields = fields
        self.items = items if items is not None else []
        self.index = index if index is not None else []
        self.d = DEFAULT_DELIMITERS

    def read(self, src: Source) -> Any:
        v = read_record(src.record, self.fields, self.items)  # type: ignore[arg-type]
        return None if v is None or v == "" else v

    def locate(self, src: Source) -> tuple[str | None, int | None, int | None]:
        return (None, None, None)


Context = _Hl7Context | _RecordContext


def split_groups(message: Message, each: str | None) -> tuple[Index, list[Index]]:
    """(header index, one index per group). Without `each`: no header, one group (the message)."""
    header: Index = {}
    if each is None:
        for seg in message:
            header.setdefault(seg.name, []).append(seg)
        return {}, [header]
    groups: list[Index] = []
    target = header
    for seg in message:
        name = seg.name
        if name == each:
            target = {}
            groups.append(target)
        lst = target.get(name)
        if lst is None:
            target[name] = [seg]
        else:
            lst.append(seg)
    return header, groups


# --- the fast path ---------------------------------------------------------------------------------
# An HL7 -> record mapping is also compiled to one Python function (`_FastFields`): straight-line
# code with every path, function, table and type written in. On orm-to-order it takes 40% of the
# time of walking the rules with `_value` and validating with pydantic, and 70% of a loop over
# per-rule tuples: at ~25 values a message, CPython's per-step overhead is most of the cost.
# It has no error handling beyond noticing that something is off: then it gives up (returns None)
# and the rules run again through `_value` and pydantic, which raise the precise error. Rules are
# pure, so the second run sees exactly what the first saw.


def _expected(annotation: Any) -> tuple[type | None, frozenset[str] | None]:
    """(the one Python type a record field takes as is, its Literal choices). None for a type
    left to pydantic (records with such a field take the careful path)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    tp = args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 else annotation
    if typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)
        return (str, frozenset(choices)) if all(type(c) is str for c in choices) else (None, None)
    return (tp, None) if tp in (str, int, date, datetime) else (None, None)


_ABSENT = Segment("", 0, DEFAULT_DELIMITERS)  # stands in for a missing segment: every value is None


class _FastFields:
    """`fields(group, header, d, tz) -> dict | None` for one mapping; `source` is its code.

    Only parsed paths (segment ids, numbers) and model field names are written into the code;
    tables, constants, functions and types are passed in through `env`."""

    @staticmethod
    def _paths(rules: tuple[Rule, ...]) -> list[Path | None]:
        return [s.hl7 for r in rules if r.constant is None for s in r.sources] + [
            r.when.source.hl7 for r in rules if r.when
        ]

    @staticmethod
    def supports(rules: tuple[Rule, ...]) -> bool:
        """[*] paths (rare) are left to the careful path."""
        return all(p is not None and not p.is_open for p in _FastFields._paths(rules))

    def __init__(self, rules: tuple[Rule, ...], model: type[BaseModel], name: str) -> None:
        self.slots: dict[tuple[str, int], int] = {}
        self.env: dict[str, Any] = {"ABSENT": _ABSENT}  # the objects the code names
        # A path several rules read (ADT's MSH-9.2) is read once, up front.
        self.shared: dict[Path | None, str] = {}
        twice = [p for p, n in Counter(self._paths(rules)).items() if n > 1]
        shared = [f"    R{k} = {self._read(p)}  # {p}" for k, p in enumerate(twice)]  # type: ignore[arg-type]
        self.shared = {p: f"R{k}" for k, p in enumerate(twice)}
        body = [line for i, rule in enumerate(rules) for line in self._rule(i, rule, model)]
        required = self._const("REQUIRED", frozenset(n for n, f in model.model_fields.items() if f.is_required()))
        # Each segment a path names, looked up once: the group's own first (as `_Hl7Context.read`).
        slots = [f"    s = group.get({name!r}) or header.get({name!r})\n"
                 f"    S{k} = s[{occ}] if s is not None and len(s) > {occ} else ABSENT"
                 for (name, occ), k in self.slots.items()]  # fmt: skip
        self.source = "\n".join([
            "def fields(group, header, d, tz):",
            *slots,
            *shared,
            "    f = {}",
            *body,
            f"    return f if {required} <= f.keys() else None",
        ])  # fmt: skip
        exec(compile(self.source, f"<mapping {name}>", "exec"), self.env)
        self.fields = self.env["fields"]

    def _const(self, name: str, value: Any) -> str:
        self.env[name] = value
        return name

    def _read(self, p: Path) -> str:
        """The expression reading a path."""
        if p in self.shared:
            return self.shared[p]
        slot = self.slots.setdefault((p.segment, (p.occurrence or 1) - 1), len(self.slots))
        return f"S{slot}.value({p.field}, {p.repetition or 1}, {p.component}, {p.subcomponent})"

    def _rule(self, i: int, rule: Rule, model: type[BaseModel]) -> list[str]:
        kind, choices = _expected(model.model_fields[rule.name].annotation)
        out = [f"    # {rule.name}"]
        if kind is None or (rule.table is not None and rule.constant is not None and type(rule.constant) is not str):
            return out + ["    return None  # left to pydantic / format_hl7"]
        ind = "    "
        if rule.when is not None:  # `_holds`; HL7 values are strings or None
            w = rule.when
            values = self._const(f"W{i}", w.values)
            test = {"present": f"(w is not None) is {w.present}", "not_in": f"w not in {values}"}.get(w.op)
            out += [f"{ind}w = {self._read(w.source.hl7)}  # {w.source.hl7}", f"{ind}if {test or f'w in {values}'}:"]  # type: ignore[arg-type]
            ind += "    "
        if rule.constant is not None:  # a constant wins over `from` (see `_value`)
            out.append(f"{ind}v = {self._const(f'C{i}', rule.constant)}")
        else:  # the first path giving a non-empty value, after the functions
            out += [] if rule.sources else [f"{ind}v = None"]
            for n, src in enumerate(rule.sources):
                pad = ind + "    " if n else ind
                out += [f"{ind}if not v:"] if n else []
                out.append(f"{pad}v = {self._read(src.hl7)}  # {src.hl7}")  # type: ignore[arg-type]
                if rule.fns:
                    out.append(f"{pad}if v is not None:")
                    out += [f"{pad}    v = {self._const(f'F{i}_{j}', fn)}(v, d)" for j, fn in enumerate(rule.fns)]
            out += [f"{ind}if not v:", f"{ind}    v = None"] if rule.fns else []
        if rule.table is not None:  # `lookup`; "" means no value
            table = self._const(f"T{i}", rule.table)
            out += [f"{ind}if v is not None:",
                    f"{ind}    v = {table}.get(v, {self._const(f'STAR{i}', rule.table.get('*'))})",
                    f"{ind}    if v is None:",
                    f"{ind}        return None",
                    f"{ind}    v = v or None"]  # fmt: skip
        if rule.default is not None:
            out += [f"{ind}if v is None:", f"{ind}    v = {self._const(f'D{i}', rule.default)}"]
        if rule.required:
            out += [f"{ind}if v is None:", f"{ind}    return None"]
        else:
            out.append(f"{ind}if v is not None:")
            ind += "    "
        if rule.conv is not None:
            out += [f"{ind}try:", f"{ind}    v = {self._const(f'CONV{i}', rule.conv)}(v, tz)",
                    f"{ind}except ValueError:", f"{ind}    return None"]  # fmt: skip
        # Strings arrive as strings (the compiler checks constants, defaults and tables); Literal
        # fields need one of their values, other types what the conversion gave.
        if choices is not None:
            out += [f"{ind}if v not in {self._const(f'CHOICES{i}', choices)}:", f"{ind}    return None"]
        elif kind is not str:
            out += [f"{ind}if type(v) is not {self._const(f'TYPE{i}', kind)}:", f"{ind}    return None"]
        return out + [f"{ind}f[{rule.name!r}] = v"]


# --- the mapping ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledMapping:
    """A mapping file ready to run. Build with `engine.mapping.compile_mapping` (or `load_mapping`)."""

    name: str  # file stem, used in error texts
    path: str  # as displayed in diagnostics
    source: str  # hl7v2 | order | patient
    target: str  # order | patient | hl7v2
    rules: tuple[Rule, ...]
    topic: Rule | None = None
    model: type[BaseModel] | None = None  # target record model; None for hl7v2
    each: str | None = None
    accept: Mapping[str, frozenset[str] | None] = field(default_factory=dict)  # code -> triggers (None: any)
    block: Block | None = None  # `to: hl7v2`: the segments, their rules and groups
    validate: bool = False  # `to: hl7v2`: check the built message's structure (hl7apy)

    def __post_init__(self) -> None:
        fast = None
        if self.source == "hl7v2" and self.model is not None and _FastFields.supports(self.rules):
            fast = _FastFields(self.rules, self.model, self.name)
        object.__setattr__(self, "_fast", fast)

    # -- public

    def accepts(self, message_type: str | None) -> bool:
        """Whether a message type ('ORM^O01') would be taken."""
        code, _, trigger = (message_type or "").partition("^")
        return self._refusal(code or None, trigger or None) is None

    def apply(self, message: Any, *, site_tz: tzinfo) -> list[Record]:
        """Map one inbound message (an engine.hl7v2.Message for `from: hl7v2`; a Record or a field
        mapping for record sources). Raises MappingRefused / MappingError."""
        if self._fast is not None:  # type: ignore[attr-defined]
            return self._map_hl7(message, site_tz)
        if self.source == "hl7v2":
            contexts = self._hl7_contexts(message)
        else:
            fields = message.fields if isinstance(message, Record) else message
            contexts = [_RecordContext(fields)]
        if self.target == "hl7v2":
            return [Record("hl7v2", None, {"er7": self._build(contexts[0].fields, site_tz, None, None)})]  # type: ignore[union-attr]
        return [self._record(ctx, site_tz, n if self.each else None) for n, ctx in enumerate(contexts, 1)]

    def build(
        self,
        record: Record | Mapping[str, Any],
        *,
        site_tz: tzinfo,
        control_id: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """`to: hl7v2` only: the ER7 text (segments separated by CR) for one record. `control_id`
        and `now` fill MSH-10 and MSH-7 when the mapping does not (tests pin them for golden files).
        With `validate: true` the message is checked against its structure first (MappingError)."""
        if self.target != "hl7v2":
            raise TypeError(f"mapping {self.name} produces {self.target} records, not hl7v2")
        fields = record.fields if isinstance(record, Record) else record
        return self._build(fields, site_tz, control_id, now)

    # -- internals

    def _refusal(self, code: str | None, trigger: str | None) -> int | None:
        if not self.accept:
            return None
        if code not in self.accept:
            return E.UNSUPPORTED_MESSAGE_TYPE
        triggers = self.accept[code]
        if triggers is not None and trigger not in triggers:
            return E.UNSUPPORTED_EVENT_CODE
        return None

    def _map_hl7(self, message: Message, tz: tzinfo) -> list[Record]:
        header, groups = self._groups(message)
        d = message.encoding
        fast = self._fast  # type: ignore[attr-defined]
        records = []
        for n, group in enumerate(groups, 1):
            number = n if self.each else None
            fields = fast.fields(group, header, d, tz)
            if fields is None:
                records.append(self._record(_Hl7Context(message, group, header), tz, number))
            else:  # a context only for a topic rule
                ctx = _Hl7Context(message, group, header) if self.topic is not None else None
                records.append(self._finish(fields, ctx, tz, number))
        return records

    def _groups(self, message: Message) -> tuple[Index, list[Index]]:
        if self.accept:
            code, trigger = message.message_code, message.trigger_event
            refused = self._refusal(code, trigger)
            if refused is not None:
                shown = message.message_type or "a message without MSH-9"
                text = f"mapping {self.name} does not accept {shown} (accepts {', '.join(self._accepted())})"
                raise MappingRefused(text, mapping=self.name, message_type=message.message_type, code=refused)
        header, groups = split_groups(message, self.each)
        if not groups:
            raise MappingError(
                f"mapping {self.name}: the message has no {self.each} segment",
                mapping=self.name, field=None, code=E.SEGMENT_SEQUENCE_ERROR, segment=self.each,
            )  # fmt: skip
        return header, groups

    def _hl7_contexts(self, message: Message) -> list[Context]:
        header, groups = self._groups(message)
        return [_Hl7Context(message, g, header) for g in groups]

    def _accepted(self) -> list[str]:
        out = []
        for code, triggers in self.accept.items():
            out += [code] if triggers is None else [f"{code}^{t}" for t in sorted(triggers)]
        return out

    def _fail(
        self, ctx: Context, rule: Rule, src: Source | None, code: int, text: str, group: int | None
    ) -> MappingError:
        segment, sequence, number = ctx.locate(src) if src is not None else (None, None, None)
        paths = tuple(s.text for s in rule.sources)
        return MappingError(
            f"mapping {self.name}: {text}", mapping=self.name, field=rule.name, paths=paths, code=code,
            segment=segment, sequence=sequence, hl7_field=number, group=group,
        )  # fmt: skip

    def _value(self, rule: Rule, ctx: Context, tz: tzinfo, group: int | None) -> Any:
        when = rule.when
        if when is not None and not rule.per_occurrence and not _holds(when, ctx, tz):
            return _NO
        src: Source | None = None  # where the value came from (None: a constant or the default)
        value = rule.constant
        if rule.seq is not None:  # an item number (`seq: segment` is numbered by the builder)
            value = ctx.index[rule.seq] + 1  # type: ignore[union-attr]
        elif rule.join is not None or rule.per_occurrence:
            value, src = self._gather(rule, ctx, tz)  # type: ignore[arg-type]
        elif value is None:
            d = ctx.d
            for candidate in rule.sources:
                v = ctx.read(candidate)
                if v is None:
                    continue
                if rule.fns:
                    if not isinstance(v, str):
                        v = format_hl7(v, tz)
                    for fn in rule.fns:
                        v = fn(v, d)
                    if not v:
                        continue
                value, src = v, candidate
                break
        if value is not None and rule.table is not None:
            try:
                value = lookup(rule.table, value if isinstance(value, str) else format_hl7(value, tz))  # type: ignore[arg-type]
            except TableMiss:
                where = f" (read from {src.text})" if src is not None else ""
                text = f"field '{rule.name}': code not found in table '{rule.table_name}'{where}"
                raise self._fail(ctx, rule, src, E.TABLE_VALUE_NOT_FOUND, text, group) from None
            if value == "":
                value = None
        if value is None:
            value = rule.default
        if value is None:
            if rule.required:
                tried = ", ".join(s.text for s in rule.sources)
                first = rule.sources[0] if rule.sources else None
                raise self._fail(
                    ctx, rule, first, E.REQUIRED_FIELD_MISSING,
                    f"required field '{rule.name}' is empty (tried {tried})", group,
                )  # fmt: skip
            return _NO
        if rule.conv is not None:
            try:
                value = rule.conv(value, tz)
            except ValueError as exc:
                reason = str(exc)  # our converters' texts never quote the value
                where = f" (read from {src.text})" if src is not None else ""
                raise self._fail(
                    ctx, rule, src, E.DATA_TYPE_ERROR, f"field '{rule.name}': {reason}{where}", group
                ) from None
        return value

    def _gather(self, rule: Rule, ctx: _Hl7Context, tz: tzinfo) -> tuple[Any, Source | None]:
        """`join` and per-occurrence `when`: the first value (or all, joined) after the functions."""
        first = rule.join is None
        when = rule.when if rule.per_occurrence else None
        for candidate in rule.sources:  # the first path giving a value wins, as without `join`
            found: list[str] = []
            for v in ctx.read_many(candidate, when, tz, first):
                for fn in rule.fns:
                    v = fn(v, ctx.d)
                if v:
                    if first:
                        return v, candidate
                    found.append(v)
            if found:
                return rule.join.join(found), candidate  # type: ignore[union-attr]
        return None, None

    def _record(self, ctx: Context, tz: tzinfo, group: int | None) -> Record:
        fields: dict[str, Any] = {}
        for rule in self.rules:
            v = self._value(rule, ctx, tz, group)
            if v is not _NO:
                fields[rule.name] = v
        model = self.model
        assert model is not None
        try:
            valid = model.model_validate(fields)
        except ValidationError as exc:
            raise self._invalid(exc, ctx, group) from None
        return self._finish({k: getattr(valid, k) for k in fields}, ctx, tz, group)

    def _finish(self, fields: dict[str, Any], ctx: Context | None, tz: tzinfo, group: int | None) -> Record:
        """The record for valid `fields`; `ctx` may be None when the mapping has no topic rule."""
        topic: str | None = None
        if self.topic is not None:  # a rule that gives no value falls back to <type>.<event>
            t = self._value(self.topic, ctx, tz, group)  # type: ignore[arg-type]
            topic = None if t is _NO else str(t)
        if topic is None and "event" in fields:
            topic = f"{self.target}.{fields['event']}"
        return Record(self.target, topic, fields)

    def _invalid(self, exc: ValidationError, ctx: Context, group: int | None) -> MappingError:
        err = exc.errors(include_input=False, include_url=False)[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        rule = next((r for r in self.rules if r.name == name), Rule(name))
        if err["type"] == "missing":
            return self._fail(ctx, rule, None, E.REQUIRED_FIELD_MISSING, f"required field '{name}' is empty", group)
        src = next((s for s in rule.sources if ctx.read(s) is not None), None)
        msg = str(err["msg"])
        return self._fail(ctx, rule, src, E.DATA_TYPE_ERROR, f"field '{name}': {msg[:1].lower()}{msg[1:]}", group)

    def _build(self, fields: Mapping[str, Any], tz: tzinfo, control_id: str | None, now: datetime | None) -> str:
        items: list[Any] = []
        index: list[int] = []
        ctx = _RecordContext(fields, items, index)
        value = self._value
        text = build_er7(
            self.block,  # type: ignore[arg-type]
            lambda rule: value(rule, ctx, tz, None),
            _NO,
            lambda path: read_record(path, fields, items),
            items,
            index,
            site_tz=tz,
            control_id=control_id,
            now=now,
        )
        if self.validate:
            self._check_structure(text)
        return text

    def _check_structure(self, text: str) -> None:
        problem = validate_structure(text)
        if problem is None:
            return
        where = _ELEMENT.search(problem)  # hl7apy names elements (OBR_4), never values
        segment, number = (where[1], int(where[2])) if where else (None, None)
        missing = number is not None and "Missing required child" in problem
        raise MappingError(
            f"mapping {self.name}: the built message does not fit its HL7 message structure ({problem})",
            mapping=self.name, field=None, code=E.REQUIRED_FIELD_MISSING if missing else E.SEGMENT_SEQUENCE_ERROR,
            segment=segment, hl7_field=number,
        )  # fmt: skip


_ELEMENT = re.compile(r"\b([A-Z][A-Z0-9]{2})_([0-9]+)\b")


def _holds(test: When, ctx: Context, tz: tzinfo) -> bool:
    return _test(test, ctx.read(test.source), tz)


def _test(test: When, v: Any, tz: tzinfo) -> bool:
    op = test.op
    if op == "present":
        return (v is not None) is test.present
    if v is not None and not isinstance(v, str):
        v = format_hl7(v, tz)
    if op == "in":
        return v in test.values
    if op == "not_in":
        return v not in test.values
    return v is not None and v in test.values  # equals: a one-element set
