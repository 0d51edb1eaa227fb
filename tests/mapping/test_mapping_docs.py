"""docs/mapping.md cannot drift: its mappings compile, its runs give the JSON shown, and every
function and record field is documented."""

from __future__ import annotations

import json
import re

import pytest

from engine.mapping import FUNCTIONS, MODELS, check_mapping_text
from tests.mapping.util import ROOT, TZ, sample

DOC = (ROOT / "docs" / "mapping.md").read_text(encoding="utf-8")
MAPPING = re.compile(r"<!-- example: mapping -->\s*```yaml\n(.*?)```", re.DOTALL)
RUN = re.compile(r"<!-- example: mapping-run (\S+) -->\s*```yaml\n(.*?)```.*?```json\n(.*?)```", re.DOTALL)


def test_the_doc_has_examples() -> None:
    assert len(MAPPING.findall(DOC)) >= 2
    assert len(RUN.findall(DOC)) >= 3


@pytest.mark.parametrize("index", range(len(MAPPING.findall(DOC))))
def test_mapping_examples_compile(index: int) -> None:
    _, diags = check_mapping_text(MAPPING.findall(DOC)[index], "docs/mapping.md")
    assert [str(d) for d in diags] == []


@pytest.mark.parametrize("index", range(len(RUN.findall(DOC))))
def test_run_examples_give_the_json_shown(index: int) -> None:
    name, text, expected = RUN.findall(DOC)[index]
    compiled, diags = check_mapping_text(text, "docs/mapping.md")
    assert [str(d) for d in diags] == [] and compiled is not None
    records = compiled.apply(sample(name), site_tz=TZ)
    assert [r.to_dict() for r in records] == json.loads(expected)


def test_every_function_and_record_field_is_documented() -> None:
    assert [name for name in FUNCTIONS if f"| `{name}` |" not in DOC] == []
    fields = [f"{kind}.{name}" for kind, model in MODELS.items() for name in model.model_fields]
    assert [f for f in fields if f"| `{f.split('.')[1]}` |" not in DOC] == []
