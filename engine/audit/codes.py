"""What each audit action means in DICOM/IHE terms: one table shared by the FHIR and ATNA exports.

An action maps to a DICOM audit event id (PS3.16 CID 400 style, system DCM), an optional DICOM event
type (the ATNA EventTypeCode, the FHIR subtype) and an action code C/R/U/D/E. Our own action name
always travels alongside, under the radbridge code system, so no meaning is lost to the mapping.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DCM = "http://dicom.nema.org/resources/ontology/DCM"
# radbridge's own identifiers: URNs, because the project publishes no FHIR canonical URLs of its own.
RB_ACTION = "urn:radbridge:fhir:CodeSystem:audit-action"
RB_PURPOSE = "urn:radbridge:fhir:CodeSystem:purpose-of-use"
RB_ACTOR = "urn:radbridge:actor"
RB_NODE = "urn:radbridge:node"
RB_RECORD = "urn:radbridge:record-id"
RB_CHAIN = "urn:radbridge:fhir:StructureDefinition:audit-chain"
ATNA_RB = "radbridge"  # codeSystemName for our codes in ATNA messages

Code = tuple[str, str]  # (code, display)

APPLICATION_ACTIVITY: Code = ("110100", "Application Activity")
AUDIT_LOG_USED: Code = ("110101", "Audit Log Used")
EXPORT: Code = ("110106", "Export")
IMPORT: Code = ("110107", "Import")
PATIENT_RECORD: Code = ("110110", "Patient Record")
QUERY: Code = ("110112", "Query")
SECURITY_ALERT: Code = ("110113", "Security Alert")
APPLICATION_START: Code = ("110120", "Application Start")
APPLICATION_STOP: Code = ("110121", "Application Stop")
SOFTWARE_CONFIGURATION: Code = ("110131", "Software Configuration")
ROLE_APPLICATION: Code = ("110150", "Application")
ROLE_DESTINATION: Code = ("110152", "Destination Role ID")
ROLE_SOURCE: Code = ("110153", "Source Role ID")


@dataclass(frozen=True)
class EventCodes:
    type: Code
    subtype: Code | None
    action: str  # C | R | U | D | E


ACTIONS: dict[str, EventCodes] = {
    # a message arriving is data imported into the engine's store (created there)
    "message.received": EventCodes(IMPORT, None, "C"),
    "message.reprocessed": EventCodes(IMPORT, None, "C"),
    "message.duplicate": EventCodes(IMPORT, None, "E"),
    "message.truncated": EventCodes(IMPORT, None, "E"),
    "message.oversize": EventCodes(IMPORT, None, "E"),
    # DICOM: a peer refused at association (allow-list, TLS, AE titles, load); a modality's MPPS
    # step discontinued (received from it, nothing imported)
    "association.refused": EventCodes(SECURITY_ALERT, None, "E"),
    "procedure.discontinued": EventCodes(IMPORT, None, "E"),
    # a sender turned away before anything was read or stored (bad credentials, address not allowed)
    "webhook.refused": EventCodes(SECURITY_ALERT, None, "E"),
    # a delivery attempt reads the stored message and sends it out
    "message.sent": EventCodes(EXPORT, None, "R"),
    "message.send_failed": EventCodes(EXPORT, None, "R"),
    "message.dead": EventCodes(EXPORT, None, "R"),
    "message.viewed": EventCodes(PATIENT_RECORD, None, "R"),
    "message.searched": EventCodes(QUERY, None, "E"),
    "config.loaded": EventCodes(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "R"),
    "config.changed": EventCodes(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "U"),
    "config.reload_refused": EventCodes(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "U"),
    "engine.started": EventCodes(APPLICATION_ACTIVITY, APPLICATION_START, "E"),
    "engine.stopped": EventCodes(APPLICATION_ACTIVITY, APPLICATION_STOP, "E"),
    "audit.verified": EventCodes(AUDIT_LOG_USED, None, "E"),
    "audit.exported": EventCodes(AUDIT_LOG_USED, None, "R"),
    "retention.purged": EventCodes(PATIENT_RECORD, None, "D"),
    "keys.rotated": EventCodes(SECURITY_ALERT, None, "U"),
    "keys.retired": EventCodes(SECURITY_ALERT, None, "U"),
    # the engine turned away by a PACS (HTTP 401/403, association rejected), or a PACS feed gone backwards
    "pacs.unauthorized": EventCodes(SECURITY_ALERT, None, "E"),
    "pacs.rejected": EventCodes(SECURITY_ALERT, None, "E"),
    "pacs.feed_reset": EventCodes(APPLICATION_ACTIVITY, None, "E"),
    # correlation: the order registry and study state (patient records created or updated)
    "order.registered": EventCodes(PATIENT_RECORD, None, "C"),
    "order.updated": EventCodes(PATIENT_RECORD, None, "U"),
    "order.cancelled": EventCodes(PATIENT_RECORD, None, "U"),
    "order.expired": EventCodes(PATIENT_RECORD, None, "U"),
    "order.rekeyed": EventCodes(PATIENT_RECORD, None, "U"),
    "order.ignored": EventCodes(PATIENT_RECORD, None, "E"),
    "study.stable": EventCodes(PATIENT_RECORD, None, "U"),
    "study.waiting": EventCodes(PATIENT_RECORD, None, "U"),
    "study.ready": EventCodes(PATIENT_RECORD, None, "U"),
    "study.linked": EventCodes(PATIENT_RECORD, None, "U"),
    "study.updated": EventCodes(PATIENT_RECORD, None, "U"),
    "study.cancelled": EventCodes(PATIENT_RECORD, None, "U"),
    "study.held": EventCodes(PATIENT_RECORD, None, "U"),
    "study.dropped": EventCodes(PATIENT_RECORD, None, "D"),
    "study.late_ignored": EventCodes(PATIENT_RECORD, None, "E"),
    "study.notified": EventCodes(PATIENT_RECORD, None, "E"),
    "study.viewed": EventCodes(PATIENT_RECORD, None, "R"),
    "study.released": EventCodes(PATIENT_RECORD, None, "U"),
    "correlation.mismatch": EventCodes(SECURITY_ALERT, None, "E"),
    "keys.exported": EventCodes(SECURITY_ALERT, None, "R"),
    "store.backup": EventCodes(EXPORT, None, "R"),
    "store.restored": EventCodes(PATIENT_RECORD, None, "C"),
    # inference, de-identification and disclosures
    "inference.requested": EventCodes(PATIENT_RECORD, None, "E"),
    "inference.completed": EventCodes(PATIENT_RECORD, None, "C"),
    "inference.viewed": EventCodes(PATIENT_RECORD, None, "R"),
    "disclosure.recorded": EventCodes(EXPORT, None, "R"),
    "disclosure.viewed": EventCodes(PATIENT_RECORD, None, "R"),
    "deid.exported": EventCodes(EXPORT, None, "R"),
    "phi.reveal": EventCodes(PATIENT_RECORD, None, "R"),
    # the web: a person looking at patient-bearing lists, their feedback on AI findings, operators' actions
    "worklist.viewed": EventCodes(PATIENT_RECORD, None, "R"),
    "finding.feedback": EventCodes(PATIENT_RECORD, None, "C"),
    "channel.started": EventCodes(APPLICATION_ACTIVITY, APPLICATION_START, "E"),
    "channel.stopped": EventCodes(APPLICATION_ACTIVITY, APPLICATION_STOP, "E"),
    "dead_letter.retried": EventCodes(EXPORT, None, "R"),
    "dead_letter.discarded": EventCodes(PATIENT_RECORD, None, "D"),
    "audit.viewed": EventCodes(AUDIT_LOG_USED, None, "R"),
    "compliance.reported": EventCodes(AUDIT_LOG_USED, None, "R"),
    "compliance.attested": EventCodes(SECURITY_ALERT, None, "C"),
}
# Actions added later still export sensibly: by their prefix, else as application activity.
PREFIXES: dict[str, EventCodes] = {
    "message.": EventCodes(PATIENT_RECORD, None, "E"),
    "connection.": EventCodes(SECURITY_ALERT, None, "E"),
    "config.": EventCodes(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "E"),
    "audit.": EventCodes(AUDIT_LOG_USED, None, "E"),
    "auth.": EventCodes(SECURITY_ALERT, None, "E"),
    "model.": EventCodes(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "U"),
    "result.": EventCodes(PATIENT_RECORD, None, "C"),
    "user.": EventCodes(SECURITY_ALERT, None, "U"),
}
DEFAULT = EventCodes(APPLICATION_ACTIVITY, None, "E")


def event_codes(action: str) -> EventCodes:
    if action in ACTIONS:
        return ACTIONS[action]
    prefix = action.split(".", 1)[0] + "."
    return PREFIXES.get(prefix, DEFAULT)


# FHIR R4 AuditEvent.outcome / DICOM EventOutcomeIndicator. A denial is the caller's problem (like an
# HTTP 4xx: minor failure); a failure is ours (like a 5xx: serious failure).
OUTCOME_CODES = {"success": "0", "denied": "4", "failure": "8"}

V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PURPOSES: dict[str, Code] = {
    "treatment": ("TREAT", "treatment"),
    "emergency": ("ETREAT", "Emergency Treatment"),
    "operations": ("HOPERAT", "healthcare operations"),
    "payment": ("HPAYMT", "healthcare payment"),
    "research": ("HRESCH", "healthcare research"),
}

# What the audit log's clear `purpose` column may hold; anything else is sealed in the detail as
# purpose_text and the column says "other". BTG: break the glass (HL7 v3 ActReason).
PURPOSE_CODES = frozenset({*PURPOSES, *(code for code, _ in PURPOSES.values()), "BTG", "other"})


def purpose_coding(purpose: str) -> tuple[str, str, str]:
    """(system, code, display): a v3 ActReason where one fits, else our own code system."""
    known = PURPOSES.get(purpose.lower())
    return (V3_ACT_REASON, *known) if known else (RB_PURPOSE, purpose, purpose)


def actor_role(actor: str, action: str) -> tuple[str, str, str]:
    """(system, code, display) of the agent type: a person, the engine, or the remote system."""
    kind = actor.split(":", 1)[0]
    if kind == "user":
        return ("http://terminology.hl7.org/CodeSystem/extra-security-role-type", "humanuser", "human user")
    # the remote system (by address, certificate name or DICOM AE title): where data came from, or went
    if kind in ("peer", "ae"):
        return (DCM, *(ROLE_DESTINATION if event_codes(action).type == EXPORT else ROLE_SOURCE))
    return (DCM, *ROLE_APPLICATION)


def is_requestor(actor: str) -> bool:
    """Users and remote peers start what they are audited for; the engine acts on their behalf."""
    return actor.startswith(("user:", "peer:", "ae:"))


def network_address(peer: str | None, actor: str) -> tuple[str, str] | None:
    """(address, type) with type "2" for an IP address, "1" for a machine name; None when the peer is
    not a network endpoint (an internal topic, the store on reprocess)."""
    candidates = [peer] if peer else []
    if actor.startswith("peer:"):
        candidates.append(actor[5:])
    for value in candidates:
        host, port = value, ""
        if value.startswith("[") and "]" in value:
            host, port = value[1 : value.index("]")], value[value.index("]") + 2 :]
        elif value.count(":") == 1:
            host, port = value.split(":")
        try:
            return str(ipaddress.ip_address(host)), "2"
        except ValueError:
            if port.isdigit() and host and all(part.isalnum() or "-" in part for part in host.split(".")):
                return host, "1"
    return None
