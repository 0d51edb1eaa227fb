"""The audit export: valid FHIR AuditEvents and ATNA messages, faithful mapping, no PHI, audited itself."""

from __future__ import annotations

import base64
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError
from sqlalchemy import select
from typer.testing import CliRunner

from engine.audit import codes
from engine.audit.export import audit_event, read_batches, to_atna, to_fhir, write
from engine.cli import app
from engine.runtime.context import Context, open_context
from engine.store.tables import AuditRow
from tests import phi

audit = AuditRow.__table__


def _write_entries(ctx: Context) -> dict[str, str]:
    """Concrete entries covering each actor kind, outcome, purpose, record ids and blind indexes.
    Every sealed detail holds fake PHI, which must never reach an export."""
    mrn_idx = ctx.index("mrn", phi.MRN)
    acc_idx = ctx.index("accession", phi.ACCESSION)
    secret = {"raw": phi.ORM, "name": f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}", "phone": phi.PHONE, "dob": phi.DOB}
    ctx.audit.record(
        "message.received",
        actor="peer:127.0.0.1",
        peer="127.0.0.1:5000",
        record_ids=["m-1"],
        indexes={"mrn": mrn_idx, "accession": acc_idx},
        detail=secret,
    )
    ctx.audit.record(
        "message.viewed", actor="user:alice", purpose="treatment", record_ids=["m-1", "m-2"], detail=secret
    )
    ctx.audit.record("message.searched", actor="user:bob", outcome="denied", indexes={"mrn": mrn_idx}, detail=secret)
    ctx.audit.record("config.changed", actor="service:engine", outcome="failure", purpose="audit-review", detail=secret)
    ctx.audit.record("engine.started", actor="service:engine", peer="[::1]:2575", detail=secret)
    return {"mrn": mrn_idx, "accession": acc_idx}


def _rows(ctx: Context) -> list[dict[str, Any]]:
    return [row for batch in read_batches(ctx.db, batch=2) for row in batch]


def _by_action(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {next(c["code"] for c in e["subtype"] if c["system"] == codes.RB_ACTION): e for e in events}


def test_every_event_validates_and_maps(ctx: Context) -> None:
    idx = _write_entries(ctx)
    rows = _rows(ctx)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]  # (node, seq) order across batches of 2
    assert "detail" not in rows[0]  # the sealed column is not even read
    events = to_fhir(rows)
    for event in events:
        AuditEvent.model_validate(event)
    by = _by_action(events)

    received = by["message.received"]
    assert received["type"]["code"] == "110107" and received["action"] == "C"
    assert received["outcome"] == "0" and received["outcomeDesc"] == "success"
    agent = received["agent"][0]
    assert agent["who"]["identifier"]["value"] == "peer:127.0.0.1" and agent["requestor"] is True
    assert agent["network"] == {"address": "127.0.0.1", "type": "2"}
    assert agent["type"]["coding"][0]["code"] == "110153"
    assert received["source"]["observer"]["identifier"]["value"] == "test-node"
    [entity] = received["entity"]
    assert entity["what"]["identifier"]["value"] == "m-1"
    assert {d["type"]: d["valueString"] for d in entity["detail"]} == {
        "blind-index:accession": idx["accession"],
        "blind-index:mrn": idx["mrn"],
    }
    assert "purposeOfEvent" not in received

    viewed = by["message.viewed"]
    assert viewed["type"]["code"] == "110110" and viewed["action"] == "R"
    assert [e["what"]["identifier"]["value"] for e in viewed["entity"]] == ["m-1", "m-2"]
    assert viewed["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    assert viewed["purposeOfEvent"][0]["text"] == "treatment"
    assert viewed["agent"][0]["type"]["coding"][0]["code"] == "humanuser" and viewed["agent"][0]["requestor"]
    assert "network" not in viewed["agent"][0]

    searched = by["message.searched"]
    assert searched["type"]["code"] == "110112" and searched["outcome"] == "4"
    assert searched["entity"] == [
        {
            "type": searched["entity"][0]["type"],
            "detail": [{"type": "blind-index:mrn", "valueString": idx["mrn"]}],
        }
    ]

    changed = by["config.changed"]
    assert changed["type"]["code"] == "110113" and changed["outcome"] == "8" and changed["action"] == "U"
    assert [c["code"] for c in changed["subtype"]] == ["110131", "config.changed"]
    assert changed["purposeOfEvent"][0]["coding"][0] == {
        "system": codes.RB_PURPOSE,
        "code": "other",  # free text is sealed in the detail; the clear column holds a code
        "display": "other",
    }
    assert changed["agent"][0]["requestor"] is False and "entity" not in changed

    started = by["engine.started"]
    assert started["agent"][0]["network"] == {"address": "::1", "type": "2"}


def test_chain_position_matches_the_log(ctx: Context) -> None:
    _write_entries(ctx)
    with ctx.db.connect() as conn:
        chain = {(r.node, r.seq): (r.hash, r.prev_hash, r.id) for r in conn.execute(select(audit))}
    for event in to_fhir(_rows(ctx)):
        [ext] = event["extension"]
        assert ext["url"] == codes.RB_CHAIN
        parts = {e["url"]: next(v for k, v in e.items() if k.startswith("value")) for e in ext["extension"]}
        assert chain[(parts["node"], parts["seq"])] == (parts["hash"], parts["prevHash"], event["id"])


def test_invalid_resource_is_refused() -> None:
    row = {
        "node": "n",
        "seq": 1,
        "id": "x",
        "ts": "not a time",
        "actor": "user:a",
        "peer": None,
        "action": "message.viewed",
        "outcome": "success",
        "purpose": None,
        "record_ids": "[]",
        "indexes": "{}",
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }
    with pytest.raises(ValidationError):
        audit_event(row)


def test_atna_messages(ctx: Context) -> None:
    idx = _write_entries(ctx)
    lines = to_atna(_rows(ctx)).splitlines()
    assert len(lines) == 5
    messages = [ET.fromstring(line) for line in lines]
    for m in messages:
        assert m.tag == "AuditMessage"
        assert [c.tag for c in m][:3] == ["EventIdentification", "ActiveParticipant", "AuditSourceIdentification"]
        assert m.find("EventIdentification/EventID").get("codeSystemName") == "DCM"  # type: ignore[union-attr]
        assert m.find("AuditSourceIdentification").get("AuditSourceID") == "test-node"  # type: ignore[union-attr]
    received = messages[0]
    event = received.find("EventIdentification")
    assert event is not None and event.attrib == {
        "EventActionCode": "C",
        "EventDateTime": event.get("EventDateTime"),
        "EventOutcomeIndicator": "0",
    }
    participant = received.find("ActiveParticipant")
    assert participant is not None and participant.attrib == {
        "UserID": "peer:127.0.0.1",
        "UserIsRequestor": "true",
        "NetworkAccessPointID": "127.0.0.1",
        "NetworkAccessPointTypeCode": "2",
    }
    objects = received.findall("ParticipantObjectIdentification")
    assert [o.get("ParticipantObjectID") for o in objects][0] == "m-1"
    details = {d.get("type"): base64.b64decode(d.get("value", "")).decode() for d in objects[0]}
    assert details["blind-index:mrn"] == idx["mrn"]
    chain = {d.get("type"): base64.b64decode(d.get("value", "")).decode() for d in objects[-1]}
    assert chain["seq"] == "1" and len(chain["hash"]) == 64
    denied = messages[2].find("EventIdentification")
    assert denied is not None and denied.get("EventOutcomeIndicator") == "4"


def _assert_no_phi(text: str) -> None:
    assert not phi.leaks_in_bytes(text.encode())
    # ATNA details are base64: look inside them too
    for value in (v.split('"')[0] for v in text.split('value="')[1:]):
        assert not phi.leaks_in_bytes(base64.b64decode(value))


@pytest.mark.parametrize("fmt", ["fhir", "fhir-ndjson", "atna"])
def test_export_holds_no_phi(ctx: Context, fmt: str) -> None:
    _write_entries(ctx)
    out = io.StringIO()
    assert write(read_batches(ctx.db), fmt, out) == 5
    _assert_no_phi(out.getvalue())
    if fmt == "fhir":
        bundle = Bundle.model_validate_json(out.getvalue())
        assert bundle.type == "collection" and len(bundle.entry or []) == 5


def test_empty_bundle_is_valid(ctx: Context) -> None:
    out = io.StringIO()
    assert write(read_batches(ctx.db, since="2999-01-01T00:00:00+00:00"), "fhir", out) == 0
    Bundle.model_validate_json(out.getvalue())


def test_cli_round_trip_is_audited(project: Path, tmp_path: Path) -> None:
    ctx = open_context(project)
    try:
        _write_entries(ctx)
    finally:
        ctx.close()
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "export", "--format", "fhir-ndjson", "--root", str(project)])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(events) == 5
    for event in events:
        AuditEvent.model_validate(event)
    _assert_no_phi(result.stdout)

    target = tmp_path / "audit.xml"
    since = events[1]["recorded"]  # from the second entry on; the first export's own entry is included
    result = runner.invoke(
        app, ["audit", "export", "--format", "atna", "--since", since, "--out", str(target), "--root", str(project)]
    )
    assert result.exit_code == 0, result.output
    assert target.stat().st_mode & 0o777 == 0o600
    lines = target.read_text().splitlines()
    assert len(lines) == 5 and all(ET.fromstring(line).tag == "AuditMessage" for line in lines)

    ctx = open_context(project)
    try:
        with ctx.db.connect() as conn:
            exported = conn.execute(select(audit).where(audit.c.action == "audit.exported").order_by(audit.c.seq)).all()
        assert [r.actor.startswith("user:") for r in exported] == [True, True]
        assert [r.outcome for r in exported] == ["success", "success"]
        first = ctx.audit.open_detail(exported[0].id, exported[0].detail)
        second = ctx.audit.open_detail(exported[1].id, exported[1].detail)
    finally:
        ctx.close()
    assert first is not None and first["entries"] == 5 and first["format"] == "fhir-ndjson"
    assert second is not None and second["entries"] == 5 and second["out"] == str(target)


def test_cli_rejects_bad_arguments(project: Path) -> None:
    runner = CliRunner()
    bad_format = runner.invoke(app, ["audit", "export", "--format", "csv", "--root", str(project)])
    assert bad_format.exit_code == 1 and "--format must be one of" in bad_format.output
    bad_time = runner.invoke(app, ["audit", "export", "--since", "yesterday", "--root", str(project)])
    assert bad_time.exit_code == 1 and "--since must be an ISO 8601" in bad_time.output
