"""Record paths: how a mapping reads a canonical record (`from: order`, `from: result`, ...).

    order.accession                          a field
    result.result.summary                    a field of a nested object
    result.orders[1].accession               an item of a list, 1-based like HL7
    result.result.findings[*].code           the current item of the group over that list (`each:`)

Paths are checked against the record's pydantic model when the mapping compiles, so a typo is a
lint error at its column, never a silent empty value. At run time a path is a short tuple of
names and 0-based indexes walked over dicts, lists or model objects.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel

from engine.config.lint import did_you_mean

__all__ = ["RecordPath", "RecordPathError", "compile_record_path", "read_record"]

_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\*|[0-9]+)\])?")
_SCALARS = {str: "str", int: "int", float: "float", bool: "bool", datetime: "datetime", date: "date"}


class RecordPathError(ValueError):
    """A path the record's model does not have; `column` is a 0-based index into the path text."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


@dataclass(frozen=True, slots=True)
class RecordPath:
    """A compiled path. `item`: None reads from the record's fields, k from the current item of the
    k-th enclosing group (0: outermost). `steps`: field names and 0-based list indexes from there.
    `kind`: what it reads (str, int, float, bool, date, datetime, literal, list)."""

    text: str
    steps: tuple[str | int, ...]
    item: int | None
    kind: str
    list_text: str | None = None  # for a list: its canonical text, as `each:` and `seq:` name it


def _unwrap(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _kind(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "literal"
    if typing.get_origin(tp) is list:
        return "list"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "object"
    return _SCALARS.get(tp, "str")


def compile_record_path(
    text: str, record_type: str, model: type[BaseModel], groups: Sequence[str] = (), *, want_list: bool = False
) -> RecordPath:
    """Check `text` against `model`. `groups`: the list paths of the enclosing groups, outermost
    first (`[*]` may name only those). `want_list`: the path must end at a list (for `each:`)."""
    prefix = record_type + "."
    if not text.startswith(prefix):
        first = next(iter(model.model_fields))
        raise RecordPathError(f"record paths start with '{prefix}' (e.g. '{prefix}{first}')", 0)
    pos = len(prefix)
    tp: Any = model
    steps: list[str | int] = []
    item: int | None = None
    while True:
        m = _STEP.match(text, pos)
        if m is None:
            raise RecordPathError(f"invalid record path '{text}': expected a field name", pos)
        name, index = m.group(1), m.group(2)
        fields = tp.model_fields
        if name not in fields:
            hint = did_you_mean(name, fields)
            if pos == len(prefix):
                raise RecordPathError(f"unknown {record_type} field '{name}'{hint}", pos)
            parent = text[len(prefix) : pos]  # 'result.' for result.result.findingz
            raise RecordPathError(f"unknown field '{parent}{name}'{hint.replace(chr(39), chr(39) + parent, 1)}", pos)
        steps.append(name)
        tp = _unwrap(fields[name].annotation)
        if index is not None:
            bracket = m.start(2) - 1
            here = text[:bracket]
            if _kind(tp) != "list":
                raise RecordPathError(f"'{here}' is not a list: remove '[{index}]'", bracket)
            tp = _unwrap(typing.get_args(tp)[0])
            if index == "*":
                if here not in groups:
                    raise RecordPathError(
                        f"'[*]' reads the current item of a group: use it inside a group with 'each: {here}'", bracket
                    )
                item, steps = groups.index(here), []
            elif int(index) == 0 or index.startswith("0"):
                raise RecordPathError("list items are numbered from 1 (no leading zeros)", bracket + 1)
            else:
                steps.append(int(index) - 1)
        pos = m.end()
        if pos == len(text):
            break
        if text[pos] != "." or _kind(tp) != "object":
            what = "unexpected character" if text[pos] != "." else f"'{text[:pos]}' has no fields"
            raise RecordPathError(f"invalid record path '{text}': {what}", pos)
        pos += 1
    kind = _kind(tp)
    if want_list:
        if kind != "list":
            raise RecordPathError(f"'each' needs a list, and '{text}' is not one", 0)
        return RecordPath(text, tuple(steps), item, kind, list_text=text)
    if kind == "list":
        raise RecordPathError(
            f"'{text}' is a list: pick an item ('{text}[1]') or read it in a group ('each: {text}')", 0
        )
    if kind == "object":
        names = ", ".join(list(tp.model_fields)[:4])
        raise RecordPathError(f"'{text}' is an object: name one of its fields ({names}, ...)", 0)
    return RecordPath(text, tuple(steps), item, kind)


def read_record(path: RecordPath, fields: Mapping[str, Any], items: Sequence[Any]) -> Any:
    """The value at `path` (None when any step is missing). Records read back from JSON hold dates
    as ISO 8601 text: a date or date-time field gives a date or datetime either way."""
    obj: Any = fields if path.item is None else items[path.item]
    for step in path.steps:
        if obj is None:
            return None
        if type(step) is int:
            obj = obj[step] if step < len(obj) else None
        elif type(obj) is dict or isinstance(obj, Mapping):
            obj = obj.get(step)
        else:
            obj = getattr(obj, step, None)
    if type(obj) is str and path.kind in ("datetime", "date"):
        try:
            return datetime.fromisoformat(obj) if path.kind == "datetime" else date.fromisoformat(obj)
        except ValueError:
            return obj  # the conversion (`as:`) or the peer will say what is wrong
    return obj
