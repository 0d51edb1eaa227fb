"""The `fhir` destination over real HTTP against a FHIR server with OAuth2 (tests.fhir.server): delivery,
idempotency (a retry after a timeout makes no second report), the report lifecycle, every error path,
the release policy, and what reaches errors and logs (never patient data)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from engine.connectors.fhir import WITHHELD_OFF, WITHHELD_SHADOW, FhirDestinationConfig
from engine.core.component import Outbound
from engine.core.errors import PermanentError, RetryableError
from engine.fhir.client import FhirRefused, FhirUnavailable
from tests.fhir.records import OPTIONS, result_fields
from tests.fhir.server import FhirServer
from tests.fhir.site import CLIENT_ID, SECRET, Site, message
from tests.fhir.test_report import corrected_fields
from tests.phi import ACCESSION, MRN, NAME_FAMILY, STRINGS


def _reports(server: FhirServer) -> list[dict[str, Any]]:
    return server.all("DiagnosticReport")


async def test_result_lands_as_report_with_observations(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dest = site.destination()
    delivered = await dest.send(message(result_fields()))
    await dest.close()
    assert delivered.detail == "DiagnosticReport/1 201, Observation/2 201, Observation/3 201"
    [report] = _reports(site.server)
    assert report["status"] == "preliminary"
    assert report["result"] == [{"reference": "Observation/2"}, {"reference": "Observation/3"}]
    assert [o["status"] for o in site.server.all("Observation")] == ["preliminary", "preliminary"]
    answer = json.loads(delivered.response or b"")
    assert answer["type"] == "transaction-response" and len(answer["entry"]) == 3
    [seen] = site.server.requests
    assert seen.headers["content-type"] == "application/fhir+json" and seen.headers["prefer"] == "return=minimal"
    assert seen.headers["authorization"].startswith("Bearer ")
    assert site.issuer.forms[0] == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("uvicorn"))  # not the peer's
    for text in (delivered.detail, ours):
        assert not [s for s in STRINGS if s in text]


async def test_sent_twice_is_one_report(site: Site) -> None:
    dest = site.destination()
    await dest.send(message(result_fields()))
    again = await dest.send(message(result_fields()))
    await dest.close()
    assert again.detail == "DiagnosticReport/1 200, Observation/2 200, Observation/3 200"
    assert len(_reports(site.server)) == 1 and len(site.server.all("Observation")) == 2


async def test_a_retry_after_a_timeout_creates_no_duplicate_report(site: Site) -> None:
    site.server.delay = 1.5  # commits, then answers after the client gave up
    dest = site.destination(timeout_s=0.5)
    with pytest.raises(RetryableError) as caught:
        await dest.send(message(result_fields()))
    assert isinstance(caught.value, FhirUnavailable) and "transaction" in str(caught.value)
    assert len(_reports(site.server)) == 1  # the server did process it
    site.server.delay = 0
    delivered = await dest.send(message(result_fields()))  # what the delivery queue's retry does
    await dest.close()
    assert delivered.detail.startswith("DiagnosticReport/1 200")
    assert len(_reports(site.server)) == 1 and len(site.server.all("Observation")) == 2


async def test_correction_then_withdrawal(site: Site) -> None:
    dest = site.destination()
    await dest.send(message(result_fields()))
    corrected = await dest.send(message(corrected_fields(), n=2))
    assert corrected.detail == "DiagnosticReport/1 200, Observation/4 201, Observation/2 200, Observation/3 200"
    [report] = _reports(site.server)
    assert report["status"] == "amended" and report["result"] == [{"reference": "Observation/4"}]
    assert {o["id"]: o["status"] for o in site.server.all("Observation")} == {
        "2": "entered-in-error", "3": "entered-in-error", "4": "amended"}  # fmt: skip
    again = await dest.send(message(corrected_fields(), n=2))  # a retry of the correction changes nothing
    assert again.detail == "DiagnosticReport/1 200, Observation/4 200"
    await dest.send(message(corrected_fields(3, "withdrawn"), n=3))
    await dest.close()
    [report] = _reports(site.server)
    assert report["status"] == "entered-in-error" and report["result"] == [{"reference": "Observation/4"}]
    assert {o["status"] for o in site.server.all("Observation")} == {"entered-in-error"}
    search = site.server.requests[1]
    assert search.method == "GET" and "_include=DiagnosticReport:result" in search.url


async def test_expired_token_is_refreshed_once_then_permanent(site: Site) -> None:
    dest = site.destination()
    await dest.send(message(result_fields()))
    site.issuer.revoke_all()
    await dest.send(message(result_fields()))
    assert (site.issuer.issued, site.issuer.rejected) == (2, 1)
    site.server.auth = lambda request: False  # every token refused
    with pytest.raises(PermanentError) as caught:
        await dest.send(message(result_fields(), n=3))
    await dest.close()
    assert str(caught.value) == ("fhir destination of ai-fhir: message M3: transaction: HTTP 401 "
                                 "(OperationOutcome: login): credentials refused")  # fmt: skip
    assert site.issuer.issued == 3  # one fresh token, one retry, then give up


@pytest.mark.parametrize(
    ("status", "headers", "wait"), [(429, {"Retry-After": "7"}, 7.0), (503, {"Retry-After": "3"}, 3.0), (500, {}, None)]
)
async def test_busy_and_failing_servers_are_retryable(site: Site, status: int, headers: dict[str, str],
                                                      wait: float | None) -> None:  # fmt: skip
    site.server.script = [(status, headers, b"")]
    dest = site.destination()
    with pytest.raises(FhirUnavailable) as caught:
        await dest.send(message(result_fields()))
    await dest.close()
    assert caught.value.retry_after == wait
    assert str(caught.value) == f"fhir destination of ai-fhir: message M1: transaction: HTTP {status}"


async def test_forbidden_is_permanent(site: Site) -> None:
    site.server.script = [(403, {}, b"")]
    dest = site.destination()
    with pytest.raises(FhirRefused, match="transaction: HTTP 403: forbidden"):
        await dest.send(message(result_fields()))
    await dest.close()


async def test_refusal_names_issue_codes_never_diagnostics(site: Site) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": f"Patient {MRN} {NAME_FAMILY} unknown",
         "details": {"coding": [{"system": "https://hapifhir.io/errors", "code": "HAPI-1821"}],
                     "text": f"accession {ACCESSION}"}},
        {"severity": "error", "code": f"bad {MRN}"},
    ]}  # fmt: skip
    body = json.dumps(outcome).encode()
    site.server.script = [(400, {}, body)]
    dest = site.destination()
    with pytest.raises(PermanentError) as caught:
        await dest.send(message(result_fields()))
    await dest.close()
    assert str(caught.value) == ("fhir destination of ai-fhir: message M1: transaction: HTTP 400 "
                                 "(OperationOutcome: invalid, HAPI-1821)")  # fmt: skip
    assert caught.value.response == body  # type: ignore[attr-defined]  # kept sealed by the delivery queue


async def test_release_off_makes_no_request(site: Site) -> None:
    dest = site.destination(release="off")
    delivered = await dest.send(message(result_fields()))
    await dest.close()
    assert delivered.detail == WITHHELD_OFF and delivered.response is None
    assert site.server.requests == [] and site.issuer.forms == []
    assert FhirDestinationConfig.model_validate({**OPTIONS.model_dump(), "base_url": "https://f.test"}).release == "off"


async def test_shadow_result_is_withheld(site: Site) -> None:
    dest = site.destination()
    delivered = await dest.send(message(result_fields(clinical=False)))
    await dest.close()
    assert delivered.detail == WITHHELD_SHADOW and site.server.requests == []


async def test_bad_messages_are_permanent_without_content(site: Site) -> None:
    dest = site.destination()
    with pytest.raises(PermanentError, match="message M1: body is not JSON"):
        await dest.send(Outbound("M1", "ehr", f"{MRN} not json".encode(), "record"))
    with pytest.raises(PermanentError, match="message M1: record type 'order' is not sent to FHIR"):
        await dest.send(message({"event": "accepted", "patient_id": MRN}, kind="order"))
    with pytest.raises(PermanentError) as caught:
        await dest.send(message(result_fields(revision="x")))
    await dest.close()
    assert str(caught.value).endswith("message M1: not a valid result record (fields: revision)")
    assert site.server.requests == []


async def test_bad_secret_is_permanent_and_never_shown(site: Site) -> None:
    wrong = "cs-" + "WRONGwrong" * 3
    dest = site.destination(auth={"oauth2": {"token_url": site.issuer.url, "client_id": CLIENT_ID,
                                             "client_secret": wrong}})  # fmt: skip
    with pytest.raises(PermanentError) as caught:
        await dest.send(message(result_fields()))
    await dest.close()
    assert str(caught.value) == "fhir destination of ai-fhir: token endpoint refused: 401"
    assert wrong not in repr(caught.value) and site.server.requests == []


async def test_static_bearer_401_is_permanent_at_once(site: Site) -> None:
    dest = site.destination(auth={"bearer": "static-" + "x" * 20})
    with pytest.raises(PermanentError, match="HTTP 401"):
        await dest.send(message(result_fields()))
    await dest.close()
    assert len(site.server.requests) == 1
