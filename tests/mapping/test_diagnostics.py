"""Every compile-time diagnostic, with its exact `path:line:col: message`."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigInvalid
from engine.config.schema import MappingFile
from engine.mapping import compile_mapping, lint_mapping_file, load_mapping
from tests.mapping.util import MAPPINGS, ROOT, lint_yaml

HEAD = "from: hl7v2\nto: order\n"
EVENT = "  event: { value: accepted }\n"


@pytest.mark.parametrize("name", ["orm-to-order.yaml", "omi-to-order.yaml", "adt-to-patient.yaml"])
def test_shipped_mappings_lint_clean(name: str) -> None:
    assert lint_mapping_file(MAPPINGS / name, ROOT) == []


def test_path_syntax_errors_point_at_the_character(tmp_path: Path) -> None:
    text = (
        HEAD + "fields:\n" + EVENT
        + "  accession: { from: OBR-18x }\n"  # plain
        + '  patient_id: { from: "PID-3[0].1" }\n'  # double-quoted: one further right
        + "  study_uid: { from: [ZDS-1.1, 'IPC-3.1.2.3'] }\n"  # single-quoted, in a list
        + "  modality:\n    from:\n      - OBR-24\n      - obr-24\n"  # block list
        + "  reason: { value: x, when: { path: ORC1, equals: NW } }\n"
    )  # fmt: skip
    assert lint_yaml(tmp_path, text) == [
        "mappings/m.yaml:5:28: invalid HL7 path 'OBR-18x': unexpected character",
        "mappings/m.yaml:6:30: invalid HL7 path 'PID-3[0].1': repetition number must be 1 or more (1-based)",
        "mappings/m.yaml:7:42: invalid HL7 path 'IPC-3.1.2.3': unexpected '.': paths stop at the sub-component",
        "mappings/m.yaml:11:9: invalid HL7 path 'obr-24': expected segment id (3 characters: A-Z, then A-Z or 0-9)",
        "mappings/m.yaml:12:40: invalid HL7 path 'ORC1': expected '-' after segment id",
    ]


def test_unknown_field_function_and_table(tmp_path: Path) -> None:
    text = (
        HEAD + "topic: { from: ORC-1, map: topics }\nfields:\n" + EVENT
        + "  acession: { from: OBR-18 }\n"
        + "  modality: { from: OBR-24, fn: [trim, uper] }\n"
        + "  sex: { from: PID-8, fn: lowercase }\n"
        + "  priority: { from: ORC-7.6, map: hl7_prio }\n"
        + "tables:\n  hl7_priority: { S: stat }\n  topicz: { NW: order.accepted }\n"
    )  # fmt: skip
    assert lint_yaml(tmp_path, text) == [
        "mappings/m.yaml:3:28: unknown table 'topics' (did you mean 'topicz'?)",
        "mappings/m.yaml:6:3: unknown order field 'acession' (did you mean 'accession'?)",
        "mappings/m.yaml:7:40: unknown function 'uper' (did you mean 'upper'?)",
        "mappings/m.yaml:8:27: unknown function 'lowercase' (did you mean 'lower'?)",
        "mappings/m.yaml:9:35: unknown table 'hl7_prio' (did you mean 'hl7_priority'?)",
    ]


def test_values_that_the_record_would_reject(tmp_path: Path) -> None:
    text = (
        HEAD + "fields:\n"
        + "  event: { from: ORC-1, map: control }\n"
        + "  priority: { from: ORC-7.6, map: prio, default: urgnt }\n"
        + "  sex: { value: 1 }\n"
        + "  body_part: { value: yes }\n"
        + "  ordered_at: { from: ORC-9, as: date }\n"
        + "  birth_date: { from: PID-7, default: someday }\n"
        + "tables:\n  control: { NW: accepted, CA: canceled }\n  prio: { S: stat, X: never }\n"
    )  # fmt: skip
    assert lint_yaml(tmp_path, text) == [
        "mappings/m.yaml:5:50: default for order field 'priority' must be one of: routine, urgent, asap, stat",
        "mappings/m.yaml:6:17: value for order field 'sex' must be a string (quote it)",
        "mappings/m.yaml:7:23: value for order field 'body_part' must be a string (quote it)",
        "mappings/m.yaml:8:34: 'as: date' does not fit order field 'ordered_at' (a datetime)",
        "mappings/m.yaml:9:39: default for order field 'birth_date' is not a valid date "
        "(DT: expected YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])",
        "mappings/m.yaml:11:32: table 'control' value for order field 'event' must be one of: "
        "accepted, changed, cancelled",
        "mappings/m.yaml:12:23: table 'prio' value for order field 'priority' must be one of: "
        "routine, urgent, asap, stat",
    ]


def test_fields_the_record_requires(tmp_path: Path) -> None:
    text = HEAD + "fields:\n  accession: { from: OBR-18 }\n"
    assert lint_yaml(tmp_path, text) == ["mappings/m.yaml:3:1: order records need field 'event'"]


def test_accept_and_each(tmp_path: Path) -> None:
    text = HEAD + "accept: [ORM^O01, ORM-O01, orm]\neach: orc\nfields:\n" + EVENT
    assert lint_yaml(tmp_path, text) == [
        "mappings/m.yaml:3:19: 'ORM-O01' is not a message type: write CODE^TRIGGER, e.g. ORM^O01",
        "mappings/m.yaml:3:28: 'orm' is not a message type: write CODE^TRIGGER, e.g. ORM^O01",
        "mappings/m.yaml:4:7: 'orc' is not a segment id (3 characters: A-Z, then A-Z or 0-9)",
    ]


def test_keys_used_with_the_wrong_kind_of_mapping(tmp_path: Path) -> None:
    outbound = (
        "from: order\nto: hl7v2\naccept: [ORM^O01]\neach: ORC\ntopic: order.x\n"
        "template: { MSH-9.1: ORM }\nfields:\n  PID-3.1: { from: order.patient_id }\n"
    )
    assert lint_yaml(tmp_path, outbound) == [
        "mappings/m.yaml:3:1: 'accept' is only for from: hl7v2",
        "mappings/m.yaml:4:1: 'each' is only for from: hl7v2",
        "mappings/m.yaml:5:1: 'topic' is only for record mappings (to: order or patient)",
    ]
    record = HEAD + "template: { MSH-3: X }\nfields:\n" + EVENT
    assert lint_yaml(tmp_path, record) == ["mappings/m.yaml:3:1: 'template' is only for to: hl7v2"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "from: hl7v2\nto: ordr\nfields: {}\n",
            "2:5: unknown target 'ordr' (did you mean 'order'?): expected order, patient or hl7v2",
        ),
        (
            "from: dicom\nto: order\nfields: {}\n",
            "1:7: reading 'dicom' is not supported yet: use hl7v2, order or patient",
        ),
        ("from: hl7v2\nto: hl7v2\nfields: {}\n", "2:5: from: hl7v2 to: hl7v2 is not supported: map to a record first"),
        (
            "from: order\nto: hl7v2\nfields: {}\n",
            "2:5: to: hl7v2 needs the message type: set MSH-9.1 and MSH-9.2 in 'template'",
        ),
    ],
)
def test_source_and_target(tmp_path: Path, text: str, expected: str) -> None:
    assert lint_yaml(tmp_path, text) == ["mappings/m.yaml:" + expected]


def test_record_paths(tmp_path: Path) -> None:
    text = (
        "from: order\nto: hl7v2\ntemplate: { MSH-9.1: ORM }\nfields:\n"
        "  PID-3.1: { from: patient.patient_id }\n"
        '  PID-5: { from: "order.patient_nme" }\n'
        "  ORC-1: { value: XO, when: { path: order.evnt, equals: changed } }\n"
    )
    assert lint_yaml(tmp_path, text) == [
        "mappings/m.yaml:5:20: record paths start with 'order.' (e.g. 'order.event')",
        "mappings/m.yaml:6:25: unknown order field 'patient_nme' (did you mean 'patient_name'?)",
        "mappings/m.yaml:7:43: unknown order field 'evnt' (did you mean 'event'?)",
    ]


def test_outbound_target_paths(tmp_path: Path) -> None:
    text = (
        "from: order\nto: hl7v2\ntemplate:\n  MSH-9.1: ORM\n  MSH-2: x\nfields:\n"
        '  "PID-3[*].1": { from: order.patient_id }\n'
        "  PID-3..1: { from: order.patient_id }\n"
        '  "OBX[2]-5.1": { from: order.accession }\n'
    )
    assert lint_yaml(tmp_path, text) == [
        "mappings/m.yaml:5:3: MSH-1 and MSH-2 are fixed (| and ^~\\&)",
        "mappings/m.yaml:7:3: cannot write to 'PID-3[*].1': [*] is for reading",
        "mappings/m.yaml:8:9: invalid HL7 path 'PID-3..1': expected component number after '.'",
    ]


def test_schema_checks_come_first(tmp_path: Path) -> None:
    text = (
        HEAD + "fields:\n" + EVENT
        + "  a: { from: OBR-18, value: x }\n"
        + "  b: { required: true }\n"
        + "  c: { from: OBR-18, when: { path: ORC-1, in: [NW], equals: NW } }\n"
        + "  d: { from: OBR-18, fn: { x: 1 } }\n"
    )  # fmt: skip
    assert lint_yaml(tmp_path, text) == [
        "mappings/m.yaml:5:6: 'a' takes either 'from' or 'value', not both",
        "mappings/m.yaml:6:6: missing required key 'from'",
        "mappings/m.yaml:7:28: 'when' needs exactly one of 'in', 'not_in', 'equals', 'present'",
        "mappings/m.yaml:8:26: 'fn' must be a function name or a list of them",
    ]
    assert lint_yaml(tmp_path, "from: [x\n") == [
        "mappings/m.yaml:2:1: YAML syntax error: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence)"
    ]


def test_unreadable_files(tmp_path: Path) -> None:
    assert [str(d) for d in lint_mapping_file(tmp_path / "mappings/none.yaml", tmp_path)] == [
        "mappings/none.yaml:1:1: cannot read file (No such file or directory)"
    ]
    (tmp_path / "bad.yaml").write_bytes(b"from: \xff\n")
    assert [str(d) for d in lint_mapping_file(tmp_path / "bad.yaml", tmp_path)] == [
        "bad.yaml:1:1: file is not valid UTF-8"
    ]


def test_load_and_compile_raise_config_invalid(tmp_path: Path) -> None:
    path = tmp_path / "mappings" / "m.yaml"
    path.parent.mkdir()
    path.write_text(HEAD + "fields:\n  accession: { from: OBR-18 }\n")
    with pytest.raises(ConfigInvalid) as info:
        load_mapping(path, tmp_path)
    assert str(info.value) == "mappings/m.yaml:3:1: order records need field 'event'"
    doc = MappingFile.model_validate({"from": "hl7v2", "to": "order", "fields": {"event": {"from": "ORC-1x"}}})
    with pytest.raises(ConfigInvalid) as info:
        compile_mapping(doc, path="x.yaml")  # no positions: 1:1
    assert [str(d) for d in info.value.diagnostics] == ["x.yaml:1:6: invalid HL7 path 'ORC-1x': unexpected character"]
    assert (
        compile_mapping(
            doc.model_copy(
                update={"fields": {"event": doc.fields["event"].model_copy(update={"from_": ["ORC-1"], "map": None})}}
            ),
            path="x.yaml",
        ).name
        == "x"
    )
