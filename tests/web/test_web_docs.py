"""docs/web.md and docs/operations.md cannot drift: the API calls in docs/web.md run against a live
app with the token the doc describes, and every `# config/engine.yaml` example validates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from engine.config.schema import EngineConfig
from tests.web.conftest import Web

DOCS = Path(__file__).resolve().parents[2] / "docs"
API_BLOCK = re.compile(r"<!-- example: api -->\s*```http\n(.*?)```", re.DOTALL)
CALL = re.compile(r"^(GET|POST) (\S+)(?: (\{.*\}))?\s+-> (\d{3})$")


def test_the_api_examples_answer_as_documented(web: Web) -> None:
    [block] = API_BLOCK.findall((DOCS / "web.md").read_text())
    client = web.token("service", ["channels.view", "messages.view", "worklist.view"])
    calls = [CALL.match(line.strip()) for line in block.splitlines() if line.strip()]
    assert calls and all(calls), block
    for call in calls:
        method, path, body, status = call.groups()  # type: ignore[union-attr]
        response = client.request(method, path, json=json.loads(body) if body else None)
        assert response.status_code == int(status), (method, path, response.text[:200])


def test_engine_yaml_examples_in_operations_validate() -> None:
    blocks = re.findall(r"```yaml\n(# config/engine.yaml\n.*?)```", (DOCS / "operations.md").read_text(), re.DOTALL)
    assert blocks
    for block in blocks:
        EngineConfig.model_validate(yaml.safe_load(block) or {})
