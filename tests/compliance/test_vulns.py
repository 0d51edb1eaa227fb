"""The vulnerability scan runs pip-audit when it is on PATH (a stand-in script here: the real one is not
installed and needs the network), and is never a pass without it."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from engine.compliance import build, vulns
from engine.runtime.context import open_context
from tests.compliance.conftest import items

CLEAN = {"dependencies": [{"name": "pydicom", "version": "3.0.1", "vulns": []},
                          {"name": "httpx", "version": "0.28.1", "vulns": []}], "fixes": []}  # fmt: skip
VULNERABLE = {"dependencies": [
    {"name": "pydicom", "version": "3.0.1", "vulns": []},
    {"name": "jinja2", "version": "3.1.2", "vulns": [{"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"]},
                                                   {"id": "PYSEC-2024-9", "fix_versions": ["3.1.4"]}]},
]}  # fmt: skip


def _fake_pip_audit(folder: Path, body: str) -> Path:
    """A `pip-audit` that records its arguments and the requirements it was given, then runs `body`."""
    folder.mkdir(exist_ok=True)
    script = folder / "pip-audit"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, pathlib, time\n"
        "args = sys.argv[1:]\n"
        f"pathlib.Path({str(folder / 'args.json')!r}).write_text(json.dumps(args))\n"
        f"pathlib.Path({str(folder / 'reqs.txt')!r}).write_text(pathlib.Path(args[args.index('-r') + 1]).read_text())\n"
        f"{body}\n"
    )
    script.chmod(0o755)
    return folder


def test_not_installed_is_attention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(vulns.importlib.util, "find_spec", lambda name: None)
    result = vulns.scan()
    assert (result.ran, result.problem) == (False, "pip-audit not installed (pip install pip-audit)")


def test_clean_scan_passes_and_is_given_the_installed_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fake_pip_audit(tmp_path / "bin", f"print(json.dumps({CLEAN!r}))")
    monkeypatch.setenv("PATH", str(folder))
    result = vulns.scan(timeout_s=30)
    assert result.ran and result.packages == 2 and result.vulnerable == {}
    args = json.loads((folder / "args.json").read_text())
    assert args[args.index("-r") + 2 :] == ["--no-deps", "--disable-pip", "--format", "json", "--progress-spinner",
                                             "off"]  # fmt: skip
    pins = (folder / "reqs.txt").read_text().splitlines()
    assert f"pydicom=={version('pydicom')}" in pins
    assert not any(p.lower().startswith("radbridge==") for p in pins)


def test_vulnerabilities_fail_with_their_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fake_pip_audit(tmp_path / "bin", f"print(json.dumps({VULNERABLE!r})); sys.exit(1)")
    monkeypatch.setenv("PATH", str(folder))
    result = vulns.scan(timeout_s=30)
    assert result.vulnerable == {"jinja2 3.1.2": ["GHSA-h5c8-rqwp-cp95", "PYSEC-2024-9"]}


@pytest.mark.parametrize(
    ("body", "problem"),
    [("time.sleep(5)", "pip-audit did not finish within 1 s"),
     ("print('Traceback: no network', file=sys.stderr); sys.exit(1)",
      "pip-audit exit 1, output unreadable: Traceback: no network")],
)  # fmt: skip
def test_timeouts_and_unreadable_output_are_attention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, problem: str
) -> None:
    folder = _fake_pip_audit(tmp_path / "bin", body)
    monkeypatch.setenv("PATH", str(folder))
    result = vulns.scan(timeout_s=1)
    assert not result.ran and result.problem == problem


def test_item_statuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_file: Path) -> None:
    folder = _fake_pip_audit(tmp_path / "bin", f"print(json.dumps({VULNERABLE!r})); sys.exit(1)")
    monkeypatch.setenv("PATH", str(folder))
    ctx = open_context(fresh_file)
    try:
        skipped = items(ctx)["vulnerability-scan"]
        item = next(i for i in build(ctx, vuln_scan=True).items if i.id == "vulnerability-scan")
    finally:
        ctx.close()
    assert (skipped.status, skipped.why) == ("attention", "not run (--no-vuln-scan)")
    assert item.status == "fail"
    assert item.why == "2 known vulnerabilities in jinja2 3.1.2: upgrade"
