"""`${NAME}` references in engine and channel files, resolved from the environment.

Secrets never live in files (Mirth kept connector passwords in clear); a file names the
variable and the value arrives at load time. Nothing here ever puts a resolved value into a
diagnostic: messages name the variable only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from engine.config.yamlpos import Diagnostic, PathT, YamlDoc

# `${NAME}` is a reference; `$${` is an escaped literal `${`.
_REF = re.compile(r"\$\$\{|\$\{([A-Z_][A-Z0-9_]*)\}")


def references(text: str) -> list[str]:
    """The variable names a string refers to, in order."""
    return [m.group(1) for m in _REF.finditer(text) if m.group(1)]


class Resolved(NamedTuple):
    data: Any  # the document's data with every set `${NAME}` replaced
    secret_paths: frozenset[PathT]  # values that contain a resolved secret: never quote them
    unset_paths: frozenset[PathT]  # values naming an unset variable: already reported
    diagnostics: list[Diagnostic]


def resolve_secrets(doc: YamlDoc, display: str, env: Mapping[str, str]) -> Resolved:
    """Resolve `${NAME}` in every string value of `doc` (keys are never resolved). The document
    itself is left untouched so callers can still echo its raw text."""
    secret_paths: set[PathT] = set()
    unset_paths: set[PathT] = set()
    diagnostics: list[Diagnostic] = []

    def report(path: PathT, message: str) -> None:
        line, col = doc.value_pos(path)
        diagnostics.append(Diagnostic(display, line, col, message))

    def substitute(text: str, path: PathT) -> str:
        missing: list[str] = []

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "${"
            value = env.get(name)
            if value is None:
                missing.append(name)
                return match.group(0)
            secret_paths.add(path)
            return value

        out = _REF.sub(one, text)
        for name in dict.fromkeys(missing):
            unset_paths.add(path)
            report(path, f"secret ${{{name}}} is not set")
        # A leftover `${` is a typo such as `${db_pass}`; say so rather than pass it on literally.
        if "${" in _REF.sub("", text):
            report(path, "malformed secret reference: write ${NAME} with NAME in A-Z, 0-9 and _")
        return out

    def walk(node: Any, path: PathT) -> Any:
        if isinstance(node, str):
            return substitute(node, path) if "${" in node else node
        if isinstance(node, list):
            return [walk(item, path + (i,)) for i, item in enumerate(node)]
        if isinstance(node, dict):
            return {key: walk(value, path + (key,)) for key, value in node.items()}
        return node

    data = walk(doc.data, ())
    return Resolved(data, frozenset(secret_paths), frozenset(unset_paths), diagnostics)
