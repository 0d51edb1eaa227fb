"""A software bill of materials of the installed environment, as CycloneDX 1.5 JSON.

Built here from importlib.metadata (name, version, licence, purl `pkg:pypi/<name>@<version>`) because
the cyclonedx-bom tool is not in the engine's dependency set, and the part of the format an inventory
needs is small: bomFormat, specVersion, serialNumber, version, metadata and a list of components.
What is listed is what this Python process can import, so the SBOM matches the running engine.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import datetime
from importlib.metadata import Distribution, distributions
from pathlib import Path
from typing import Any
from urllib.parse import quote

from engine import __version__
from engine.compliance.evidence import Evidence, Item
from engine.core.clock import iso, utcnow

SPEC_VERSION = "1.5"
SELF = "radbridge"


def normalize(name: str) -> str:
    """The PEP 503 form of a distribution name, which the pypi purl type uses."""
    return re.sub(r"[-_.]+", "-", name).lower()


def purl(name: str, version: str) -> str:
    return f"pkg:pypi/{quote(normalize(name), safe='-')}@{quote(version, safe='.-_~')}"


def _licenses(dist: Distribution) -> list[dict[str, Any]]:
    meta = dist.metadata
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return [{"expression": expression}]
    text = (meta.get("License") or "").strip()
    # The License field often holds the whole licence text; only a short single line is a name.
    if text and "\n" not in text and len(text) <= 100 and text.upper() != "UNKNOWN":
        return [{"license": {"name": text}}]
    classified = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License :: ")]
    return [{"license": {"name": name}} for name in dict.fromkeys(classified)]


def components() -> list[dict[str, Any]]:
    """One library component per installed distribution (first on sys.path wins), sorted by name."""
    seen: dict[str, dict[str, Any]] = {}
    for dist in distributions():
        name, version = dist.metadata.get("Name"), dist.version
        if not name or not version or normalize(name) in seen or normalize(name) == SELF:
            continue
        ref = purl(name, version)
        component: dict[str, Any] = {"type": "library", "bom-ref": ref, "name": name, "version": version, "purl": ref}
        licenses = _licenses(dist)
        if licenses:
            component["licenses"] = licenses
        seen[normalize(name)] = component
    return [seen[k] for k in sorted(seen)]


def build(now: datetime | None = None) -> dict[str, Any]:
    engine = {"type": "application", "bom-ref": purl(SELF, __version__), "name": SELF, "version": __version__,
              "purl": purl(SELF, __version__)}  # fmt: skip
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": iso(now or utcnow()),
            "tools": {
                "components": [{"type": "application", "name": f"{SELF} compliance report", "version": __version__}]
            },  # fmt: skip
            "component": engine,
        },
        "components": components(),
    }


def write(bom: dict[str, Any], path: Path) -> None:
    """Write the SBOM (mode 0600, like every file the engine writes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "w", encoding="utf-8") as out:
        json.dump(bom, out, indent=2)
        out.write("\n")


def sbom_item(ev: Evidence) -> Item:
    bom = build(ev.now)
    count = len(bom["components"])
    unlicensed = [c["name"] for c in bom["components"] if "licenses" not in c]
    details = {"format": f"CycloneDX {SPEC_VERSION} JSON", "components": count, "written_to": str(ev.sbom_path)
               if ev.sbom_path else None, "without_declared_licence": unlicensed}  # fmt: skip
    where = f"written to {ev.sbom_path}" if ev.sbom_path else "write it with --sbom FILE"
    return Item("sbom", "checklist", "§164.308(a)(1)(ii)(B)", "Software bill of materials", "pass",
                f"{count} installed components inventoried (CycloneDX {SPEC_VERSION}); {where}", details)  # fmt: skip
