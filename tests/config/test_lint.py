"""Every diagnostic kind, asserted as the exact `path:line:col: message` string."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.config import lint

Write = Callable[[str, str], Path]  # the `write` fixture from conftest.py

ENV: dict[str, str] = {}


def run(root: Path, *paths: str | Path, env: dict[str, str] | None = None) -> list[str]:
    return [str(d) for d in lint(list(paths), root=root, env=ENV if env is None else env)]


GOOD = """
    name: orders
    source:
      kind: test-listen
      port: 2575
    destinations:
      - name: out
        kind: test-sink
        host: ris.example
        port: 2576
"""


def test_clean_project_has_no_diagnostics(tmp_path: Path, write: Write) -> None:
    write("config/engine.yaml", "site:\n  timezone: Europe/Berlin\n")
    write("channels/orders.yaml", GOOD + "    mapping: mappings/orm.yaml\n")
    write("mappings/orm.yaml", "from: hl7v2\nto: order\nfields:\n  accession: {from: OBR-18}\n")
    assert run(tmp_path) == []


def test_unknown_key_with_and_without_hint(tmp_path: Path, write: Write) -> None:
    write(
        "channels/a.yaml",
        """
        name: a
        descripton: x
        source:
          kind: test-listen
          prot: 1
          port: 2575
          zzz: 1
        """,
    )
    assert run(tmp_path) == [
        "channels/a.yaml:2:1: unknown key 'descripton' (did you mean 'description'?)",
        "channels/a.yaml:5:3: unknown key 'prot' (did you mean 'port'?)",
        "channels/a.yaml:7:3: unknown key 'zzz'",
    ]


def test_unknown_key_in_engine_config(tmp_path: Path, write: Write) -> None:
    write("config/engine.yaml", "retention:\n  mesages_days: 3\n")
    assert run(tmp_path) == [
        "config/engine.yaml:2:3: unknown key 'mesages_days' (did you mean 'messages_days'?)"
    ]


def test_wrong_types(tmp_path: Path, write: Write) -> None:
    write(
        "channels/a.yaml",
        """
        name: 123
        enabled: maybe
        source: {kind: test-listen, port: abc}
        destinations: {}
        """,
    )
    assert run(tmp_path) == [
        "channels/a.yaml:1:7: 'name' must be a string",
        "channels/a.yaml:2:10: 'enabled' must be true or false",
        # A broken channel still gets its well-formed components checked.
        "channels/a.yaml:3:35: 'port' must be an integer",
        "channels/a.yaml:4:15: 'destinations' must be a list",
    ]


def test_engine_value_errors(tmp_path: Path, write: Write) -> None:
    write(
        "config/engine.yaml",
        """
        keys:
          source: s3
        listeners:
          - name: api
            kind: ftp
            port: 0
        site:
          timezone: Mars/Olympus
        node: [a]
        channels: [/etc/*.yaml]
        """,
    )
    assert run(tmp_path) == [
        "config/engine.yaml:2:11: 'source' must be one of: file, env",
        "config/engine.yaml:5:11: 'kind' must be one of: http",
        "config/engine.yaml:6:11: 'port' must be at least 1",
        "config/engine.yaml:8:13: 'timezone' must be an IANA time zone name such as Europe/Berlin",
        "config/engine.yaml:9:7: 'node' must be a mapping",
        (
            "config/engine.yaml:10:12: 'channels[0]' must be a path relative to the project root "
            "(no leading '/', no '..')"
        ),
    ]


def test_missing_required_keys_at_parent_mapping(tmp_path: Path, write: Write) -> None:
    write(
        "channels/a.yaml",
        """
        description: no name
        source:
          kind: test-listen
        destinations:
          - name: out
        """,
    )
    assert run(tmp_path) == [
        "channels/a.yaml:1:1: missing required key 'name'",
        "channels/a.yaml:3:3: missing required key 'port'",
        "channels/a.yaml:5:5: missing required key 'kind'",
    ]
    write("channels/a.yaml", "name: a\nsource:\n  kind: test-listen\n  host: 127.0.0.1\n")
    assert run(tmp_path) == ["channels/a.yaml:3:3: missing required key 'port'"]


def test_top_level_must_be_a_mapping(tmp_path: Path, write: Write) -> None:
    write("channels/a.yaml", "- a\n")
    write("channels/b.yaml", "")
    assert run(tmp_path) == [
        "channels/a.yaml:1:1: the document must be a mapping",
        "channels/b.yaml:1:1: the document must be a mapping",
    ]


def test_duplicate_channel_name_across_files(tmp_path: Path, write: Write) -> None:
    write("channels/a.yaml", "name: x\nsource: {kind: test-poll, host: h, port: 1}\n")
    write("channels/b.yaml", "# same name\nname:   x\nsource: {kind: test-poll, host: h, port: 1}\n")
    assert run(tmp_path) == [
        "channels/b.yaml:2:9: duplicate channel name 'x' (first defined at channels/a.yaml:1:7)"
    ]


def test_duplicate_destination_name(tmp_path: Path, write: Write) -> None:
    write(
        "channels/a.yaml",
        """
        name: a
        source: {kind: test-poll, host: h, port: 1}
        destinations:
          - {name: out, kind: test-sink, host: h, port: 1}
          - {name: out, kind: test-sink, host: h, port: 1}
        """,
    )
    assert run(tmp_path) == [
        "channels/a.yaml:5:12: duplicate destination name 'out' (first defined at channels/a.yaml:4:12)"
    ]


def test_unknown_component_kinds(tmp_path: Path, write: Write) -> None:
    write(
        "channels/a.yaml",
        """
        name: a
        source:
          kind: test-listn
        filter: {kind: nothing-like-it}
        destinations:
          - name: out
            kind: test-snk
        """,
    )
    assert run(tmp_path) == [
        "channels/a.yaml:3:9: unknown source kind 'test-listn' (did you mean 'test-listen'?)",
        "channels/a.yaml:4:16: unknown stage kind 'nothing-like-it'",
        "channels/a.yaml:7:11: unknown destination kind 'test-snk' (did you mean 'test-sink'?)",
    ]


def test_missing_mapping_file(tmp_path: Path, write: Write) -> None:
    write(
        "channels/a.yaml",
        "name: a\nsource: {kind: test-poll, host: h, port: 1}\nmapping: mappings/nope.yaml\n",
    )
    assert run(tmp_path) == ["channels/a.yaml:3:10: mapping file 'mappings/nope.yaml' not found"]


def test_port_used_twice_by_channels(tmp_path: Path, write: Write) -> None:
    channel = """
        name: {name}
        source:
          kind: test-listen
          host: {host}
          port: 2575
    """
    write("channels/a.yaml", channel.format(name="a", host="0.0.0.0"))
    write("channels/b.yaml", channel.format(name="b", host="10.0.0.1"))
    assert run(tmp_path) == ["channels/b.yaml:5:9: port 2575 is already used by channels/a.yaml:5:9"]


def test_port_clash_needs_same_or_wildcard_host_and_enabled_sources(tmp_path: Path, write: Write) -> None:
    write("channels/a.yaml", "name: a\nsource: {kind: test-listen, host: 10.0.0.1, port: 2575}\n")
    write("channels/b.yaml", "name: b\nsource: {kind: test-listen, host: 10.0.0.2, port: 2575}\n")
    write("channels/c.yaml", "name: c\nenabled: false\nsource: {kind: test-listen, port: 2575}\n")
    # Connecting out: a polling source with listens = False, and destinations.
    write("channels/d.yaml", "name: d\nsource: {kind: test-poll, host: 10.0.0.1, port: 2575}\n")
    write(
        "channels/e.yaml",
        "name: e\nsource: {kind: test-poll, host: h, port: 9}\n"
        "destinations: [{name: o, kind: test-sink, host: 10.0.0.1, port: 2575}]\n",
    )
    assert run(tmp_path) == []


def test_port_clash_with_engine_listener(tmp_path: Path, write: Write) -> None:
    write("config/engine.yaml", "listeners:\n  - name: api\n    port: 2575\n  - name: api\n    port: 9000\n")
    write("channels/a.yaml", "name: a\nsource: {kind: test-listen, port: 2575}\n")
    assert run(tmp_path) == [
        "channels/a.yaml:2:35: port 2575 is already used by config/engine.yaml:3:11",
        "config/engine.yaml:4:11: duplicate listener name 'api' (first defined at config/engine.yaml:2:11)",
    ]


def test_port_clash_with_default_engine_listener(tmp_path: Path, write: Write) -> None:
    write("channels/a.yaml", "name: a\nsource: {kind: test-listen, host: 127.0.0.1, port: 8480}\n")
    assert run(tmp_path) == [
        "channels/a.yaml:2:52: port 8480 is already used by config/engine.yaml (default listener 'api')"
    ]


def test_duplicate_yaml_key(tmp_path: Path, write: Write) -> None:
    write("channels/a.yaml", "name: a\nsource:\n  kind: test-listen\n  port: 1\n  port: 2\n")
    assert run(tmp_path) == ["channels/a.yaml:5:3: duplicate key 'port'"]


def test_yaml_syntax_error(tmp_path: Path, write: Write) -> None:
    write("channels/a.yaml", "name: a\nsource: {kind: x\n")
    (line,) = run(tmp_path)
    assert line.startswith("channels/a.yaml:3:1: YAML syntax error: ")


def test_secrets_resolve_and_missing_ones_are_reported(tmp_path: Path, write: Write) -> None:
    write(
        "channels/a.yaml",
        """
        name: a
        source: {kind: test-poll, host: "${PEER_HOST}", port: 1}
        destinations:
          - {name: o, kind: test-sink, host: h, port: 1, token: "${SINK_TOKEN}"}
        """,
    )
    env = {"PEER_HOST": "pacs.example", "SINK_TOKEN": "a-long-enough-secret-token"}
    assert run(tmp_path, env=env) == []
    assert run(tmp_path, env={"PEER_HOST": "x"}) == ["channels/a.yaml:4:57: secret ${SINK_TOKEN} is not set"]


def test_malformed_secret_reference(tmp_path: Path, write: Write) -> None:
    write("channels/a.yaml", "name: a\nsource: {kind: test-poll, host: '${db_host}', port: 1}\n")
    assert run(tmp_path) == [
        "channels/a.yaml:2:33: malformed secret reference: write ${NAME} with NAME in A-Z, 0-9 and _"
    ]


def test_secret_values_never_appear(tmp_path: Path, write: Write) -> None:
    secret = "s3cr3t-VALUE"
    write(
        "channels/a.yaml",
        """
        name: a
        source: {kind: test-listen, port: "${PORT}"}
        destinations:
          - {name: o, kind: test-sink, host: "${HOST}", port: 1, token: "${TOKEN}"}
          - {name: p, kind: "${KIND}", host: h, port: 1}
        """,
    )
    env = {"PORT": secret, "HOST": secret, "TOKEN": secret, "KIND": secret}
    lines = run(tmp_path, env=env)
    assert lines == [
        "channels/a.yaml:2:35: 'port' must be an integer",
        "channels/a.yaml:4:65: 'token' is invalid",
        "channels/a.yaml:5:21: unknown destination kind '${KIND}'",
    ]
    assert not any(secret in line for line in lines)
    write("channels/a.yaml", "name: ${NAME}\nsource: {kind: test-poll, host: h, port: 1}\n")
    (line,) = run(tmp_path, env={"NAME": secret})
    assert line == "channels/a.yaml:1:7: 'name' must match the pattern ^[a-z0-9][a-z0-9._-]*$"


def test_component_validator_message_is_kept_when_value_is_not_a_secret(tmp_path: Path, write: Write) -> None:
    write(
        "channels/a.yaml",
        "name: a\nsource: {kind: test-poll, host: h, port: 1}\n"
        "destinations: [{name: o, kind: test-sink, host: h, port: 1, token: short}]\n",
    )
    assert run(tmp_path) == ["channels/a.yaml:3:68: 'token' is invalid: token short is too short"]


def test_mapping_file_checks(tmp_path: Path, write: Write) -> None:
    write(
        "mappings/orm.yaml",
        """
        from: hl7
        to: order
        fields:
          accession: {from: [OBR-18, IPC-1], required: true}
          priority: {from: ORC-7.6, map: hl7_prio}
          ordered_at: {from: ORC-9, as: time, default: [1]}
          empty: {from: []}
          bad: {form: PID-3}
        tables:
          hl7_priority: {S: stat, R: routine}
        """,
    )
    assert run(tmp_path) == [
        "mappings/orm.yaml:1:7: 'from' must be one of: hl7v2, dicom, fhir, order, study, result, patient, "
        "priority_update",
        "mappings/orm.yaml:6:33: 'as' must be one of: str, int, decimal, date, datetime",
        "mappings/orm.yaml:6:48: 'default' must be a single value (string, number or boolean)",
        "mappings/orm.yaml:7:17: 'from' must have at least 1 item(s)",
        "mappings/orm.yaml:8:8: missing required key 'from'",
        "mappings/orm.yaml:8:9: unknown key 'form' (did you mean 'from'?)",
    ]
    write(
        "mappings/orm.yaml",
        "from: hl7v2\nto: order\nfields:\n  p: {from: ORC-7.6, map: hl7_prio}\n"
        "tables:\n  hl7_priority: {S: stat}\n",
    )
    assert run(tmp_path) == [
        "mappings/orm.yaml:4:27: unknown table 'hl7_prio' (did you mean 'hl7_priority'?)"
    ]


def test_explicit_paths_and_classification(tmp_path: Path, write: Write) -> None:
    write("somewhere/engine.yaml", "site: {timezone: Nowhere/Land}\n")
    write("somewhere/orm.yaml", "from: hl7v2\nto: order\nfields: {a: {from: PID-3, map: t}}\n")
    write("somewhere/orders.yaml", "name: a\nsource: {kind: test-listen, port: 1, hots: x}\n")
    write("somewhere/.hidden/x.yaml", "not: [valid")
    write("somewhere/orders_test.yaml", "input: x\n")
    assert run(tmp_path, tmp_path / "somewhere") == [
        "somewhere/engine.yaml:1:18: 'timezone' must be an IANA time zone name such as Europe/Berlin",
        "somewhere/orders.yaml:2:38: unknown key 'hots' (did you mean 'host'?)",
        "somewhere/orm.yaml:3:32: unknown table 't'",
    ]
    assert run(tmp_path, tmp_path / "somewhere" / "nope.yaml") == ["somewhere/nope.yaml:1:1: file not found"]


def test_lint_is_sorted_by_path_line_col(tmp_path: Path, write: Write) -> None:
    write("channels/b.yaml", "name: b\nsource: {kind: test-listen, port: 1, zz: 1}\nyy: 1\n")
    write("channels/a.yaml", "xx: 1\n")
    lines = run(tmp_path)
    assert lines == [
        "channels/a.yaml:1:1: missing required key 'name'",
        "channels/a.yaml:1:1: missing required key 'source'",
        "channels/a.yaml:1:1: unknown key 'xx'",
        "channels/b.yaml:2:38: unknown key 'zz'",
        "channels/b.yaml:3:1: unknown key 'yy'",
    ]


def test_empty_engine_file_is_valid(tmp_path: Path, write: Write) -> None:
    write("config/engine.yaml", "# nothing changed\n")
    assert run(tmp_path) == []
