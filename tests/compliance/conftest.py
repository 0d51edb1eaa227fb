"""Projects for the compliance tests: a fresh install (dev keyring as `radbridge run` makes it, or a file
keyring), and a configured one (TLS everywhere, a managed keyring, backups, retention, attestations)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.compliance import Item, build
from engine.core.clock import utcnow
from engine.runtime.context import Context, open_context
from engine.security import keyring
from tests.conftest import write_project
from tests.tlscerts import make_certs

runner = CliRunner()

CONFIGURED_ENGINE = """\
node: {id: test-node}
keys: {source: file, file: keys/keyring.json, allow_dev_key: false}
listeners:
  - name: api
    kind: http
    host: 0.0.0.0
    port: 18443
    tls: {cert: certs/server.crt, key: certs/server.key, min_version: "1.3"}
"""

CONFIGURED_CHANNEL = """\
name: ris-orders
source:
  kind: mllp
  host: 0.0.0.0
  port: 12575
  tls: {cert: certs/server.crt, key: certs/server.key, ca: certs/ca.crt}
destinations:
  - name: ris-results
    kind: mllp
    host: ris.example.test
    port: 2575
    tls: {ca: certs/ca.crt, cert: certs/client.crt, key: certs/client.key}
"""

ATTESTED = ("baa", "breach-notification", "risk-analysis", "staff-training", "iso27001", "restore-test", "key-escrow")


def cli(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result


def items(ctx: Context, now: datetime | None = None, **kw: Any) -> dict[str, Item]:
    return {i.id: i for i in build(ctx, now=now, vuln_scan=False, **kw).items}


def project_with(root: Path, engine_yaml: str = "", channels: dict[str, str] | None = None,
                 store_url: str | None = None) -> Path:  # fmt: skip
    if engine_yaml and store_url:
        engine_yaml += f"store: {{url: '{store_url}'}}\n"
    write_project(root, textwrap.dedent(engine_yaml), store_url=None if engine_yaml else store_url)
    for name, text in (channels or {}).items():
        (root / "channels" / f"{name}.yaml").write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def fresh_dev(tmp_path: Path) -> Path:
    """A fresh project on the development keyring, created the way `radbridge run` creates it."""
    root = write_project(tmp_path / "fresh")
    open_context(root, create_dev_key=True).close()
    return root


@pytest.fixture
def fresh_file(tmp_path: Path) -> Path:
    root = write_project(tmp_path / "fresh-file")
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    return root


@pytest.fixture
def configured(tmp_path: Path, store_url: str | None) -> Iterator[Path]:
    """TLS on the API and the MLLP channel (mutual), a managed keyring, a backup and a retention run
    through the real commands, every attestation, and a fresh signed checkpoint."""
    root = project_with(tmp_path / "configured", CONFIGURED_ENGINE, {"ris": CONFIGURED_CHANNEL}, store_url)
    make_certs(root / "certs")
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    cli("backup", str(tmp_path / "backup"), "--root", str(root))
    cli("purge", "--root", str(root))
    os.environ["CONFIGURED_ADMIN_PASSWORD"] = "correct horse battery staple 42"
    cli("users", "add", "ciso-admin", "--role", "admin", "--password-env", "CONFIGURED_ADMIN_PASSWORD",
        "--root", str(root))  # fmt: skip
    cli("users", "totp-enroll", "ciso-admin", "--root", str(root))
    for item in ATTESTED:
        cli("compliance", "attest", item, "--date", utcnow().date().isoformat(), "--by", "Pat Privacy (CISO)",
            "--evidence", f"DMS-2026-{item}", "--root", str(root))  # fmt: skip
    ctx = open_context(root)
    try:
        assert ctx.checkpoint() is not None
    finally:
        ctx.close()
    yield root
