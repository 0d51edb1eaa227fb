from engine.config.yamlpos import Diagnostic, parse_yaml


def test_positions_of_keys_and_values_are_one_based() -> None:
    text = "name: a\ndestinations:\n  - name: out\n    port: 2575\n  - {name: b, port: 1}\n"
    doc, diags = parse_yaml(text, "c.yaml")
    assert diags == [] and doc is not None
    assert doc.data == {
        "name": "a",
        "destinations": [{"name": "out", "port": 2575}, {"name": "b", "port": 1}],
    }
    assert doc.keys[("name",)] == (1, 1)
    assert doc.values[("name",)] == (1, 7)
    assert doc.values[("destinations",)] == (3, 3)
    assert doc.values[("destinations", 0)] == (3, 5)
    assert doc.keys[("destinations", 0, "port")] == (4, 5)
    assert doc.values[("destinations", 0, "port")] == (4, 11)
    assert doc.keys[("destinations", 1, "port")] == (5, 15)
    assert doc.values[("destinations", 1, "port")] == (5, 21)
    assert doc.values[()] == (1, 1)


def test_position_fallbacks() -> None:
    doc, _ = parse_yaml("source:\n  kind: x\n", "c.yaml")
    assert doc is not None
    assert doc.value_pos(("source", "port")) == (2, 3)  # missing: nearest ancestor
    assert doc.key_pos(("source", "port")) == (2, 3)
    assert doc.get(("source", "kind")) == "x"
    assert doc.get(("source", "nope"), "d") == "d"


def test_duplicate_key_is_reported_at_the_second_key() -> None:
    doc, diags = parse_yaml("a:\n  port: 1\n  port: 2\n", "c.yaml")
    assert [str(d) for d in diags] == ["c.yaml:3:3: duplicate key 'port'"]
    assert doc is not None and doc.data == {"a": {"port": 1}}


def test_syntax_error_has_the_marks_position() -> None:
    doc, diags = parse_yaml("a: 1\nb: [1, 2\nc: 3\n", "c.yaml")
    assert doc is None
    assert len(diags) == 1
    assert str(diags[0]).startswith("c.yaml:3:2: YAML syntax error: ")


def test_several_documents_are_a_syntax_error() -> None:
    doc, diags = parse_yaml("a: 1\n---\nb: 2\n", "c.yaml")
    assert doc is None
    assert str(diags[0]).startswith("c.yaml:2:1: YAML syntax error: but found another document")


def test_only_plain_types_come_out() -> None:
    text = "when: 2024-01-01\n1: one\nON: x\nf: 1.5\nt: true\nn: null\n"
    doc, diags = parse_yaml(text, "c.yaml")
    assert diags == [] and doc is not None
    assert doc.data == {"when": "2024-01-01", "1": "one", "ON": "x", "f": 1.5, "t": True, "n": None}


def test_tags_and_aliases_are_rejected() -> None:
    text = "a: !!binary aGVsbG8=\nb: !!python/object:os.system {}\nc: &x {k: 1}\nd: *x\n"
    doc, diags = parse_yaml(text, "c.yaml")
    assert doc is not None
    assert [str(d) for d in sorted(diags)] == [
        "c.yaml:1:4: unsupported YAML tag 'tag:yaml.org,2002:binary'",
        "c.yaml:2:4: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'",
        "c.yaml:4:4: YAML aliases (*name) are not supported; repeat the value",
    ]
    assert doc.data["a"] is None and doc.data["d"] is None


def test_empty_document() -> None:
    doc, diags = parse_yaml("# only a comment\n", "c.yaml")
    assert diags == [] and doc is not None and doc.data is None
    assert doc.value_pos(()) == (1, 1)


def test_diagnostic_str() -> None:
    assert str(Diagnostic("channels/a.yaml", 12, 5, "boom")) == "channels/a.yaml:12:5: boom"


def test_control_characters_are_a_syntax_error() -> None:
    doc, diags = parse_yaml("name: a\x01\n", "c.yaml")
    assert doc is None
    assert [str(d) for d in diags] == [
        "c.yaml:1:8: YAML syntax error: special characters are not allowed (#x0001)"
    ]
