from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.config import ConfigInvalid, EngineConfig, MappingFile, classify, lint, load_project
from engine.core.errors import ConfigError

Write = Callable[[str, str], Path]  # the `write` fixture from conftest.py

REPO = Path(__file__).resolve().parents[2]
ENV = {"SINK_TOKEN": "a-long-enough-secret-token"}

CHANNEL = """
    name: orders
    description: ORM from the RIS
    source:
      kind: test-listen
      port: 2575
    filter: {kind: test-filter, expression: "MSH-9.1 == 'ORM'"}
    mapping: mappings/orm.yaml
    destinations:
      - name: ris
        kind: test-sink
        host: ris.example
        port: 2576
        token: ${SINK_TOKEN}
"""
MAPPING = """
    from: hl7v2
    to: order
    fields:
      accession: {from: [OBR-18, ORC-3.1], required: true}
      priority: {from: ORC-7.6, map: prio, default: routine}
    tables:
      prio: {S: stat, R: routine}
"""


@pytest.fixture
def project(tmp_path: Path, write: Write) -> Path:
    write("config/engine.yaml", "listeners:\n  - {name: api, port: 9000}\n")
    write("channels/orders.yaml", CHANNEL)
    write("mappings/orm.yaml", MAPPING)
    return tmp_path


def test_load_project(project: Path) -> None:
    loaded = load_project(project, env=ENV)
    assert loaded.root == project
    assert loaded.engine.listeners[0].port == 9000
    assert list(loaded.mappings) == ["mappings/orm.yaml"]
    (channel,) = loaded.channels
    assert channel.path == "channels/orders.yaml"
    assert channel.config.name == "orders"
    assert channel.source_kind == "test-listen" and channel.source.port == 2575  # type: ignore[attr-defined]
    assert channel.filter_kind == "test-filter"
    (dest,) = channel.destinations
    assert (dest.name, dest.kind) == ("ris", "test-sink")
    assert dest.config.token == ENV["SINK_TOKEN"]  # type: ignore[attr-defined]
    assert isinstance(channel.mapping, MappingFile)
    assert channel.mapping is loaded.mappings["mappings/orm.yaml"]
    assert channel.mapping.fields["accession"].from_ == ["OBR-18", "ORC-3.1"]
    assert sorted(loaded.files) == ["channels/orders.yaml", "config/engine.yaml", "mappings/orm.yaml"]
    assert "${SINK_TOKEN}" in loaded.files["channels/orders.yaml"]  # raw, unresolved
    assert ENV["SINK_TOKEN"] not in "".join(loaded.files.values())
    assert len(loaded.hash) == 64


def test_config_hash_is_stable_and_tracks_every_file(project: Path, write: Write) -> None:
    first = load_project(project, env=ENV).hash
    assert load_project(project, env={"SINK_TOKEN": "another-long-secret-token"}).hash == first
    write("mappings/orm.yaml", MAPPING + "# a comment is a change\n")
    second = load_project(project, env=ENV).hash
    assert second != first
    write("mappings/other.yaml", MAPPING)
    assert load_project(project, env=ENV).hash not in (first, second)
    (project / "mappings/other.yaml").unlink()
    assert load_project(project, env=ENV).hash == second


def test_errors_raise_config_error_with_diagnostics_and_no_secret(project: Path, write: Write) -> None:
    secret = "s3cr3t-VALUE"
    write("channels/orders.yaml", CHANNEL.replace("port: 2576", "port: ${SINK_PORT}"))
    with pytest.raises(ConfigError) as caught:
        load_project(project, env={"SINK_TOKEN": secret, "SINK_PORT": secret})
    err = caught.value
    assert isinstance(err, ConfigInvalid)
    assert [str(d) for d in err.diagnostics] == [
        "channels/orders.yaml:12:11: 'port' must be an integer",
        "channels/orders.yaml:13:12: 'token' is invalid",
    ]
    assert str(err) == "\n".join(str(d) for d in err.diagnostics)
    assert secret not in str(err) and secret not in repr(err.diagnostics)


def test_missing_engine_file_means_defaults(tmp_path: Path, write: Write) -> None:
    write("channels/a.yaml", "name: a\nsource: {kind: test-poll, host: h, port: 1}\n")
    loaded = load_project(tmp_path, env={})
    assert loaded.engine.model_dump(exclude={"node"}) == EngineConfig().model_dump(exclude={"node"})
    assert list(loaded.files) == ["channels/a.yaml"]
    assert loaded.channels[0].mapping is None and loaded.channels[0].filter is None


def test_empty_project_loads(tmp_path: Path) -> None:
    loaded = load_project(tmp_path, env={})
    assert loaded.channels == [] and loaded.mappings == {} and loaded.files == {}


def test_engine_file_chooses_channel_globs_and_mapping_folder(tmp_path: Path, write: Write) -> None:
    write("config/engine.yaml", "channels: [feeds/**/*.yaml]\nmappings: maps\n")
    write(
        "feeds/ris/a.yaml", "name: a\nsource: {kind: test-poll, host: h, port: 1}\nmapping: shared/m.yaml\n"
    )
    write("channels/ignored.yaml", "not a channel")
    write("maps/x.yaml", MAPPING)
    write("shared/m.yaml", MAPPING)  # referenced from outside the mappings folder: loaded too
    loaded = load_project(tmp_path, env={})
    assert [c.path for c in loaded.channels] == ["feeds/ris/a.yaml"]
    assert sorted(loaded.mappings) == ["maps/x.yaml", "shared/m.yaml"]
    assert loaded.channels[0].mapping is loaded.mappings["shared/m.yaml"]


def test_lint_defaults_to_the_project_in_cwd(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    monkeypatch.delenv("SINK_TOKEN", raising=False)
    assert [str(d) for d in lint()] == ["channels/orders.yaml:13:12: secret ${SINK_TOKEN} is not set"]
    monkeypatch.setenv("SINK_TOKEN", ENV["SINK_TOKEN"])
    assert lint() == []


def test_lint_reports_paths_relative_to_cwd_outside_root(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "channels")
    diags = lint([project / "channels"], root=project / "mappings", env={})
    assert [str(d) for d in diags] == [
        "orders.yaml:7:10: mapping file 'mappings/orm.yaml' not found",  # relative to root
        "orders.yaml:13:12: secret ${SINK_TOKEN} is not set",
    ]


def test_classify(tmp_path: Path, write: Write) -> None:
    assert classify(write("config/engine.yaml", ""), tmp_path) == "engine"
    assert classify(write("x/engine.yaml", ""), tmp_path) == "engine"
    assert classify(write("config/other.yaml", ""), tmp_path) == "engine"
    assert classify(write("mappings/a.yaml", ""), tmp_path) == "mapping"
    assert classify(write("elsewhere/m.yaml", "from: hl7v2\nfields: {}\n"), tmp_path) == "mapping"
    assert classify(write("channels/c.yaml", "name: c\n"), tmp_path) == "channel"


def test_embedded_engine_yaml_is_clean_and_matches_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "engine.yaml", tmp_path / "config" / "engine.yaml")
    assert lint(root=tmp_path, env={}) == []
    loaded = load_project(tmp_path, env={})
    assert "${" not in loaded.files["config/engine.yaml"]
    assert loaded.engine.model_dump(exclude={"node"}) == EngineConfig().model_dump(exclude={"node"})
