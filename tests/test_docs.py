"""The CLI examples in docs/ run as written (on a fresh project) and succeed."""

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from engine.cli import app
from tests.conftest import write_project

DOCS = Path(__file__).resolve().parents[1] / "docs"
CLI_BLOCK = re.compile(r"<!-- example: cli -->\s*```sh\n(.*?)```", re.DOTALL)


def cli_examples(doc: str) -> list[list[str]]:
    commands = []
    for block in CLI_BLOCK.findall((DOCS / doc).read_text()):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("radbridge "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_security_doc_commands_run(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p")
    commands = cli_examples("security.md")
    assert [c[:2] for c in commands] == [
        ["keys", "init"],
        ["keys", "status"],
        ["audit", "verify"],
        ["audit", "tail"],
        ["audit", "export"],
        ["audit", "export"],
    ]
    for args in commands:
        result = CliRunner().invoke(app, [*args, "--root", str(root)])
        assert result.exit_code == 0, (args, result.output)


CHANNEL_BLOCK = re.compile(r"<!-- example: channel -->\s*```yaml\n(.*?)```", re.DOTALL)


def test_channel_doc_examples_lint_clean(tmp_path: Path) -> None:
    import shutil

    from engine.runtime.lint import lint_all

    examples = CHANNEL_BLOCK.findall((DOCS / "channels.md").read_text())
    assert len(examples) == 3
    for n, text in enumerate(examples):
        root = write_project(tmp_path / f"p{n}")
        shutil.copytree(DOCS.parent / "mappings", root / "mappings", dirs_exist_ok=True)
        (root / "channels" / "example.yaml").write_text(text)
        assert [str(d) for d in lint_all([], root)] == [], text


def test_dicom_doc_examples_lint_clean_and_commands_run(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from engine.runtime.lint import lint_all

    monkeypatch.setenv("PACS_WEBHOOK_TOKEN", "a-long-enough-test-token")
    monkeypatch.setenv("ORTHANC_PASSWORD", "test-password")
    examples = CHANNEL_BLOCK.findall((DOCS / "dicom.md").read_text())
    assert len(examples) == 4
    for n, text in enumerate(examples):
        root = write_project(tmp_path / f"p{n}")
        (root / "channels" / "example.yaml").write_text(text)
        assert [str(d) for d in lint_all([], root)] == [], text
    from engine.security import keyring

    root = write_project(tmp_path / "cli")
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    commands = cli_examples("dicom.md")
    assert [c[:2] for c in commands] == [["studies", "list"], ["studies", "list"]]
    for args in commands:
        result = CliRunner().invoke(app, [*args, "--root", str(root)])
        assert result.exit_code == 0, (args, result.output)


def test_inference_doc_example_lints_clean_and_commands_run(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from engine.runtime.lint import lint_all
    from engine.security import keyring

    monkeypatch.setenv("CXR_CLIENT_SECRET", "a-test-client-secret")
    [example] = CHANNEL_BLOCK.findall((DOCS / "inference.md").read_text())
    root = write_project(tmp_path / "p")
    (root / "channels" / "example.yaml").write_text(example)
    assert [str(d) for d in lint_all([], root)] == [], example
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    commands = cli_examples("inference.md")
    assert [c[:2] for c in commands] == [["jobs", "list"], ["models", "list"]]
    outputs = []
    for args in commands:
        result = CliRunner().invoke(app, [*args, "--root", str(root)])
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
    assert "head-ct-hyperdensity 1.0.0 active" in outputs[1] and "chest-xray-triage 2024.3 shadow" in outputs[1]


def test_outputs_doc_examples_lint_clean(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from engine.runtime.lint import lint_all

    monkeypatch.setenv("FHIR_CLIENT_SECRET", "a-test-client-secret")
    examples = CHANNEL_BLOCK.findall((DOCS / "outputs.md").read_text())
    assert examples
    for n, text in enumerate(examples):
        root = write_project(tmp_path / f"p{n}")
        shutil.copytree(DOCS.parent / "mappings", root / "mappings", dirs_exist_ok=True)
        (root / "channels" / "example.yaml").write_text(text)
        assert [str(d) for d in lint_all([], root)] == [], text
