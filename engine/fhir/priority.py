"""A worklist priority update (canonical record `priority_update`) as FHIR requests: a JSON Patch
(RFC 6902) setting `priority` on the ServiceRequest of each order, found by its accession number,
or on the open Tasks based on it.

Three ways, per the destination's `priority_update` (all three work with HAPI FHIR):
- servicerequest-conditional: one `PATCH ServiceRequest?identifier=<system>|<accession>` per order
  (conditional patch: the server finds the one match; none -> 404, several -> 412);
- servicerequest-patch: `GET ServiceRequest?identifier=...`, then `PATCH ServiceRequest/<id>` with
  If-Match on the version read, for servers without conditional patch;
- task: `GET Task?based-on:ServiceRequest.identifier=...&status=<open statuses>`, then `PATCH Task/<id>`
  with If-Match for each open Task (a reading worklist that works from Tasks).

The patch is `add /priority` (RFC 6902 §4.1: add replaces an existing member and creates a missing one,
where `replace` would fail on a ServiceRequest that has no priority yet). Setting the same priority
again changes nothing, so a retried update is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from engine.fhir.bundle import compact
from engine.fhir.options import FhirOptions, identifier_system, search_token
from engine.fhir.report import OrderKeys

__all__ = ["OPEN_TASK_STATUSES", "PriorityMode", "PriorityRecord", "accession_tokens", "priority_patch",
           "search_url", "target_url"]  # fmt: skip

PriorityMode = Literal["servicerequest-conditional", "servicerequest-patch", "task"]
OPEN_TASK_STATUSES = ("requested", "received", "accepted", "ready", "in-progress", "on-hold")


class PriorityRecord(Protocol):
    """What the builders read of a `priority_update` record (engine.mapping.records.PriorityUpdate, validated
    by the caller)."""

    @property
    def update_id(self) -> str: ...
    @property
    def orders(self) -> Sequence[OrderKeys]: ...
    @property
    def priority(self) -> str: ...


def priority_patch(update: PriorityRecord) -> bytes:
    """The JSON Patch document, as sent (deterministic bytes)."""
    return compact([{"op": "add", "path": "/priority", "value": update.priority}])


def accession_tokens(update: PriorityRecord, options: FhirOptions) -> list[str]:
    """`system|accession` search tokens of the orders to raise, in order, without repeats. ValueError when
    no order names an accession (there is nothing to find the ServiceRequest by)."""
    tokens = []
    for order in update.orders:
        if order.accession:
            system = identifier_system(
                order.accession_issuer, options.accession_identifier_systems, options.accession_identifier_system
            )
            tokens.append(search_token(system, order.accession))
    if not tokens:
        raise ValueError(f"priority update {update.update_id} names no order accession")
    return list(dict.fromkeys(tokens))


def search_url(mode: PriorityMode, token: str) -> str:
    """The search (relative to the base URL) that finds what a GET-then-PATCH mode patches."""
    if mode == "task":
        return f"Task?based-on:ServiceRequest.identifier={token}&status={','.join(OPEN_TASK_STATUSES)}"
    return f"ServiceRequest?identifier={token}"


def target_url(mode: PriorityMode, token: str) -> str | None:
    """The conditional PATCH URL (servicerequest-conditional), None for the modes that search first."""
    return f"ServiceRequest?identifier={token}" if mode == "servicerequest-conditional" else None
