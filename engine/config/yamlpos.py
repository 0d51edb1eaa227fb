"""YAML -> plain Python data plus the line/column of every key and value.

Diagnostics must point at the exact spot an analyst has to edit, so we compose the node graph
with PyYAML's safe loader and build the data ourselves from the nodes, recording start marks.
Only str/int/float/bool/null scalars, lists and string-keyed mappings come out: no dates, no
custom tags, no aliases (shared nodes would let a tiny file expand exponentially downstream).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

PathT = tuple[str | int, ...]
Pos = tuple[int, int]

_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem in one file; str() is the `path:line:col: message` form editors understand."""

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


@dataclass(frozen=True)
class YamlDoc:
    """Parsed document: `data` plus 1-based positions of keys and values by path tuple."""

    data: Any
    keys: dict[PathT, Pos] = field(default_factory=dict)
    values: dict[PathT, Pos] = field(default_factory=dict)

    def value_pos(self, path: PathT) -> Pos:
        """Where the value at `path` starts; falls back to the nearest ancestor that exists."""
        for end in range(len(path), -1, -1):
            pos = self.values.get(path[:end])
            if pos is not None:
                return pos
        return (1, 1)

    def key_pos(self, path: PathT) -> Pos:
        """Where the key of `path` starts (list items have no key: their value position)."""
        return self.keys.get(path) or self.value_pos(path)

    def get(self, path: PathT, default: Any = None) -> Any:
        """The raw value at `path`, or `default` when the path does not exist."""
        node = self.data
        for step in path:
            in_dict = isinstance(node, dict) and isinstance(step, str) and step in node
            in_list = isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
            if not (in_dict or in_list):
                return default
            node = node[step]
        return node


class _Loader(yaml.SafeLoader):
    """Safe loader without the timestamp resolver (dates stay strings) that records aliases."""

    yaml_implicit_resolvers: ClassVar[dict[Any, list[Any]]] = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_marks: list[yaml.Mark] = []

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        if self.check_event(AliasEvent):
            self.alias_marks.append(self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _pos(mark: yaml.Mark) -> Pos:
    return (mark.line + 1, mark.column + 1)


def _error_pos(exc: yaml.YAMLError, text: str) -> Pos:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return _pos(mark)
    offset = getattr(exc, "position", None)  # ReaderError carries a character offset only
    if isinstance(offset, int):
        before = text[:offset]
        return (before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1)
    return (1, 1)


class _Builder:
    def __init__(self, loader: _Loader, path: str) -> None:
        self.loader = loader
        self.path = path
        self.keys: dict[PathT, Pos] = {}
        self.values: dict[PathT, Pos] = {}
        self.diagnostics: list[Diagnostic] = []
        self.seen: set[int] = set()

    def report(self, mark: yaml.Mark, message: str) -> None:
        line, col = _pos(mark)
        self.diagnostics.append(Diagnostic(self.path, line, col, message))

    def build(self, node: Node, path: PathT) -> Any:
        self.values[path] = _pos(node.start_mark)
        if id(node) in self.seen:  # an alias: already reported, never expanded
            return None
        self.seen.add(id(node))
        if isinstance(node, ScalarNode):
            if node.tag not in _PLAIN_TAGS:
                self.report(node.start_mark, f"unsupported YAML tag '{node.tag}'")
                return None
            return self.loader.construct_object(node)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                self.report(node.start_mark, f"unsupported YAML tag '{node.tag}'")
                return None
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                self.report(node.start_mark, f"unsupported YAML tag '{node.tag}'")
                return None
            return self.build_mapping(node, path)
        return None  # pragma: no cover - the composer only makes the three node types

    def build_mapping(self, node: MappingNode, path: PathT) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.report(key_node.start_mark, "mapping keys must be plain strings")
                continue
            # Keys stay exactly as written: `1: x` and `ON: x` are table codes, not numbers/bools.
            key = key_node.value
            if key in out:
                self.report(key_node.start_mark, f"duplicate key '{key}'")
                continue
            self.keys[path + (key,)] = _pos(key_node.start_mark)
            out[key] = self.build(value_node, path + (key,))
        return out


def parse_yaml(text: str, path: str) -> tuple[YamlDoc | None, list[Diagnostic]]:
    """Parse one YAML document. Returns (None, [syntax error]) when it cannot be read at all;
    otherwise the document and any structural problems (duplicate keys, tags, aliases)."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # raised at once for control characters
        line, col = _error_pos(exc, text)
        return None, [Diagnostic(path, line, col, f"YAML syntax error: {exc.reason} (#x{exc.character:04x})")]
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        line, col = _error_pos(exc, text)
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        context = getattr(exc, "context", None)
        message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
        return None, [Diagnostic(path, line, col, message)]
    finally:
        loader.dispose()
    if root is None:
        return YamlDoc(None, {}, {(): (1, 1)}), []
    builder = _Builder(loader, path)
    for mark in loader.alias_marks:
        builder.report(mark, "YAML aliases (*name) are not supported; repeat the value")
    data = builder.build(root, ())
    return YamlDoc(data, builder.keys, builder.values), builder.diagnostics
