"""The CLI examples in docs/compliance.md run as written on a fresh project, and the item tables name
exactly the items the report produces."""

from __future__ import annotations

import os
import re
from pathlib import Path

from typer.testing import CliRunner

from engine.cli import app
from engine.compliance import build
from engine.runtime.context import open_context
from tests.test_docs import DOCS, cli_examples


def test_compliance_doc_commands_run(fresh_file: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # the example writes its files into the working folder
    commands = cli_examples("compliance.md")
    assert [c[:2] for c in commands] == [
        ["compliance", "attest"],
        ["compliance", "report"],
        ["disclosures", "MRN-TEST-0042"],
    ]
    outputs = []
    for args in commands:
        result = CliRunner().invoke(app, [*args, "--root", str(fresh_file)])
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
    assert "PASS      attestation-baa: attested 2026-01-15 by Pat Privacy (Privacy Officer)" in outputs[1]
    assert (tmp_path / "compliance.html").is_file() and (tmp_path / "sbom.cdx.json").is_file()
    assert outputs[2] == "0 disclosure(s) recorded for this patient\n"
    assert os.stat(tmp_path / "compliance.html").st_mode & 0o777 == 0o600


def test_doc_tables_list_every_item(fresh_file: Path) -> None:
    documented = set(re.findall(r"^\| `([a-z0-9-]+)`", (DOCS / "compliance.md").read_text(), re.MULTILINE))
    ctx = open_context(fresh_file)
    try:
        produced = {i.id for i in build(ctx, vuln_scan=False).items}
    finally:
        ctx.close()
    assert documented == produced
