"""Known vulnerabilities in the installed packages, by pip-audit when it is installed.

pip-audit is optional (not an engine dependency): without it the item says so and is never a pass.
It is given the exact installed versions (name==version for every distribution this process sees,
`--no-deps --disable-pip`), so a pip-audit installed elsewhere audits this environment, not its own.
It queries a vulnerability service over the network; a run that does not finish within the timeout
or that cannot be read is reported as not done.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

from engine.compliance.evidence import Evidence, Item

TIMEOUT_S = 120.0


@dataclass
class Scan:
    ran: bool
    tool: str | None = None
    problem: str | None = None  # why it did not run or could not be read
    packages: int = 0
    vulnerable: dict[str, list[str]] = field(default_factory=dict)  # "name version" -> vulnerability ids


def find_pip_audit() -> list[str] | None:
    found = shutil.which("pip-audit")
    if found:
        return [found]
    if importlib.util.find_spec("pip_audit") is not None:
        return [sys.executable, "-m", "pip_audit"]
    return None


def _pins() -> str:
    pins = {}
    for dist in distributions():
        name = dist.metadata.get("Name")
        if name and dist.version and name.lower() != "radbridge":  # the engine itself is not on PyPI
            pins.setdefault(name.lower(), f"{name}=={dist.version}")
    return "\n".join(pins[k] for k in sorted(pins)) + "\n"


def _read(stdout: str) -> dict[str, Any]:
    doc = json.loads(stdout)
    if isinstance(doc, list):  # pip-audit before 2.0 printed the dependency list alone
        doc = {"dependencies": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("dependencies"), list):
        raise ValueError("no dependency list")
    return doc


def scan(timeout_s: float = TIMEOUT_S) -> Scan:
    command = find_pip_audit()
    if command is None:
        return Scan(False, problem="pip-audit not installed (pip install pip-audit)")
    with tempfile.TemporaryDirectory(prefix="radbridge-audit-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(_pins())  # package names and versions only
        argv = [*command, "-r", str(requirements), "--no-deps", "--disable-pip", "--format", "json",
                "--progress-spinner", "off"]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return Scan(False, " ".join(command), f"pip-audit did not finish within {timeout_s:.0f} s")
        except OSError as exc:
            return Scan(False, " ".join(command), f"pip-audit could not be started ({type(exc).__name__})")
    try:
        doc = _read(done.stdout)
    except ValueError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return Scan(False, " ".join(command), f"pip-audit exit {done.returncode}, output unreadable: {last}")
    result = Scan(True, " ".join(command), packages=len(doc["dependencies"]))
    for dep in doc["dependencies"]:
        vulns = [str(v.get("id")) for v in dep.get("vulns") or [] if isinstance(v, dict)]
        if vulns:
            result.vulnerable[f"{dep.get('name')} {dep.get('version')}"] = vulns
    return result


def vulnerability_item(ev: Evidence) -> Item:
    title, cite = "Dependency vulnerability scan", "§164.308(a)(1)(ii)(B)"
    if not ev.vuln_scan:
        return Item("vulnerability-scan", "checklist", cite, title, "attention",
                    "not run (--no-vuln-scan)", {"tool": None})  # fmt: skip
    result = scan(ev.vuln_timeout_s)
    details = {"tool": result.tool, "packages_scanned": result.packages, "vulnerable": result.vulnerable}
    if not result.ran:
        return Item("vulnerability-scan", "checklist", cite, title, "attention", result.problem or "not run", details)
    if result.vulnerable:
        ids = sum(len(v) for v in result.vulnerable.values())
        names = ", ".join(sorted(result.vulnerable))
        return Item("vulnerability-scan", "checklist", cite, title, "fail",
                    f"{ids} known vulnerabilit{'y' if ids == 1 else 'ies'} in {names}: upgrade", details)  # fmt: skip
    return Item("vulnerability-scan", "checklist", cite, title, "pass",
                f"no known vulnerability in {result.packages} packages (pip-audit)", details)  # fmt: skip
