"""Print the HTML report to PDF with headless Chromium (Debian's `chromium` package), which renders the
same page a browser shows; no PDF library is needed in the engine's environment.

The browser is $RADBRIDGE_CHROMIUM when set, else /usr/bin/chromium, else `chromium`,
`chromium-browser` or `google-chrome` on PATH. It runs with a throwaway profile folder, and the page
it prints (no patient data: the report holds none) sits in a temporary folder removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from engine.core.errors import PermanentError

DEBIAN_CHROMIUM = "/usr/bin/chromium"
TIMEOUT_S = 60.0


class PdfError(PermanentError):
    """The PDF could not be made: no browser, or it failed (the message says which)."""


def find_browser() -> str | None:
    configured = os.environ.get("RADBRIDGE_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return DEBIAN_CHROMIUM
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> str:
    browser = find_browser()
    if browser is None:
        where = os.environ.get("RADBRIDGE_CHROMIUM") or DEBIAN_CHROMIUM
        raise PdfError(f"--pdf needs headless Chromium, not found at {where} or on PATH "
                       "(Debian: apt-get install chromium; or set RADBRIDGE_CHROMIUM)")  # fmt: skip
    return browser


def html_to_pdf(page: str, out: Path, *, browser: str | None = None, timeout_s: float = TIMEOUT_S) -> None:
    """Write `page` (HTML) to `out` as PDF (mode 0600)."""
    browser = browser or require_browser()
    out = Path(out).resolve()
    out.unlink(missing_ok=True)  # so a PDF found afterwards is the one this run printed
    with tempfile.TemporaryDirectory(prefix="radbridge-pdf-") as tmp:
        source = Path(tmp) / "report.html"
        source.write_text(page, encoding="utf-8")
        # No background networking: the report is a local file, and a closed network refuses those calls.
        argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={Path(tmp) / 'profile'}", f"--print-to-pdf={out}", source.as_uri()]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise PdfError(f"{browser} did not print the PDF within {timeout_s:.0f} s") from None
        except OSError as exc:
            raise PdfError(f"{browser} could not be started ({type(exc).__name__})") from None
    if not out.is_file() or not out.read_bytes().startswith(b"%PDF"):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise PdfError(f"{browser} exited {done.returncode} without writing a PDF: {last}")
    os.chmod(out, 0o600)
