"""Shared fixtures: a throwaway project folder with its own keyring, store and data folder."""

from __future__ import annotations

import contextlib
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.runtime.context import Context, open_context
from engine.security import keyring


def write_project(root: Path, engine_yaml: str = "", store_url: str | None = None) -> Path:
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
    ) + (f"store: {{url: '{store_url}'}}\n" if store_url else "")
    (root / "config" / "engine.yaml").write_text(body)
    return root


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of its own on the local server, dropped afterwards; skips the test with
    the reason when no server answers."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL tests need a server at 127.0.0.1:5432 (user postgres): {exc}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each store test runs on SQLite (the default) and on the local PostgreSQL."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_postgres_database("radbridge_test") as url:
        yield url


@pytest.fixture
def project(tmp_path: Path, store_url: str | None) -> Path:
    root = write_project(tmp_path / "project", store_url=store_url)
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    return root


@pytest.fixture
def ctx(project: Path) -> Iterator[Context]:
    context = open_context(project)
    yield context
    context.close()
