"""Helpers for the mapping tests: compile YAML text, read samples, lint files in tmp_path."""

from __future__ import annotations

import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

from engine.hl7v2 import Message
from engine.mapping import CompiledMapping, check_mapping_text, lint_mapping_file

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "hl7"
MAPPINGS = ROOT / "mappings"
TZ = ZoneInfo("Europe/Berlin")


def compile_yaml(text: str, name: str = "mappings/test.yaml") -> CompiledMapping:
    compiled, diags = check_mapping_text(textwrap.dedent(text), name)
    assert diags == [], [str(d) for d in diags]
    assert compiled is not None
    return compiled


def lint_yaml(tmp_path: Path, text: str, name: str = "mappings/m.yaml") -> list[str]:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return [str(d) for d in lint_mapping_file(path, tmp_path)]


def sample(name: str) -> Message:
    return Message.parse((SAMPLES / name).read_bytes())


def sample_text(name: str) -> str:
    """The sample as text with its CR separators kept (read_text() would turn them into LF)."""
    return (SAMPLES / name).read_bytes().decode("utf-8")


def er7(*segments: str) -> Message:
    return Message.parse("\r".join(segments) + "\r")


def shipped(name: str) -> CompiledMapping:
    from engine.mapping import load_mapping

    return load_mapping(MAPPINGS / name, ROOT)
