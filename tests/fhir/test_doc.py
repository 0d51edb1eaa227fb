"""The FHIR destination's documented channel example lints clean (docs/outputs.md
once merged there), and a misspelt key in it is reported with its position."""

from __future__ import annotations

import re
from pathlib import Path

from engine.runtime.lint import lint_all
from tests.conftest import write_project

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHANNEL_BLOCK = re.compile(r"<!-- example: channel -->\s*```yaml\n(.*?)```", re.DOTALL)


def fhir_example() -> str:
    for name in ("outputs.md",):
        path = DOCS / name
        found = [b for b in CHANNEL_BLOCK.findall(path.read_text()) if "kind: fhir" in b] if path.exists() else []
        if found:
            return found[0]
    raise AssertionError("no channel example with a fhir destination in docs/")


def test_fhir_channel_example_lints_clean(tmp_path: Path) -> None:
    example = fhir_example()
    root = write_project(tmp_path / "p")
    (root / "channels" / "example.yaml").write_text(example)
    assert [str(d) for d in lint_all([], root)] == []
    (root / "channels" / "example.yaml").write_text(example.replace("release:", "relase:"))
    assert [str(d) for d in lint_all([], root)] == [
        "channels/example.yaml:8:5: unknown key 'relase' (did you mean 'release'?)"
    ]
