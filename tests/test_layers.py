"""Imports run one way, from the edges to the core (DESIGN.md, "Layout"). Checked on the source."""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"

# package -> packages it must never import
NEVER = {
    "core": {"config", "hl7v2", "dicom", "fhir", "mapping", "connectors", "correlation", "inference", "deid",
             "security", "audit", "store", "runtime", "web", "cli"},
    "config": {"hl7v2", "dicom", "fhir", "mapping", "connectors", "correlation", "inference", "deid", "security",
               "audit", "store", "runtime", "web", "cli"},
    "security": {"store", "audit", "connectors", "runtime", "web", "cli", "mapping"},
    "store": {"audit", "connectors", "runtime", "web", "cli", "mapping"},
    "audit": {"connectors", "runtime", "web", "cli", "mapping"},
    "hl7v2": {"connectors", "runtime", "web", "cli", "store", "audit", "mapping"},
    "mapping": {"connectors", "runtime", "web", "cli"},
    "connectors": {"runtime", "web", "cli"},
    "runtime": {"web", "cli"},  # web is built on the runtime; the CLI hands `run` the web app
    "web": {"cli"},
    "dicom": {"connectors", "runtime", "web", "cli", "mapping", "correlation", "inference", "deid", "outputs"},
    "fhir": {"connectors", "runtime", "web", "cli", "mapping", "correlation", "inference", "deid", "outputs"},
    "deid": {"connectors", "runtime", "web", "cli", "store", "correlation", "inference", "outputs"},
    "correlation": {"connectors", "runtime", "web", "cli", "inference", "outputs"},
    "inference": {"connectors", "runtime", "web", "cli", "outputs"},
    "outputs": {"connectors", "runtime", "web", "cli"},
    "compliance": {"web", "cli"},
}  # fmt: skip


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("engine.")}
    return found


def test_imports_follow_the_layers() -> None:
    problems = []
    for path in sorted(ENGINE.rglob("*.py")):
        package = path.relative_to(ENGINE).parts[0].removesuffix(".py")
        for module in _imports(path):
            target = module.split(".")[1]
            if target in NEVER.get(package, set()):
                problems.append(f"{path.relative_to(ENGINE.parent)} imports {module}")
            if package == "connectors" and target == "connectors":
                own = path.relative_to(ENGINE).parts[1].removesuffix(".py")
                other = module.split(".")[2] if len(module.split(".")) > 2 else ""
                if other and other != own:
                    problems.append(f"{path.relative_to(ENGINE.parent)} imports another connector {module}")
    assert problems == []
