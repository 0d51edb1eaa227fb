"""Mapping files from disk: `lint_mapping_file` for `radbridge lint` and project loading,
`load_mapping` for the runtime. Both run the same checks: a file that lints clean loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.config.lint import validate
from engine.config.project import ConfigInvalid
from engine.config.schema import MappingFile
from engine.config.yamlpos import Diagnostic, parse_yaml
from engine.mapping.apply import CompiledMapping
from engine.mapping.compiler import compile_checked

__all__ = ["check_mapping_text", "lint_mapping_file", "load_mapping"]


def _display(path: Path, root: Path) -> str:
    full = Path(os.path.abspath(path))
    base = Path(os.path.abspath(root))
    return full.relative_to(base).as_posix() if full.is_relative_to(base) else full.as_posix()


def check_mapping_text(text: str, display: str) -> tuple[CompiledMapping | None, list[Diagnostic]]:
    """YAML text -> (compiled mapping or None, sorted diagnostics): syntax, schema, then compile."""
    doc, diags = parse_yaml(text, display)
    if doc is None:
        return None, diags
    mapping, schema_diags = validate(MappingFile, doc.data, doc, display)
    diags += schema_diags
    if mapping is None or diags:
        return None, sorted(set(diags))
    return compile_checked(mapping, path=display, positions=doc, text=text)


def _read(path: Path, display: str) -> tuple[str | None, list[Diagnostic]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [Diagnostic(display, 1, 1, f"cannot read file ({exc.strerror or type(exc).__name__})")]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        return None, [Diagnostic(display, 1, 1, "file is not valid UTF-8")]


def lint_mapping_file(path: Path, root: Path) -> list[Diagnostic]:
    """Every problem in one mapping file, as `path:line:col: message` diagnostics (path shown
    relative to `root` when inside it), sorted; [] when the file compiles."""
    display = _display(path, root)
    text, diags = _read(path, display)
    if text is None:
        return diags
    return check_mapping_text(text, display)[1]


def load_mapping(path: Path, root: Path) -> CompiledMapping:
    """Read and compile one mapping file; raises ConfigInvalid (a ConfigError) with the diagnostics."""
    display = _display(path, root)
    text, diags = _read(path, display)
    compiled = None
    if text is not None:
        compiled, diags = check_mapping_text(text, display)
    if compiled is None:
        raise ConfigInvalid(diags)
    return compiled
