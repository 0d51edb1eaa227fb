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
from engine.config.schema import Condition, FieldRule, MappingFile
from engine.config.yamlpos import Diagnostic, PathT, YamlDoc
from engine.hl7v2.path import Path, PathSyntaxError, parse_path
from engine.mapping.apply import CompiledMapping, Rule, Source, When
from engine.mapping.functions import CONVERSIONS, FUNCTIONS
from engine.mapping.outbound import SegmentKey, segment_key
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
        prefix = self.source + "."
        names = list(MODELS[self.source].model_fields)
        if not text.startswith(prefix):
            self.report(loc, f"record paths start with '{prefix}' (e.g. '{prefix}{names[0]}')", offset=0)
            return None
        name = text[len(prefix) :]
        if name not in names:
            hint = did_you_mean(name, names)
            self.report(loc, f"unknown {self.source} field '{name}'{hint}", offset=len(prefix))
            return None
        return Source(text, field=name)

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
        if not ok:
            return None
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
        )

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
        rules: list[Rule] = []
        order: dict[SegmentKey, None] = {}
        template: list[tuple[Path, str]] = []
        if self.target == "hl7v2":
            for key, value in m.template.items():
                p = self.target_path(key, ("template", key), key=True)
                if p is not None:
                    order.setdefault(segment_key(p), None)
                    template.append((p, value))
        for name, rule in m.fields.items():
            loc: PathT = ("fields", name)
            target = None
            if self.model is not None and name not in self.kinds:
                self.report(loc, f"unknown {self.target} field '{name}'" + did_you_mean(name, self.kinds), key=True)
                continue
            if self.model is None:
                target = self.target_path(name, loc, key=True)
                if target is None:
                    continue
                order.setdefault(segment_key(target), None)
            compiled = self.rule(name, rule, loc, target)
            if compiled is not None:
                rules.append(compiled)
        if self.model is not None:
            for fname, info in self.model.model_fields.items():
                if info.is_required() and fname not in m.fields:
                    self.report(("fields",), f"{self.target} records need field '{fname}'", key=True)
        topic = None
        if m.topic is not None and self.model is not None:
            topic = self.rule("topic", m.topic, ("topic",))
        if (
            self.target == "hl7v2"
            and not any(p.segment == "MSH" and p.field == 9 for p, _ in template)
            and not any(r.target is not None and r.target.segment == "MSH" and r.target.field == 9 for r in rules)
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
            segment_order=tuple(order),
            template=tuple(template),
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
