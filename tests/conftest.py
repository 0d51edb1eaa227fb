"""Shared fixtures: a throwaway project folder with its own keyring, store and data folder."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.runtime.context import Context, open_context
from engine.security import keyring


def write_project(root: Path, engine_yaml: str = "") -> Path:
    """A project whose key file and data folder live under root (keys apart from data)."""
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "channels").mkdir(exist_ok=True)
    (root / "mappings").mkdir(exist_ok=True)
    body = engine_yaml or textwrap.dedent(
        """\
        node: {id: test-node}
        keys: {source: file, file: keys/keyring.json}
        listeners: [{name: api, kind: http, host: 127.0.0.1, port: 18480}]
        """
    )
    (root / "config" / "engine.yaml").write_text(body)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = write_project(tmp_path / "project")
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    return root


@pytest.fixture
def ctx(project: Path) -> Iterator[Context]:
    context = open_context(project)
    yield context
    context.close()
