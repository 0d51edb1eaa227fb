"""Pure decisions of the matcher: the wrong-patient guard and the facts a study.ready carries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from engine.dicom import InstanceHeader

PRIORITY_RANK = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}


def _digits(value: Any) -> str:
    return "".join(ch for ch in str(value or "") if ch.isdigit())


def patient_mismatch(header: InstanceHeader, order: Mapping[str, Any], check: Iterable[str]) -> list[str]:
    """Names of the patient facts that disagree between the DICOM header and the order (empty: same patient).
    A fact missing on one side is not evidence of a mismatch, except the patient id itself."""
    problems = []
    for name in check:
        if name == "patient_id":
            if not header.patient_id or header.patient_id.strip() != str(order.get("patient_id") or "").strip():
                problems.append("patient_id")
        elif name == "issuer":
            a, b = header.patient_id_issuer.strip().upper(), str(order.get("patient_id_issuer") or "").strip().upper()
            if a and b and a != b:
                problems.append("issuer")
        elif name == "birth_date":
            a, b = _digits(header.birth_date), _digits(order.get("birth_date"))
            if a and b and a != b:
                problems.append("birth_date")
        elif name == "sex":
            a, b = header.sex[:1].upper(), str(order.get("sex") or "")[:1].upper()
            if a and b and a != b:
                problems.append("sex")
    return problems


def highest_priority(priorities: Iterable[str | None]) -> str:
    found = [p for p in priorities if p in PRIORITY_RANK]
    return min(found, key=PRIORITY_RANK.__getitem__) if found else "routine"


ORDER_FIELDS = (
    "accession", "accession_issuer", "placer_number", "filler_number", "requested_procedure_id", "priority",
    "procedure_code", "procedure_text", "modality", "body_part", "reason", "ordering_provider",
)  # fmt: skip


def order_summary(order_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    out = {"order_id": order_id}
    out.update({k: fields[k] for k in ORDER_FIELDS if fields.get(k) not in (None, "")})
    return out


def ready_fields(
    *,
    study_id: str,
    header: InstanceHeader,
    content: Any,
    orders: list[tuple[str, Mapping[str, Any]]],
    trigger: str,
    partial: bool,
) -> dict[str, Any]:
    """The study.ready record: order + study + the routing facts (modality, body part, procedure, priority)."""
    first = orders[0][1] if orders else {}
    return {
        "study_id": study_id,
        "study_uid": header.study_uid,
        "accessions": list(header.accessions),
        "patient_id": str(first.get("patient_id") or header.patient_id),
        "patient_id_issuer": str(first.get("patient_id_issuer") or header.patient_id_issuer),
        "patient_name": str(first.get("patient_name") or header.patient_name),
        "birth_date": str(first.get("birth_date") or header.birth_date),
        "sex": str(first.get("sex") or header.sex),
        "study_date": header.study_date,
        "study_description": header.study_description,
        "content_hash": content.hash,
        "instances": content.count,
        "series": content.series,
        "modalities": list(content.modalities),
        "body_parts": list(content.body_parts),
        "modality": (content.modalities[0] if content.modalities else str(first.get("modality") or "")),
        "body_part": (content.body_parts[0] if content.body_parts else str(first.get("body_part") or "")),
        "procedure_code": str(first.get("procedure_code") or ""),
        "procedure_text": str(first.get("procedure_text") or header.study_description),
        "calling_ae": header.calling_ae,
        "site": header.institution,
        "priority": highest_priority(o.get("priority") for _, o in orders),
        "orders": [order_summary(i, o) for i, o in orders],
        "matched": bool(orders),
        "partial": partial,
        "trigger": trigger,
    }
