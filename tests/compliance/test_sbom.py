"""The SBOM is CycloneDX 1.5 JSON in the shape the specification requires, and lists what is installed."""

from __future__ import annotations

import json
import re
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

from engine.compliance import sbom

# CycloneDX 1.5 JSON schema (bom-1.5.schema.json): the required fields and enumerations checked here.
COMPONENT_TYPES = {"application", "framework", "library", "container", "platform", "operating-system", "device",
                   "device-driver", "firmware", "file", "machine-learning-model", "data"}  # fmt: skip
SERIAL = re.compile(r"^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PURL = re.compile(r"^pkg:pypi/[a-z0-9-]+@[A-Za-z0-9.\-_~%]+$")


def _check_component(c: dict) -> None:  # type: ignore[type-arg]
    assert c["type"] in COMPONENT_TYPES and isinstance(c["name"], str) and c["name"]
    assert isinstance(c["version"], str) and c["version"]
    assert PURL.match(c["purl"]), c["purl"]
    for choice in c.get("licenses", []):
        assert len(choice) == 1 and set(choice) <= {"license", "expression"}
        if "license" in choice:
            assert len(set(choice["license"]) & {"id", "name"}) == 1
    if any("expression" in choice for choice in c.get("licenses", [])):
        assert len(c["licenses"]) == 1  # an expression stands alone


def test_bom_has_the_required_cyclonedx_shape(tmp_path: Path) -> None:
    bom = sbom.build()
    path = tmp_path / "sbom.json"
    sbom.write(bom, path)
    doc = json.loads(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    assert isinstance(doc["version"], int) and doc["version"] >= 1
    assert SERIAL.match(doc["serialNumber"])
    datetime.fromisoformat(doc["metadata"]["timestamp"])
    assert doc["metadata"]["component"]["name"] == "radbridge"
    for tool in doc["metadata"]["tools"]["components"]:
        assert tool["type"] in COMPONENT_TYPES and tool["name"]
    _check_component(doc["metadata"]["component"])
    refs = [c["bom-ref"] for c in doc["components"]]
    assert len(refs) == len(set(refs)) and doc["metadata"]["component"]["bom-ref"] not in refs
    for component in doc["components"]:
        _check_component(component)


def test_bom_lists_the_installed_packages_with_purls() -> None:
    by_name = {c["name"].lower(): c for c in sbom.build()["components"]}
    pydicom = by_name["pydicom"]
    assert pydicom["version"] == version("pydicom")
    assert pydicom["purl"] == f"pkg:pypi/pydicom@{version('pydicom')}"
    assert by_name["pydantic"]["purl"].startswith("pkg:pypi/pydantic@")
    assert "radbridge" not in by_name  # the engine is the BOM's own component, not one of its parts
    assert [c["name"].lower() for c in sbom.build()["components"]] == sorted(by_name, key=sbom.normalize)


def test_purl_normalises_names_and_encodes_versions() -> None:
    assert sbom.purl("Foo_Bar.baz", "1.0+local") == "pkg:pypi/foo-bar-baz@1.0%2Blocal"
    assert sbom.normalize("typing_extensions") == "typing-extensions"
