"""Compile a validated MappingFile once: parse every path, pick every function, converter and
table, and check what the schema alone cannot (paths, target fields, functions, tables, types).

Every problem becomes a Diagnostic at the exact spot in the YAML: for a path error, the character
the path parser names inside the string (one further right when the string is quoted).
"""

from __future__ import annotations

import re
import types
import typing
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from engine.config.lint import did_you_mean
from engine.config.project import ConfigInvalid
from engine.config.schema import Condition, FieldRule, MappingFile, NestedGroup, SegmentGroup
from engine.config.yamlpos import Diagnostic, PathT, YamlDoc
from engine.hl7v2.escape import escape
from engine.hl7v2.path import ALL, Path, PathSyntaxError, parse_path
from engine.mapping.apply import CompiledMapping, Rule, Source, When
from engine.mapping.functions import CONVERSIONS, FUNCTIONS, format_hl7
from engine.mapping.outbound import SEGMENT, Block, Group, SegmentKey, segment_key, write_order
from engine.mapping.recordpath import RecordPath, RecordPathError, compile_record_path
from engine.mapping.records import MODELS

__all__ = ["compile_mapping", "compile_checked"]

TARGETS = (*MODELS, "hl7v2")
_MESSAGE_TYPE = re.compile(r"^[A-Z0-9]{3}(\^[A-Z0-9]{3})?$")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
# Which `as:` fits a record field of each kind.
_FITS = {"str": {"str"}, "literal": {"str"}, "int": {"int"}, "decimal": {"decimal", "int"},
         "date": {"date"}, "datetime": {"datetime"}}  # fmt: skip


def _kind(annotation: Any) -> tuple[str, tuple[str, ...]]:
    """('str'|'literal'|'int'|'decimal'|'date'|'datetime', literal choices) of a model field."""
    tp = annotation
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    if typing.get_origin(tp) is typing.Literal:
        return "literal", tuple(str(a) for a in typing.get_args(tp))
    for py, name in ((datetime, "datetime"), (date, "date"), (bool, "str"), (int, "int"), (Decimal, "decimal")):
        if tp is py:
            return name, ()
    return "str", ()


class _Compiler:
    def __init__(self, mapping: MappingFile, display: str, doc: YamlDoc | None, text: str | None) -> None:
        self.m = mapping
        self.display = display
        self.doc = doc
        self.lines = text.splitlines() if text is not None else None
        self.diags: list[Diagnostic] = []
        self.source = mapping.from_
        self.target = mapping.to
        self.model = MODELS.get(self.target)
        self.kinds = {n: _kind(f.annotation) for n, f in self.model.model_fields.items()} if self.model else {}
        self.checked_tables: set[tuple[str, str]] = set()
        self.lists: list[str] = []  # `each` list paths of the groups being compiled, outermost first

    # -- positions

    def _quoted(self, line: int, col: int) -> int:
        if self.lines is None or not 0 < line <= len(self.lines):
            return 0
        text = self.lines[line - 1]
        return 1 if 0 < col <= len(text) and text[col - 1] in "\"'" else 0

    def report(self, loc: PathT, message: str, *, key: bool = False, offset: int | None = None) -> None:
        if self.doc is None:
            line, col = 1, 1
        else:
            line, col = self.doc.key_pos(loc) if key else self.doc.value_pos(loc)
        if offset is not None:
            col += offset + self._quoted(line, col)
        self.diags.append(Diagnostic(self.display, line, col, message))

    # -- paths

    def hl7_path(self, text: str, loc: PathT, *, key: bool = False) -> Path | None:
        try:
            return parse_path(text)
        except PathSyntaxError as exc:
            self.report(loc, f"invalid HL7 path '{text}': {exc.reason}", key=key, offset=exc.column)
            return None

    def source_path(self, text: str, loc: PathT) -> Source | None:
        if self.source == "hl7v2":
            p = self.hl7_path(text, loc)
            return None if p is None else Source(text, hl7=p)
        try:
            path = compile_record_path(text, self.source, MODELS[self.source], self.lists)
        except RecordPathError as exc:
            self.report(loc, exc.message, offset=exc.column)
            return None
        return Source(text, record=path)

    def target_path(self, text: str, loc: PathT, *, key: bool) -> Path | None:
        p = self.hl7_path(text, loc, key=key)
        if p is None:
            return None
        if p.is_open:
            self.report(loc, f"cannot write to '{text}': [*] is for reading", key=key)
            return None
        if p.segment == "MSH" and p.field <= 2:
            self.report(loc, "MSH-1 and MSH-2 are fixed (| and ^~\\&)", key=key)
            return None
        return p

    # -- rules

    def rule(self, name: str, rule: FieldRule, loc: PathT, target: Path | None = None) -> Rule | None:
        """Compile one rule; `target` is the HL7 path written for `to: hl7v2`."""
        record_field = self.model is not None and loc[0] == "fields"
        ok = True
        seq = self.seq(rule, loc) if rule.seq is not None else None
        if rule.seq is not None and seq is None:
            return None
        if rule.join is not None and self.source != "hl7v2":
            self.report(loc + ("join",), "'join' is only for from: hl7v2", key=True)
            ok = False
        sources: list[Source] = []
        for i, text in enumerate(rule.from_ or []):
            src = self.source_path(text, loc + ("from", i))
            ok &= src is not None
            sources += [src] if src else []
        fns = []
        for i, fname in enumerate(rule.fn):
            if fname not in FUNCTIONS:
                self.report(loc + ("fn", i), f"unknown function '{fname}'" + did_you_mean(fname, FUNCTIONS))
                ok = False
            else:
                fns.append(FUNCTIONS[fname][0])
        table = None
        if rule.map is not None:
            table = self.m.tables.get(rule.map)
            if table is None:
                self.report(loc + ("map",), f"unknown table '{rule.map}'" + did_you_mean(rule.map, self.m.tables))
                ok = False
        when = self.condition(rule.when, loc + ("when",)) if rule.when is not None else None
        ok &= rule.when is None or when is not None
        conv = self.conversion(name, rule, loc) if record_field else rule.as_
        if conv is False:
            return None
        if record_field:
            ok &= self.check_values(name, rule, loc, conv)
        if rule.join is not None and ok and not any(s.hl7 is not None and s.hl7.is_open for s in sources):
            msg = "'join' needs a path that reads every occurrence or repetition ([*])"
            self.report(loc + ("join",), msg, key=True)
            ok = False
        if not ok:
            return None
        per_occurrence = (
            when is not None
            and when.source.hl7 is not None
            and when.source.hl7.occurrence == ALL
            and bool(sources)
            and all(s.hl7 is not None and s.hl7.occurrence == ALL and s.hl7.segment == when.source.hl7.segment
                    for s in sources)
        )  # fmt: skip
        return Rule(
            name=name,
            sources=tuple(sources),
            constant=rule.value,
            required=rule.required,
            default=rule.default,
            fns=tuple(fns),
            table_name=rule.map,
            table=table,
            conv_name=conv,  # type: ignore[arg-type]
            conv=CONVERSIONS[conv] if conv else None,  # type: ignore[index]
            when=when,
            target=target,
            seq=seq,
            join=rule.join,
            per_occurrence=per_occurrence,
        )

    def seq(self, rule: FieldRule, loc: PathT) -> int | None:
        """`seq: segment` -> SEGMENT; `seq: <list>` -> the level of the enclosing group over it."""
        if self.target != "hl7v2":
            self.report(loc + ("seq",), "'seq' is only for to: hl7v2", key=True)
            return None
        extra = [k for k in ("fn", "map", "as_", "default", "required", "when") if k in rule.model_fields_set]
        if extra:
            key = extra[0].rstrip("_")
            self.report(loc + (key,), f"'seq' takes no '{key}'", key=True)
            return None
        if rule.seq == "segment":
            return SEGMENT
        if rule.seq in self.lists:
            return self.lists.index(rule.seq)
        choices = ", ".join(["segment", *self.lists])
        self.report(loc + ("seq",), f"'seq: {rule.seq}' must be one of: {choices} (a list of an enclosing group)")
        return None

    def condition(self, cond: Condition, loc: PathT) -> When | None:
        src = self.source_path(cond.path, loc + ("path",))
        if src is None:
            return None
        if cond.in_ is not None:
            return When(src, "in", frozenset(cond.in_))
        if cond.not_in is not None:
            return When(src, "not_in", frozenset(cond.not_in))
        if cond.equals is not None:
            return When(src, "equals", frozenset([cond.equals]))
        return When(src, "present", present=bool(cond.present))

    def conversion(self, name: str, rule: FieldRule, loc: PathT) -> str | None | bool:
        """The `as:` to use for a record field: explicit, else inferred from the field's type."""
        kind = self.kinds[name][0]
        if rule.as_ is None:
            return None if kind in ("str", "literal") else kind
        if rule.as_ not in _FITS[kind]:
            shown = "string" if kind == "literal" else kind
            self.report(loc + ("as",), f"'as: {rule.as_}' does not fit {self.target} field '{name}' (a {shown})")
            return False
        return rule.as_

    def check_values(self, name: str, rule: FieldRule, loc: PathT, conv: Any) -> bool:
        """Constants, defaults and table values must suit the record field they end up in."""
        kind, choices = self.kinds[name]
        ok = True
        finals: list[tuple[PathT, str, Any]] = [(loc + ("default",), "default", rule.default)]
        if rule.map is None:
            finals.append((loc + ("value",), "value", rule.value))
        elif rule.map in self.m.tables and conv in (None, "str"):
            for code, value in self.m.tables[rule.map].items():
                if (rule.map, code) not in self.checked_tables and value != "":
                    self.checked_tables.add((rule.map, code))
                    finals.append((("tables", rule.map, code), f"table '{rule.map}' value", value))
        for where, what, value in finals:
            problem = self.unsuitable(kind, choices, conv, value)
            if problem:
                self.report(where, f"{what} for {self.target} field '{name}' {problem}")
                ok = False
        return ok

    @staticmethod
    def unsuitable(kind: str, choices: tuple[str, ...], conv: Any, value: Any) -> str | None:
        if value is None:
            return None
        if kind in ("str", "literal") and not isinstance(value, str):
            return "must be a string (quote it)"
        if kind == "literal" and value not in choices:
            return f"must be one of: {', '.join(choices)}"
        if conv:
            try:
                CONVERSIONS[conv](value, UTC)
            except ValueError as exc:
                return f"is not a valid {conv} ({exc})"
        return None

    # -- the whole file

    def run(self) -> CompiledMapping | None:
        m = self.m
        if self.target not in TARGETS:
            hint = did_you_mean(self.target, TARGETS)
            self.report(("to",), f"unknown target '{self.target}'{hint}: expected order, patient or hl7v2")
            return None
        if self.source != "hl7v2" and self.source not in MODELS:
            self.report(("from",), f"reading '{self.source}' is not supported yet: use hl7v2, order or patient")
            return None
        if self.source == "hl7v2" and self.target == "hl7v2":
            self.report(("to",), "from: hl7v2 to: hl7v2 is not supported: map to a record first")
            return None
        accept = self.accepts()
        each = self.each()
        if m.topic is not None and self.model is None:
            self.report(("topic",), "'topic' is only for record mappings (to: order or patient)", key=True)
        if m.template and self.target != "hl7v2":
            self.report(("template",), "'template' is only for to: hl7v2", key=True)
        for key, name in (("groups", "groups"), ("validate", "validate_")):
            if name in m.model_fields_set and self.target != "hl7v2":
                self.report((key,), f"'{key}' is only for to: hl7v2", key=True)
        rules: list[Rule] = []
        block = None
        if self.target == "hl7v2":
            block = self.block(m.fields, (), m.groups, template=m.template)
        for name, rule in m.fields.items() if self.model is not None else ():
            loc: PathT = ("fields", name)
            if name not in self.kinds:
                self.report(loc, f"unknown {self.target} field '{name}'" + did_you_mean(name, self.kinds), key=True)
                continue
            compiled = self.rule(name, rule, loc)
            if compiled is not None:
                rules.append(compiled)
        if self.model is not None:
            for fname, info in self.model.model_fields.items():
                if info.is_required() and fname not in m.fields:
                    self.report(("fields",), f"{self.target} records need field '{fname}'", key=True)
        topic = None
        if m.topic is not None and self.model is not None:
            topic = self.rule("topic", m.topic, ("topic",))
        if self.target == "hl7v2" and not any(
            parse_path(k).segment == "MSH" and parse_path(k).field == 9 for k in (*m.template, *m.fields) if _is_path(k)
        ):
            self.report(("to",), "to: hl7v2 needs the message type: set MSH-9.1 and MSH-9.2 in 'template'")
        if self.diags:
            return None
        return CompiledMapping(
            name=PurePath(self.display).stem,
            path=self.display,
            source=self.source,
            target=self.target,
            rules=tuple(rules),
            topic=topic,
            model=self.model,
            each=each,
            accept=accept,
            block=block,
            validate=m.validate_,
        )

    def block(
        self,
        fields: dict[str, FieldRule],
        loc: PathT,
        groups: list[SegmentGroup] | list[NestedGroup],
        template: dict[str, str] | None = None,
    ) -> Block:
        """The segments of `fields` (and `template`) in write order, then `groups`, compiled."""
        top = not loc
        keys: list[SegmentKey] = []
        constants: list[tuple[Path, str]] = []
        for key, value in (template or {}).items():
            p = self.target_path(key, ("template", key), key=True)
            if p is not None:
                keys.append(segment_key(p))
                constants.append((p, value))
        rules: list[Rule] = []
        for name, rule in fields.items():
            where = loc + ("fields", name)
            target = self.target_path(name, where, key=True)
            if target is None:
                continue
            if not top and target.segment == "MSH":
                self.report(where, "MSH is written once: set it in the mapping's own 'fields' or 'template'", key=True)
                continue
            keys.append(segment_key(target))
            compiled = self.rule(name, rule, where, target)
            if compiled is not None:
                rules.append(compiled)
        order = write_order(keys, msh_first=top)
        slot = {k: i for i, k in enumerate(order)}
        widths = [12 if k[0] == "MSH" else 0 for k in order]
        for p in [*(p for p, _ in constants), *(r.target for r in rules)]:
            widths[slot[segment_key(p)]] = max(widths[slot[segment_key(p)]], p.field)  # type: ignore[union-attr]
        compiled_groups: list[Group] = []
        for i, group in enumerate(groups):
            gloc = loc + ("groups", i)
            each = None
            if group.each is not None:
                try:
                    each = compile_record_path(group.each, self.source, MODELS[self.source], self.lists, want_list=True)
                except RecordPathError as exc:
                    self.report(gloc + ("each",), exc.message, offset=exc.column)
                    continue
                self.lists.append(each.list_text)  # type: ignore[arg-type]
            nested = self.block(group.fields, gloc, getattr(group, "groups", []))
            if each is not None:
                self.lists.pop()
            compiled_groups.append(Group(each, nested))
        return Block(
            keys=order,
            rules=tuple((r, slot[segment_key(r.target)], _constant_text(r), _plain_paths(r)) for r in rules),  # type: ignore[arg-type]
            groups=tuple(compiled_groups),
            constants=tuple((p, escape(v), slot[segment_key(p)]) for p, v in constants),
            widths=tuple(widths),
        )

    def accepts(self) -> dict[str, frozenset[str] | None]:
        out: dict[str, frozenset[str] | None] = {}
        if self.m.accept and self.source != "hl7v2":
            self.report(("accept",), "'accept' is only for from: hl7v2", key=True)
            return out
        for i, text in enumerate(self.m.accept):
            if not _MESSAGE_TYPE.match(text):
                self.report(("accept", i), f"'{text}' is not a message type: write CODE^TRIGGER, e.g. ORM^O01")
                continue
            code, _, trigger = text.partition("^")
            if not trigger:
                out[code] = None
            elif code not in out or out[code] is not None:
                out[code] = (out.get(code) or frozenset()) | {trigger}
        return out

    def each(self) -> str | None:
        each = self.m.each
        if each is None:
            return None
        if self.source != "hl7v2":
            self.report(("each",), "'each' is only for from: hl7v2", key=True)
        elif not _SEGMENT_ID.match(each):
            self.report(("each",), f"'{each}' is not a segment id (3 characters: A-Z, then A-Z or 0-9)")
        return each


def _constant_text(rule: Rule) -> str | None:
    """The escaped text of a rule that always writes the same thing (computed once, not per message)."""
    if rule.constant is None or rule.when is not None or rule.table is not None or rule.fns or rule.conv is not None:
        return None
    value = rule.constant
    return escape(value if isinstance(value, str) else format_hl7(value, UTC))


def _plain_paths(rule: Rule) -> tuple[RecordPath, ...] | None:
    """The record paths of a rule that does nothing but read them (the first value wins)."""
    plain = rule.sources and not (rule.when or rule.fns or rule.table is not None or rule.conv or rule.required)
    if not plain or rule.default is not None or rule.seq is not None:
        return None
    return tuple(s.record for s in rule.sources)  # type: ignore[misc]


def _is_path(text: str) -> bool:
    try:
        parse_path(text)
    except PathSyntaxError:
        return False
    return True


def compile_checked(
    mapping: MappingFile, *, path: str, positions: YamlDoc | None = None, text: str | None = None
) -> tuple[CompiledMapping | None, list[Diagnostic]]:
    """Compile and return (mapping or None, sorted diagnostics). `text` (the file's source) lets
    path-error columns account for quoting."""
    compiler = _Compiler(mapping, path, positions, text)
    compiled = compiler.run()
    return compiled, sorted(set(compiler.diags))


def compile_mapping(
    doc: MappingFile, *, path: str, positions: YamlDoc | None = None, text: str | None = None
) -> CompiledMapping:
    """Compile a validated mapping; raises ConfigInvalid listing every diagnostic."""
    compiled, diags = compile_checked(doc, path=path, positions=positions, text=text)
    if diags or compiled is None:
        raise ConfigInvalid(diags)
    return compiled
