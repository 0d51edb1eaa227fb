"""PDF output through headless Chromium: the real browser when installed, a stand-in that checks the
command line otherwise, and a clear error without one."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.compliance import pdf
from tests.compliance.conftest import cli

PAGE = "<!DOCTYPE html><html><body><h1>radbridge compliance report</h1></body></html>"


def _fake_chromium(folder: Path) -> Path:
    """Records its arguments and the page it was given, then writes a minimal PDF where asked."""
    folder.mkdir(exist_ok=True)
    script = folder / "chromium"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, pathlib, urllib.parse\n"
        "args = sys.argv[1:]\n"
        "out = next(a for a in args if a.startswith('--print-to-pdf=')).split('=', 1)[1]\n"
        "page = pathlib.Path(urllib.parse.urlparse(args[-1]).path).read_text()\n"
        f"pathlib.Path({str(folder / 'call.json')!r}).write_text(json.dumps({{'args': args, 'page': page}}))\n"
        "pathlib.Path(out).write_bytes(b'%PDF-1.4 stand-in')\n"
    )
    script.chmod(0o755)
    return script


def test_html_to_pdf_runs_chromium_headless_and_cleans_up(tmp_path: Path) -> None:
    browser = _fake_chromium(tmp_path / "bin")
    out = tmp_path / "report.pdf"
    pdf.html_to_pdf(PAGE, out, browser=str(browser))
    assert out.read_bytes().startswith(b"%PDF") and out.stat().st_mode & 0o777 == 0o600
    call = json.loads((tmp_path / "bin" / "call.json").read_text())
    args = call["args"]
    assert args[:3] == ["--headless", "--no-sandbox", "--disable-gpu"]
    assert f"--print-to-pdf={out.resolve()}" in args and args[-1].startswith("file:///")
    assert call["page"] == PAGE
    assert not Path(args[-1][len("file://") :]).exists()  # the temporary page is gone


def test_a_browser_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    broken = tmp_path / "chromium"
    broken.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(pdf.PdfError, match="exited 3 without writing a PDF: cannot open display"):
        pdf.html_to_pdf(PAGE, tmp_path / "r.pdf", browser=str(broken))


def test_cli_pdf_without_a_browser_fails_clearly(fresh_dev: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("RADBRIDGE_CHROMIUM", str(tmp_path / "no-such-chromium"))
    result = CliRunner().invoke(app, ["compliance", "report", "--root", str(fresh_dev), "--pdf",
                                      str(tmp_path / "r.pdf"), "--no-vuln-scan"])  # fmt: skip
    assert result.exit_code == 1
    assert "--pdf needs headless Chromium, not found at" in result.output and "no-such-chromium" in result.output
    assert not (tmp_path / "r.pdf").exists()


def test_cli_pdf_with_the_stand_in_browser(fresh_dev: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADBRIDGE_CHROMIUM", str(_fake_chromium(tmp_path / "bin")))
    out = tmp_path / "r.pdf"
    result = cli("compliance", "report", "--root", str(fresh_dev), "--pdf", str(out), "--no-vuln-scan")
    assert f"pdf written to {out}" in result.output and out.read_bytes().startswith(b"%PDF")
    page = json.loads((tmp_path / "bin" / "call.json").read_text())["page"]
    assert 'id="encryption-at-rest"' in page and 'id="transmission-listeners"' in page


@pytest.mark.skipif(not os.access(pdf.DEBIAN_CHROMIUM, os.X_OK), reason="Debian's chromium is not installed at "
                    "/usr/bin/chromium (apt-get install chromium): the real PDF print is not exercised")  # fmt: skip
def test_real_chromium_prints_the_report(fresh_dev: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.pdf"
    cli("compliance", "report", "--root", str(fresh_dev), "--pdf", str(out), "--no-vuln-scan")
    data = out.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 1000
