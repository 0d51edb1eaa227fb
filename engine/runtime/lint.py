"""`radbridge lint`: the config linter, plus what only the layers above config can check —
mapping paths, functions and record fields (engine.mapping), and HL7 sample files against their
message structure (hl7apy). Starts nothing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from engine.config import Diagnostic, classify, lint, load_project
from engine.core.errors import ConfigError
from engine.hl7v2.validate import validate_structure
from engine.mapping import lint_mapping_file


def _files(paths: Sequence[Path], suffix: str) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob(f"*{suffix}") if not any(part.startswith(".") for part in p.parts))
        elif path.suffix == suffix:
            found.append(path)
    return found


def _display(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def lint_all(paths: Sequence[Path], root: Path) -> list[Diagnostic]:
    root = root.resolve()
    paths = [p.resolve() for p in paths]
    diagnostics = set(lint([p for p in paths if p.suffix != ".hl7"], root=root))
    if paths:
        mappings = [p for p in _files(paths, ".yaml") if classify(p, root) == "mapping"]
    else:
        try:
            project = load_project(root)
        except ConfigError:
            project = None  # its problems are already among the diagnostics
        folder = root / (project.engine.mappings if project else "mappings")
        mappings = _files([folder], ".yaml") if folder.is_dir() else []
        if project:
            mappings += [root / c.config.mapping for c in project.channels if c.config.mapping]
    for mapping in dict.fromkeys(mappings):
        if mapping.is_file():
            diagnostics.update(lint_mapping_file(mapping, root))
    for sample in _files(paths, ".hl7"):
        problem = validate_structure(sample.read_text(encoding="utf-8", errors="replace"))
        if problem:
            diagnostics.add(Diagnostic(_display(sample, root), 1, 1, problem))
    return sorted(diagnostics)
