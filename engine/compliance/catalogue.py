"""The evidence items of the compliance report, in report order.

Each entry is a function taking an `Evidence` and returning an `Item` (or a list of them). To add an
item, write such a function (in a module named for what it checks) and list it here. A function that
raises is reported as a failed item naming the exception class, so one broken check never hides the rest.
"""

from __future__ import annotations

from engine.compliance.at_rest import blind_indexes, encryption_at_rest
from engine.compliance.attestations import attestation_items
from engine.compliance.evidence import Evidence, Item, ItemFn
from engine.compliance.external import deidentification
from engine.compliance.operations import audit_controls, backups, integrity, key_escrow, restore_test, retention
from engine.compliance.people import break_glass, users_and_authentication
from engine.compliance.roles import access_matrix
from engine.compliance.sbom import sbom_item
from engine.compliance.transport import peer_authentication, transmission_clients, transmission_listeners
from engine.compliance.vulns import vulnerability_item

ITEMS: list[ItemFn] = [
    encryption_at_rest,
    blind_indexes,
    access_matrix,
    users_and_authentication,
    break_glass,
    audit_controls,
    integrity,
    backups,
    restore_test,
    peer_authentication,
    transmission_listeners,
    transmission_clients,
    retention,
    key_escrow,
    deidentification,
    sbom_item,
    vulnerability_item,
    attestation_items,
]


def collect(ev: Evidence, items: list[ItemFn] | None = None) -> list[Item]:
    out: list[Item] = []
    for fn in ITEMS if items is None else items:
        try:
            produced = fn(ev)
        except Exception as exc:  # noqa: BLE001 - reported as a failed item; the class only, never a message
            name = getattr(fn, "__name__", "item").replace("_", "-")
            out.append(Item(name, "checklist", "-", name, "fail", f"could not be evaluated ({type(exc).__name__})"))
            continue
        out += produced if isinstance(produced, list) else [produced]
    return out
