"""Priority updates through the `fhir` destination over real HTTP, in its three modes: conditional PATCH of
the ServiceRequest, search then PATCH with If-Match, and the open Tasks based on the ServiceRequest."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from engine.core.errors import PermanentError
from engine.fhir.client import FhirUnavailable
from tests.fhir.records import OPTIONS, priority_fields
from tests.fhir.site import Site, message
from tests.phi import ACCESSION, MRN, STRINGS

ACCESSION_SYSTEM = "https://genhosp.example/fhir/accession"


def order(site: Site, accession: str = ACCESSION) -> dict[str, Any]:
    return site.server.put({
        "resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "routine",
        "identifier": [{"system": ACCESSION_SYSTEM, "value": accession}],
        "subject": {"identifier": {"system": OPTIONS.patient_identifier_system, "value": MRN}},
    })  # fmt: skip


def update() -> Any:
    return message(priority_fields(), kind="priority_update")


async def test_conditional_patch(site: Site) -> None:
    sr = order(site)
    dest = site.destination()
    delivered = await dest.send(update())
    await dest.close()
    assert delivered.detail == f"priority stat: ServiceRequest/{sr['id']} 200"
    assert site.server.store["ServiceRequest"][sr["id"]]["priority"] == "stat"
    [seen] = site.server.requests
    assert (seen.method, seen.headers["content-type"]) == ("PATCH", "application/json-patch+json")
    assert json.loads(seen.body) == [{"op": "add", "path": "/priority", "value": "stat"}]


async def test_search_then_patch_with_if_match(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sr = order(site)
    dest = site.destination(priority_update="servicerequest-patch")
    delivered = await dest.send(update())
    await dest.close()
    assert ACCESSION in site.server.requests[0].url  # the search names it; no log line does
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("uvicorn"))  # not the peer's
    assert not [s for s in STRINGS if s in ours or s in delivered.detail]
    assert delivered.detail == f"priority stat: ServiceRequest/{sr['id']} 200"
    search, patch = site.server.requests
    assert search.method == "GET" and patch.url == f"/fhir/ServiceRequest/{sr['id']}"
    assert patch.headers["if-match"] == 'W/"1"'
    assert site.server.store["ServiceRequest"][sr["id"]]["priority"] == "stat"


async def test_open_tasks(site: Site) -> None:
    sr = order(site)
    based_on = [{"reference": f"ServiceRequest/{sr['id']}"}]
    reading = site.server.put({"resourceType": "Task", "status": "ready", "intent": "order", "basedOn": based_on})
    done = site.server.put({"resourceType": "Task", "status": "completed", "intent": "order", "basedOn": based_on,
                            "priority": "routine"})  # fmt: skip
    dest = site.destination(priority_update="task")
    delivered = await dest.send(update())
    await dest.close()
    assert delivered.detail == f"priority stat: Task/{reading['id']} 200"
    tasks = site.server.store["Task"]
    assert tasks[reading["id"]]["priority"] == "stat" and tasks[done["id"]]["priority"] == "routine"
    assert site.server.store["ServiceRequest"][sr["id"]]["priority"] == "routine"


PREFIX = "fhir destination of ai-fhir: message M1: priority of order 1"


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("servicerequest-conditional",
         f"{PREFIX}: HTTP 404 (OperationOutcome: not-found): no ServiceRequest for the order's accession yet"),
        ("servicerequest-patch", f"{PREFIX}: no ServiceRequest for the order's accession yet"),
        ("task", f"{PREFIX}: no open Task for the order's accession yet"),
    ],
)  # fmt: skip
async def test_no_order_on_the_server_yet_is_retried(site: Site, mode: str, error: str) -> None:
    dest = site.destination(priority_update=mode)
    with pytest.raises(FhirUnavailable) as caught:
        await dest.send(update())
    await dest.close()
    assert str(caught.value) == error


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("servicerequest-conditional", f"{PREFIX}: HTTP 412 (OperationOutcome: multiple-matches)"),
        ("servicerequest-patch", f"{PREFIX}: 2 ServiceRequests carry the accession"),
    ],
)
async def test_two_orders_with_one_accession_is_permanent(site: Site, mode: str, error: str) -> None:
    order(site)
    order(site)
    dest = site.destination(priority_update=mode)
    with pytest.raises(PermanentError) as caught:
        await dest.send(update())
    await dest.close()
    assert str(caught.value) == error


async def test_stale_version_is_retried(site: Site) -> None:
    searchset = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "ServiceRequest", "id": "5", "meta": {"versionId": "1"}}}]}  # fmt: skip
    site.server.script = [(200, {}, json.dumps(searchset).encode()), (412, {}, b"")]
    dest = site.destination(priority_update="servicerequest-patch")
    with pytest.raises(FhirUnavailable, match="priority of order 1: HTTP 412: changed concurrently"):
        await dest.send(update())
    await dest.close()


async def test_release_off_sends_no_update(site: Site) -> None:
    order(site)
    dest = site.destination(release="off")
    assert (await dest.send(update())).detail == "withheld: release off"
    await dest.close()
    assert site.server.requests == []
