"""Turn validation results into positioned diagnostics, and the checks that span files.

Messages are written here from pydantic's error *type* and the schema, never from the input:
a value may be a resolved secret or patient data pasted by mistake, so it is never echoed.
File reading and discovery live in project.py (`lint()` is defined there).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from engine.config.schema import ChannelConfig, ComponentRef, MappingFile
from engine.config.secrets import Resolved
from engine.config.yamlpos import Diagnostic, PathT, YamlDoc
from engine.core import registry

M = TypeVar("M", bound=BaseModel)
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "", "*"})


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """The " (did you mean 'x'?)" suffix when a choice is close to `word`, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _field_keys(model: type[BaseModel]) -> dict[str, Any]:
    return {f.alias or name: f.annotation for name, f in model.model_fields.items()}


def allowed_keys(model: type[BaseModel], loc: PathT) -> list[str]:
    """Keys the schema accepts in the mapping at `loc` (for did-you-mean hints)."""
    tp: Any = model
    for step in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = _field_keys(tp).get(str(step))
        elif origin in (list, tuple, set, frozenset):
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(_field_keys(tp))
    return []


def _subject(path: PathT) -> str:
    if not path:
        return "the document"
    end = len(path)
    while end > 0 and isinstance(path[end - 1], int):
        end -= 1
    head = str(path[end - 1]) if end else ""
    return "'" + head + "".join(f"[{i}]" for i in path[end:]) + "'"


def _choices(expected: str) -> str:
    quoted = re.findall(r"'([^']*)'", expected)
    return ", ".join(quoted) if quoted else expected.replace(" or ", ", ")


_TYPE_TEXT = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "decimal_type": "must be a number",
    "decimal_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "none_required": "must be empty (null)",
}


def error_text(err: Any, subject: str, secret: bool) -> str:
    """Readable text for one pydantic error (everything but missing/extra keys)."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _TYPE_TEXT:
        return f"{subject} {_TYPE_TEXT[kind]}"
    if kind in ("literal_error", "enum"):
        return f"{subject} must be one of: {_choices(str(ctx.get('expected', '')))}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("greater than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"{subject} must be {words} {ctx.get(key)}"
    if kind == "string_pattern_mismatch":
        return f"{subject} must match the pattern {ctx.get('pattern')}"
    if kind == "string_too_short":
        return f"{subject} must be at least {ctx.get('min_length')} characters long"
    if kind == "string_too_long":
        return f"{subject} must be at most {ctx.get('max_length')} characters long"
    if kind == "too_short":
        return f"{subject} must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"{subject} must have at most {ctx.get('max_length')} item(s)"
    if kind == "invalid":  # our own PydanticCustomError: the message is written to follow the subject
        return f"{subject} {err['msg']}"
    if secret:  # a component's validator might quote the value it got: say nothing more
        return f"{subject} is invalid"
    msg = re.sub(r"^(Value error|Assertion failed), ", "", str(err["msg"]))
    return f"{subject} is invalid: {msg[:1].lower()}{msg[1:]}"


def validation_diagnostics(
    exc: ValidationError,
    model: type[BaseModel],
    doc: YamlDoc,
    display: str,
    prefix: PathT = (),
    secrets: Resolved | None = None,
) -> list[Diagnostic]:
    """Position every error of `exc` (raised validating `model` at `prefix` of `doc`)."""
    out: list[Diagnostic] = []
    for err in exc.errors(include_input=False, include_url=False, include_context=True):
        loc: PathT = tuple(err["loc"])
        path = prefix + loc
        if secrets and path in secrets.unset_paths:
            continue  # "secret ${X} is not set" already says what is wrong there
        if err["type"] == "missing":
            line, col = doc.value_pos(path[:-1])
            message = f"missing required key '{loc[-1]}'"
        elif err["type"] == "extra_forbidden":
            line, col = doc.key_pos(path)
            message = f"unknown key '{loc[-1]}'" + did_you_mean(str(loc[-1]), allowed_keys(model, loc[:-1]))
        else:
            line, col = doc.value_pos(path)
            message = error_text(err, _subject(path), bool(secrets) and path in secrets.secret_paths)
        out.append(Diagnostic(display, line, col, message))
    return out


def validate(
    model: type[M],
    data: Any,
    doc: YamlDoc,
    display: str,
    prefix: PathT = (),
    secrets: Resolved | None = None,
) -> tuple[M | None, list[Diagnostic]]:
    """Validate `data` (the part of `doc` at `prefix`) against `model`."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, validation_diagnostics(exc, model, doc, display, prefix, secrets)


@dataclass(frozen=True)
class Listener:
    """A socket some file asks to bind, for the port-conflict check."""

    host: str
    port: int
    where: str  # "path:line:col" of the port value, or a description for a default
    diag_path: str
    line: int
    col: int


@dataclass(frozen=True)
class ComponentResult:
    """A channel component after its own Config model validated it."""

    kind: str
    component: registry.Component
    config: BaseModel


def check_component(
    role: registry.Kind,
    ref: ComponentRef | Any,
    doc: YamlDoc,
    display: str,
    prefix: PathT,
    secrets: Resolved | None = None,
) -> tuple[ComponentResult | None, list[Diagnostic]]:
    """Look up `ref.kind` in the registry and validate the remaining keys with its Config."""
    component = registry.get(role, ref.kind)
    if component is None:
        line, col = doc.value_pos(prefix + ("kind",))
        shown = doc.get(prefix + ("kind",), ref.kind)  # the raw text: never a resolved secret
        hint = did_you_mean(ref.kind, registry.names(role))
        return None, [Diagnostic(display, line, col, f"unknown {role} kind '{shown}'{hint}")]
    config, diags = validate(component.config, ref.options, doc, display, prefix, secrets)
    if config is None:
        return None, diags
    # Problems between fields (a rule naming an undeclared model), each at its own position.
    cross = getattr(config, "cross_check", None)
    problems = cross() if cross is not None else []
    if problems:
        return None, [Diagnostic(display, *doc.value_pos(prefix + path), message) for path, message in problems]
    return ComponentResult(ref.kind, component, config), []


def check_channel_names(channels: list[tuple[ChannelConfig, YamlDoc, str]]) -> list[Diagnostic]:
    """Channel names are unique across files; destination names unique within a channel."""
    out: list[Diagnostic] = []
    first: dict[str, str] = {}
    for config, doc, display in channels:
        line, col = doc.value_pos(("name",))
        where = f"{display}:{line}:{col}"
        if config.name in first:
            msg = f"duplicate channel name '{doc.get(('name',))}' (first defined at {first[config.name]})"
            out.append(Diagnostic(display, line, col, msg))
        else:
            first[config.name] = where
        seen: dict[str, str] = {}
        for i, dest in enumerate(config.destinations):
            line, col = doc.value_pos(("destinations", i, "name"))
            if dest.name in seen:
                shown = doc.get(("destinations", i, "name"))
                msg = f"duplicate destination name '{shown}' (first defined at {seen[dest.name]})"
                out.append(Diagnostic(display, line, col, msg))
            else:
                seen[dest.name] = f"{display}:{line}:{col}"
    return out


def _clash(a: Listener, b: Listener) -> bool:
    return a.port == b.port and (a.host == b.host or a.host in WILDCARD_HOSTS or b.host in WILDCARD_HOSTS)


def check_ports(listeners: list[Listener]) -> list[Diagnostic]:
    """Two listeners on one port (same host, or either on a wildcard address) cannot both bind."""
    out: list[Diagnostic] = []
    for i, later in enumerate(listeners):
        earlier = next((e for e in listeners[:i] if _clash(e, later)), None)
        if earlier is not None:
            msg = f"port {later.port} is already used by {earlier.where}"
            out.append(Diagnostic(later.diag_path, later.line, later.col, msg))
    return out


def listener_of(config: BaseModel, doc: YamlDoc, display: str, prefix: PathT) -> Listener | None:
    """A validated source config with an int `port` listens; no `host` field means every interface."""
    port = getattr(config, "port", None)
    if not isinstance(port, int) or isinstance(port, bool):
        return None
    host = getattr(config, "host", None)
    line, col = doc.value_pos(prefix + ("port",))
    return Listener(str(host) if host is not None else "0.0.0.0", port, f"{display}:{line}:{col}", display, line, col)


def check_tables(mapping: MappingFile, doc: YamlDoc, display: str) -> list[Diagnostic]:
    """Every `map:` names a table defined in the same file."""
    out: list[Diagnostic] = []
    for name, rule in mapping.fields.items():
        if rule.map is not None and rule.map not in mapping.tables:
            line, col = doc.value_pos(("fields", name, "map"))
            msg = f"unknown table '{rule.map}'" + did_you_mean(rule.map, mapping.tables)
            out.append(Diagnostic(display, line, col, msg))
    return out
