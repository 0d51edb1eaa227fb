"""The outbound grammar for nested records: record paths with lists, `groups` (segments per list
item), `seq`, left-out empty segments, `validate`; and their lint diagnostics with positions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.hl7v2 import Message
from engine.mapping import MappingError
from tests.mapping.results import NOW, priority_record, result_record
from tests.mapping.util import ROOT, TZ, compile_yaml, lint_yaml

HEAD = "from: result\nto: hl7v2\ntemplate: { MSH-9.1: ORU, MSH-9.2: R01 }\n"


def build(text: str, fields: dict | None = None) -> Message:
    mapping = compile_yaml(text)
    return Message.parse(mapping.build(result_record() if fields is None else fields, site_tz=TZ, now=NOW))


def lines(msg: Message) -> list[str]:
    return [seg.raw for seg in msg]


def test_nested_fields_and_list_items() -> None:
    msg = build(
        HEAD + "fields:\n"
        '  OBR-2:   { from: "result.orders[1].placer_number" }\n'
        '  OBR-3:   { from: ["result.orders[2].filler_number", "result.accessions[1]"] }\n'
        "  OBR-13:  { from: result.result.summary }\n"
        '  OBR-31:  { from: "result.result.findings[2].display" }\n'
        '  OBR-32:  { from: "result.result.findings[9].display", default: none }\n'
        "  OBR-27.6: { from: result.result.suggested_priority, fn: upper }\n"
    )
    assert msg.get("OBR-2") == "PLC1001"
    assert msg.get("OBR-3") == "ACCFAKE88213"  # no second order: the next path
    assert msg.get("OBR-13") == "Intracranial hemorrhage suspected (score 0.97); midline shift 4.2 mm."
    assert (msg.get("OBR-31"), msg.get("OBR-32"), msg.get("OBR-27.6")) == ("Midline shift", "none", "STAT")


GROUPS = (
    HEAD
    + "fields:\n  OBR-4.1: { value: X }\n  NTE-1: { seq: segment }\n  NTE-3: { from: result.result.disclaimer }\n"
    + "groups:\n"
    + "  - each: result.result.findings\n"
    + "    fields:\n"
    + "      OBX-1: { seq: segment }\n"
    + "      OBX-3: { from: 'result.result.findings[*].code' }\n"
    + "      OBX-4: { seq: result.result.findings }\n"
    + "      NTE-1: { seq: segment }\n"
    + "      NTE-3: { from: 'result.result.findings[*].body_site' }\n"
    + "      'OBX[2]-3': { value: SECOND }\n"
    + "    groups:\n"
    + "      - each: 'result.result.findings[*].measurements'\n"
    + "        fields:\n"
    + "          OBX-1: { seq: segment }\n"
    + "          OBX-4: { seq: result.result.findings }\n"
    + "          OBX-5: { from: 'result.result.findings[*].measurements[*].value' }\n"
    + "          OBX-6: { from: 'result.result.findings[*].measurements[*].unit' }\n"
    + "      - fields:\n"
    + "          NTE-3: { value: after the measurements }\n"
    + "  - fields:\n"
    + "      ZAI-1: { from: result.model }\n"
)


def test_groups_repeat_segments_per_item_in_order() -> None:
    assert lines(build(GROUPS))[1:] == [
        "OBR||||X",
        "NTE|1||Not a medical device: for prioritisation only.",
        "OBX|1||1386000|1",
        "OBX|||SECOND",  # no seq for OBX[2]-1, but it counts
        "NTE|2||Left frontal lobe",
        "OBX|3|||1|12.5|mL",
        "NTE|||after the measurements",
        "OBX|4||MIDLINE-SHIFT|2",
        "OBX|||SECOND",  # the second finding has no body site: its NTE is left out
        "OBX|6|||2|4.2|mm",
        "NTE|||after the measurements",
        "OBX|7||230745008|3",
        "OBX|||SECOND",
        "NTE|||after the measurements",  # no measurements: nothing from that group
        "ZAI|ich-detector",
    ]


def test_an_empty_list_and_empty_segments_write_nothing() -> None:
    fields = result_record()
    fields["result"] = {**fields["result"], "findings": [], "disclaimer": None}
    assert lines(build(GROUPS, fields))[1:] == ["OBR||||X", "ZAI|ich-detector"]


def test_seq_segment_counts_every_segment_of_its_id() -> None:
    msg = build(
        HEAD + "fields:\n  'OBX[1]-5': { value: a }\n  'OBX[2]-1': { seq: segment }\n  'OBX[2]-5': { value: b }\n"
    )
    assert lines(msg)[1:] == ["OBX|||||a", "OBX|2||||b"]


def test_record_values_are_written_as_hl7() -> None:
    fields = result_record()
    fields["result"]["findings"][0]["score"] = 0.00001  # never an exponent
    fields["result"]["findings"][0]["display"] = "A|B^C"
    msg = build(
        HEAD + "fields:\n"
        "  OBX-5: { from: 'result.result.findings[1].score' }\n"
        "  OBX-8: { from: result.critical }\n"
        "  OBX-3.2: { from: 'result.result.findings[1].display' }\n"
        "  OBX-14: { from: result.completed_at }\n"
        "  PID-7: { from: result.birth_date, as: date }\n",
        fields,
    )
    assert (msg.get("OBX-5"), msg.get("OBX-8"), msg.get("OBX-3.2")) == ("0.00001", "Y", "A|B^C")
    assert msg.segment("OBX").raw.split("|")[3] == "^A\\F\\B\\S\\C"
    assert msg.get("OBX-14") == "20261121104207+0100"
    fields["birth_date"] = "1947-03-12"  # ISO, as an image-derived record may hold it
    assert build(HEAD + "fields:\n  PID-7: { from: result.birth_date, as: date }\n", fields).get("PID-7") == "19470312"


def test_validate_checks_the_structure_only_when_asked() -> None:
    loose = HEAD + "fields:\n  OBX-3: { value: X }\n"
    assert lines(build(loose))[1:] == ["OBX|||X"]
    strict = compile_yaml(loose.replace("to: hl7v2\n", "to: hl7v2\nvalidate: true\n"))
    with pytest.raises(MappingError) as info:
        strict.build(result_record(), site_tz=TZ)
    assert info.value.code == 100 and info.value.segment is None  # no ORU_R01 group at all
    assert "does not fit its HL7 message structure" in str(info.value)


def test_the_docs_outbound_example_gives_the_message_shown() -> None:
    doc = (ROOT / "docs" / "mapping.md").read_text(encoding="utf-8")
    found = re.search(r"```yaml\n(from: result\nto: hl7v2\n.*?groups:.*?)```.*?```text\n(.*?)```", doc, re.DOTALL)
    assert found is not None
    mapping = compile_yaml(found[1], "docs/mapping.md")
    text = mapping.build(result_record(), site_tz=TZ, control_id="DOC-0001", now=NOW)
    assert text.split("\r")[:-1] == found[2].splitlines()


def test_priority_update_records_read_the_same_way() -> None:
    mapping = compile_yaml(
        "from: priority_update\nto: hl7v2\ntemplate: { MSH-9.1: ORM, MSH-9.2: O01 }\n"
        "fields:\n  ORC-3: { from: 'priority_update.orders[1].accession' }\n"
        "  ORC-9: { from: priority_update.raised_at }\n"
        "groups:\n  - each: priority_update.orders\n    fields:\n"
        "      OBR-1: { seq: priority_update.orders }\n"
        "      OBR-4: { from: 'priority_update.orders[*].procedure_code' }\n"
    )
    msg = Message.parse(mapping.build(priority_record(), site_tz=TZ))
    assert (msg.get("ORC-3"), msg.get("ORC-9"), msg.get("OBR-1"), msg.get("OBR-4")) == (
        "ACCFAKE88213", "20261121104208+0100", "1", "CTHEAD"
    )  # fmt: skip


# --- lint --------------------------------------------------------------------------------------


def test_record_path_errors_point_at_the_character(tmp_path: Path) -> None:
    text = (
        HEAD + "fields:\n"
        "  OBX-3: { from: result.result.findingz }\n"
        "  OBX-4: { from: 'result.result.findings[*].code' }\n"
        "  OBX-5: { from: result.orders }\n"
        "  OBX-6: { from: result.result }\n"
        "  OBX-7: { from: 'result.orders[0].accession' }\n"
        "  OBX-8: { from: 'result.model[1]' }\n"
        "  OBX-9: { from: result.resullt }\n"
        "  OBX-10: { from: order.accession }\n"
    )
    assert lint_yaml(tmp_path, text) == [
        "mappings/m.yaml:5:32: unknown field 'result.findingz' (did you mean 'result.findings'?)",
        "mappings/m.yaml:6:41: '[*]' reads the current item of a group: use it inside a group with "
        "'each: result.result.findings'",
        "mappings/m.yaml:7:18: 'result.orders' is a list: pick an item ('result.orders[1]') or read it in a group "
        "('each: result.orders')",
        "mappings/m.yaml:8:18: 'result.result' is an object: name one of its fields (model, version, findings, "
        "summary, ...)",
        "mappings/m.yaml:9:33: list items are numbered from 1 (no leading zeros)",
        "mappings/m.yaml:10:31: 'result.model' is not a list: remove '[1]'",
        "mappings/m.yaml:11:25: unknown result field 'resullt' (did you mean 'result'?)",
        "mappings/m.yaml:12:19: record paths start with 'result.' (e.g. 'result.job_id')",
    ]


def test_group_errors(tmp_path: Path) -> None:
    text = (
        HEAD + "fields:\n  OBX-1: { seq: result.result.findings }\n"
        "groups:\n"
        "  - each: result.result.findingz\n    fields: { OBX-1: { seq: segment } }\n"
        "  - each: result.model\n    fields: { OBX-1: { seq: segment } }\n"
        "  - each: result.result.findings\n"
        "    fields:\n"
        "      MSH-4: { value: X }\n"
        "      OBX-1: { seq: segment, fn: trim }\n"
        "      OBX-2: { seq: result.orders }\n"
        "      OBX-3: { from: 'result.result.findings[*].measurements[*].value' }\n"
        "    groups:\n"
        "      - each: 'result.result.findings[*].measurements'\n"
        "        fields:\n"
        "          OBX-5: { from: 'result.result.findings[*].measurements[*].valu' }\n"
    )
    assert lint_yaml(tmp_path, text) == [
        "mappings/m.yaml:5:17: 'seq: result.result.findings' must be one of: segment (a list of an enclosing group)",
        "mappings/m.yaml:7:25: unknown field 'result.findingz' (did you mean 'result.findings'?)",
        "mappings/m.yaml:9:11: 'each' needs a list, and 'result.model' is not one",
        "mappings/m.yaml:13:7: MSH is written once: set it in the mapping's own 'fields' or 'template'",
        "mappings/m.yaml:14:30: 'seq' takes no 'fn'",
        "mappings/m.yaml:15:21: 'seq: result.orders' must be one of: segment, result.result.findings "
        "(a list of an enclosing group)",
        "mappings/m.yaml:16:61: '[*]' reads the current item of a group: use it inside a group with "
        "'each: result.result.findings[*].measurements'",
        "mappings/m.yaml:20:69: unknown field 'result.findings[*].measurements[*].valu' "
        "(did you mean 'result.findings[*].measurements[*].value'?)",
    ]


def test_outbound_keys_on_inbound_mappings_and_back(tmp_path: Path) -> None:
    inbound = (
        "from: hl7v2\nto: order\nvalidate: true\nfields:\n  event: { value: accepted }\n"
        "  accession: { seq: segment }\n  reason: { from: 'OBX[*]-5', join: ' ' }\n"
        "  body_part: { from: OBR-15, join: ' ' }\n"
        "groups:\n  - fields: { OBX-1: { value: X } }\n"
    )
    assert lint_yaml(tmp_path, inbound) == [
        "mappings/m.yaml:3:1: 'validate' is only for to: hl7v2",
        "mappings/m.yaml:6:16: 'seq' is only for to: hl7v2",
        "mappings/m.yaml:8:30: 'join' needs a path that reads every occurrence or repetition ([*])",
        "mappings/m.yaml:9:1: 'groups' is only for to: hl7v2",
    ]
    outbound = HEAD + "fields:\n  OBX-5: { from: result.model, join: ' ' }\n"
    assert lint_yaml(tmp_path, outbound) == ["mappings/m.yaml:5:32: 'join' is only for from: hl7v2"]
    both = HEAD + "fields:\n  OBX-6: { seq: segment, value: x }\n"
    assert lint_yaml(tmp_path, both) == ["mappings/m.yaml:5:10: 'OBX-6' takes either 'value' or 'seq', not both"]


@pytest.mark.parametrize(
    "name",
    ["result-to-oru.yaml", "result-to-oru-231.yaml", "priority-to-orm-xo.yaml", "priority-to-omi.yaml",
     "oru-to-report.yaml"],
)  # fmt: skip
def test_shipped_hl7_mappings_lint_clean(name: str) -> None:
    from engine.mapping import lint_mapping_file
    from tests.mapping.util import MAPPINGS

    assert lint_mapping_file(MAPPINGS / name, ROOT) == []
