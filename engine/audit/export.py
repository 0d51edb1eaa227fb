"""`radbridge audit export`: the audit log as FHIR R4 AuditEvents (after IHE BALP) or DICOM ATNA messages.

Only what the table holds in clear is exported: who, from where, what, which record ids and blind
indexes, when, outcome, why. The sealed detail never leaves. Each exported event carries its chain
position (node, seq, hash, previous hash), so an export can be matched against `audit verify`.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import Engine, and_, or_, select

from engine.audit import codes
from engine.core.clock import iso
from engine.store.tables import AuditRow

_audit = AuditRow.__table__
# Columns read for export: everything but the sealed detail, which is never exported.
_COLUMNS = [c for c in _audit.c if c.name != "detail"]
FORMATS = ("fhir", "fhir-ndjson", "atna")


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _chain_extension(row: Mapping[str, Any]) -> dict[str, Any]:
    parts = [
        {"url": "node", "valueString": row["node"]},
        {"url": "seq", "valueInteger": row["seq"]},
        {"url": "hash", "valueString": row["hash"]},
        {"url": "prevHash", "valueString": row["prev_hash"]},
    ]
    if row["peer"]:  # kept verbatim: agent.network only takes what is a network address
        parts.append({"url": "peer", "valueString": row["peer"]})
    return {"url": codes.RB_CHAIN, "extension": parts}


def _agent(row: Mapping[str, Any]) -> dict[str, Any]:
    actor, action = row["actor"], row["action"]
    agent: dict[str, Any] = {
        "type": {"coding": [_coding(*codes.actor_role(actor, action))]},
        "who": {"identifier": {"system": codes.RB_ACTOR, "value": actor}, "display": actor},
        "requestor": codes.is_requestor(actor),
    }
    address = codes.network_address(row["peer"], actor)
    if address:
        agent["network"] = {"address": address[0], "type": address[1]}
    if row["purpose"]:
        agent["purposeOfUse"] = [_purpose(row["purpose"])]
    return agent


def _purpose(purpose: str) -> dict[str, Any]:
    return {"coding": [_coding(*codes.purpose_coding(purpose))], "text": purpose}


def _entities(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    # Blind indexes describe the entry as a whole (in practice one message each), so every record
    # entity carries them; an entry with indexes but no records (a search) gets one entity for them.
    details = [
        {"type": f"blind-index:{kind}", "valueString": value}
        for kind, value in sorted(json.loads(row["indexes"] or "{}").items())
    ]
    system_object = _coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object")
    entities: list[dict[str, Any]] = []
    for record_id in json.loads(row["record_ids"] or "[]"):
        entity: dict[str, Any] = {
            "what": {"identifier": {"system": codes.RB_RECORD, "value": record_id}},
            "type": system_object,
            "role": _coding("http://terminology.hl7.org/CodeSystem/object-role", "4", "Domain Resource"),
        }
        if details:
            entity["detail"] = details
        entities.append(entity)
    if details and not entities:
        entities.append({"type": system_object, "detail": details})
    return entities


def audit_event(row: Mapping[str, Any]) -> dict[str, Any]:
    """One audit_log row as a FHIR R4 AuditEvent (a dict), validated with fhir.resources."""
    event = codes.event_codes(row["action"])
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": row["id"],
        "extension": [_chain_extension(row)],
        "type": _coding(codes.DCM, *event.type),
        "subtype": [_coding(codes.DCM, *event.subtype)] if event.subtype else [],
        "action": event.action,
        "recorded": row["ts"],
        "outcome": codes.OUTCOME_CODES[row["outcome"]],
        "outcomeDesc": row["outcome"],
        "agent": [_agent(row)],
        "source": {
            "observer": {"identifier": {"system": codes.RB_NODE, "value": row["node"]}, "display": row["node"]},
            "type": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")],
        },
    }
    resource["subtype"].append(_coding(codes.RB_ACTION, row["action"], row["action"]))
    if row["purpose"]:
        resource["purposeOfEvent"] = [_purpose(row["purpose"])]
    entities = _entities(row)
    if entities:
        resource["entity"] = entities
    AuditEvent.model_validate(resource)  # raises on anything that is not a valid R4B AuditEvent
    return resource


def to_fhir(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [audit_event(row) for row in rows]


def bundle_entries(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bundle entries for these AuditEvents, validated as (part of) a collection Bundle."""
    entries = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]
    Bundle.model_validate({"resourceType": "Bundle", "type": "collection", "entry": entries})
    return entries


# -- ATNA (DICOM PS3.15 A.5) -------------------------------------------------------------------------


def _coded(parent: ET.Element, tag: str, code: str, system_name: str, text: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system_name, "originalText": text})


def _object(parent: ET.Element, object_id: str, id_type: tuple[str, str], role: str, name: str) -> ET.Element:
    obj = ET.SubElement(
        parent,
        "ParticipantObjectIdentification",
        {"ParticipantObjectID": object_id, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": role},
    )
    _coded(obj, "ParticipantObjectIDTypeCode", id_type[0], codes.ATNA_RB, id_type[1])
    ET.SubElement(obj, "ParticipantObjectName").text = name
    return obj


def _detail(obj: ET.Element, type_: str, value: str) -> None:
    # A.5 ValuePair: the value is base64, so no text can break the XML around it.
    ET.SubElement(obj, "ParticipantObjectDetail", {"type": type_, "value": base64.b64encode(value.encode()).decode()})


def audit_message(row: Mapping[str, Any]) -> ET.Element:
    """One audit_log row as a DICOM PS3.15 A.5 AuditMessage."""
    event = codes.event_codes(row["action"])
    message = ET.Element("AuditMessage")
    ident = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": event.action,
            "EventDateTime": row["ts"],
            "EventOutcomeIndicator": codes.OUTCOME_CODES[row["outcome"]],
        },
    )
    _coded(ident, "EventID", event.type[0], "DCM", event.type[1])
    if event.subtype:
        _coded(ident, "EventTypeCode", event.subtype[0], "DCM", event.subtype[1])
    _coded(ident, "EventTypeCode", row["action"], codes.ATNA_RB, row["action"])
    ET.SubElement(ident, "EventOutcomeDescription").text = row["outcome"]

    actor = row["actor"]
    participant = ET.SubElement(
        message,
        "ActiveParticipant",
        {"UserID": actor, "UserIsRequestor": "true" if codes.is_requestor(actor) else "false"},
    )
    system, role_code, role_text = codes.actor_role(actor, row["action"])
    _coded(participant, "RoleIDCode", role_code, "DCM" if system == codes.DCM else system, role_text)
    address = codes.network_address(row["peer"], actor)
    if address:
        participant.set("NetworkAccessPointID", address[0])
        participant.set("NetworkAccessPointTypeCode", address[1])

    source = ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": row["node"]})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server process

    indexes = sorted(json.loads(row["indexes"] or "{}").items())
    for record_id in json.loads(row["record_ids"] or "[]"):
        obj = _object(message, record_id, ("record-id", "radbridge record id"), "4", record_id)
        for kind, value in indexes:
            _detail(obj, f"blind-index:{kind}", value)
    # The entry itself, as a security resource: its chain position, the raw peer and the purpose of
    # use (this A.5 schema has no PurposeOfUse element), plus indexes when no record carries them.
    entry = _object(message, row["id"], ("audit-entry", "radbridge audit entry"), "13", f"{row['node']}#{row['seq']}")
    for type_, value in (
        ("node", row["node"]),
        ("seq", str(row["seq"])),
        ("hash", row["hash"]),
        ("prevHash", row["prev_hash"]),
        ("peer", row["peer"]),
        ("purpose", row["purpose"]),
    ):
        if value:
            _detail(entry, type_, value)
    if not json.loads(row["record_ids"] or "[]"):
        for kind, value in indexes:
            _detail(entry, f"blind-index:{kind}", value)
    return message


def to_atna(rows: Iterable[Mapping[str, Any]]) -> str:
    """One AuditMessage per line: each line a complete XML document, as a syslog transport sends them."""
    return "".join(ET.tostring(audit_message(row), encoding="unicode") + "\n" for row in rows)


# -- reading and writing -----------------------------------------------------------------------------


def read_batches(
    engine: Engine, since: str | None = None, until: str | None = None, batch: int = 500
) -> Iterator[list[dict[str, Any]]]:
    """Rows in (node, seq) order, `batch` at a time (keyset paging: memory stays bounded on any size).

    since/until compare with ts (inclusive, exclusive); both are RFC 3339 UTC in the engine's one form,
    so text order is time order.
    """
    after: tuple[str, int] | None = None
    while True:
        query = select(*_COLUMNS).order_by(_audit.c.node, _audit.c.seq).limit(batch)
        if since:
            query = query.where(_audit.c.ts >= since)
        if until:
            query = query.where(_audit.c.ts < until)
        if after:
            node, seq = after
            query = query.where(or_(_audit.c.node > node, and_(_audit.c.node == node, _audit.c.seq > seq)))
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        if not rows:
            return
        yield rows
        after = (rows[-1]["node"], rows[-1]["seq"])


def write(batches: Iterable[list[dict[str, Any]]], fmt: str, out: TextIO) -> int:
    """Write the export; returns how many entries it holds."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    count = 0
    if fmt == "fhir":
        # Streamed as text around validated parts, so a large log is never one object in memory.
        header = {"resourceType": "Bundle", "type": "collection", "timestamp": iso()}
        Bundle.model_validate(header)
        out.write(json.dumps(header)[:-1])
    for rows in batches:
        if fmt == "atna":
            out.write(to_atna(rows))
        elif fmt == "fhir-ndjson":
            out.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in to_fhir(rows))
        else:
            for entry in bundle_entries(to_fhir(rows)):
                out.write((', "entry": [\n' if count == 0 else ",\n") + json.dumps(entry))
                count += 1
            continue
        count += len(rows)
    if fmt == "fhir":
        out.write("\n]}\n" if count else "}\n")  # FHIR JSON allows no empty arrays: no entries, no "entry"
    return count
