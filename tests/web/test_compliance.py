"""The compliance report and the accounting of disclosures over HTTP: the same report the command line
builds (the five §164.312 safeguards with statuses), a fresh development install flagged, kept for a
few minutes, PDF through Chromium or 503, every report and every accounting audited, no PHI back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from engine.compliance import pdf
from engine.core.ids import new_id
from engine.runtime.context import open_context
from engine.security.access import ROLES
from engine.security.passwords import Passwords
from engine.store.tables import Disclosure
from engine.store.users import Users
from engine.store.writer import WriteItem
from engine.web.app import create_app
from engine.web.site import Site
from tests import phi
from tests.conftest import write_project
from tests.inference.http.servers import serve
from tests.web.conftest import PASSWORD, Web

FIVE = ("access", "audit", "integrity", "authentication", "transmission")


@contextlib.contextmanager
def dev_web(root: Path) -> Iterator[Web]:
    """A fresh install on the development keyring, as the first `radbridge run` makes it, served with
    one user per role (tests/compliance/conftest.py's `fresh_dev`, behind the web app)."""
    ctx = open_context(write_project(root), create_dev_key=True)
    fast = Passwords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    users = Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, ctx.project.engine.auth, hasher=fast)
    for role in ROLES:
        users.add(role.replace("_", "-"), role, role, None if role == "service" else PASSWORD, "user:test")
    site = Site.open(ctx, lambda: (True, {}), users=users)
    app = create_app(site)
    try:
        with serve(app) as url:
            world = Web(ctx, site, url, site_app=app)
            try:
                yield world
            finally:
                for client in world.clients:
                    client.close()
    finally:
        ctx.close()


def _audited(web: Web, action: str) -> list[dict]:  # type: ignore[type-arg]
    return web.session("admin").get("/api/audit", params={"action": action}).json()["entries"]  # type: ignore[no-any-return]


def test_report_has_the_five_safeguards_with_statuses_and_is_audited(web: Web) -> None:
    auditor = web.session("auditor")
    response = auditor.get("/api/compliance")
    assert response.status_code == 200
    report = response.json()
    safeguards = {s["id"]: s for s in report["safeguards"]}
    for key in FIVE:
        assert safeguards[key]["title"].startswith("§164.312(") and safeguards[key]["items"], key
    items = {i["id"]: i for i in report["items"]}
    assert all(i["status"] in ("pass", "attention", "fail") and i["why"] for i in items.values())
    assert set(report["counts"]) == {"pass", "attention", "fail"} and sum(report["counts"].values()) == len(items)
    assert items["audit-chain"]["safeguard"] == "audit" and "verified" in items["audit-chain"]["evidence"]
    # the test project: a file keyring (not a development one) and a plaintext listener on loopback
    assert items["encryption-at-rest"]["evidence"]["development_keyring"] is False
    assert items["transmission-listeners"]["status"] == "attention"
    assert report["node"] == "test-node" and report["cached"] is False
    [entry] = _audited(web, "compliance.reported")
    assert entry["actor"] == "user:auditor" and entry["record_ids"] == [report["config_hash"]]
    assert entry["detail"]["outputs"] == {"web": "json"} and entry["detail"]["cached"] is False
    assert web.session("integration_analyst").get("/api/compliance").status_code == 403


def test_fresh_install_flags_the_dev_key_and_the_plaintext_listener(tmp_path: Path) -> None:
    with dev_web(tmp_path / "fresh-dev") as web:
        items = {i["id"]: i for i in web.session("auditor").get("/api/compliance").json()["items"]}
        page = web.session("auditor", accept_html=True).get("/compliance")
    at_rest = items["encryption-at-rest"]
    assert at_rest["status"] == "fail" and "development keyring" in at_rest["why"]
    listeners = items["transmission-listeners"]
    assert (
        listeners["status"] == "attention" and "plaintext on loopback: engine listener api (http)" in listeners["why"]
    )
    assert page.status_code == 200
    assert 'id="encryption-at-rest" data-status="fail"' in page.text
    assert 'id="transmission-listeners" data-status="attention"' in page.text


def test_report_is_kept_for_a_while_and_refreshed_on_demand(web: Web) -> None:
    auditor = web.session("auditor")
    first = auditor.get("/api/compliance").json()
    second = auditor.get("/api/compliance").json()
    assert second["cached"] is True and second["generated_at"] == first["generated_at"]
    third = auditor.get("/api/compliance", params={"refresh": "true"}).json()
    assert third["cached"] is False and third["generated_at"] > first["generated_at"]
    page_client = web.session("auditor", accept_html=True)
    assert page_client.post("/compliance/refresh").status_code == 303
    assert [e["detail"]["cached"] for e in _audited(web, "compliance.reported")] == [False, False, True, False]


def test_page_renders_every_safeguard_and_item(web: Web) -> None:
    page = web.session("admin", accept_html=True).get("/compliance")
    assert page.status_code == 200
    for heading in ("§164.312(a)(1) Access control", "§164.312(b) Audit controls", "§164.312(c)(1) Integrity",
                    "§164.312(d) Person or entity authentication", "§164.312(e)(1) Transmission security"):  # fmt: skip
        assert heading in page.text
    for item in ("encryption-at-rest", "audit-chain", "peer-authentication", "transmission-listeners", "break-glass"):
        assert f'id="{item}"' in page.text
    assert 'href="/compliance.pdf"' in page.text and "<style" not in page.text  # the CSP forbids inline styles


@pytest.mark.skipif(pdf.find_browser() is None, reason="headless Chromium is not installed")
def test_pdf_is_printed_by_chromium(web: Web) -> None:
    response = web.session("auditor").get("/compliance.pdf")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF") and "attachment" in response.headers["content-disposition"]
    assert _audited(web, "compliance.reported")[0]["detail"]["outputs"] == {"web": "pdf"}


def test_pdf_without_chromium_says_so_with_503(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADBRIDGE_CHROMIUM", "/nonexistent/chromium")
    response = web.session("auditor").get("/compliance.pdf")
    assert response.status_code == 503 and "Chromium" in response.json()["error"]


def _disclose(web: Web, mrn: str, recipient: str, at: datetime, items: int) -> str:
    row = {"id": new_id(), "patient_idx": web.ctx.index("mrn", mrn), "recipient": recipient, "purpose": "inference",
           "method": "safe-harbor", "study_id": None, "job_id": None, "items": items, "at": at}  # fmt: skip
    web.ctx.writer.write(WriteItem(inserts=[(Disclosure.__table__, row)]))
    return row["id"]  # type: ignore[no-any-return]


def test_disclosures_by_identifier_in_the_body_audited_and_never_echoed(web: Web) -> None:
    first = _disclose(web, phi.MRN, "cxr@2024.3 models.example.test", datetime(2026, 2, 3, 8, 15, tzinfo=UTC), 12)
    _disclose(web, "MRN-TEST-0042", "someone else's vendor", datetime(2026, 3, 1, tzinfo=UTC), 1)
    auditor = web.session("auditor")
    response = auditor.post("/api/disclosures", json={"patient_id": phi.MRN, "reason": "patient request"})
    assert response.status_code == 200 and phi.leaks_in_bytes(response.content) == []
    body = response.json()
    assert body["count"] == 1
    assert body["disclosures"][0] == {"id": first, "at": "2026-02-03T08:15:00+00:00", "purpose": "inference",
                                      "recipient": "cxr@2024.3 models.example.test", "method": "safe-harbor",
                                      "items": 12}  # fmt: skip
    [entry] = _audited(web, "disclosure.viewed")
    assert entry["actor"] == "user:auditor" and entry["record_ids"] == [first]
    assert entry["indexes"] == {"mrn": web.ctx.index("mrn", phi.MRN)}
    assert auditor.post("/api/disclosures", json={"reason": "patient request"}).status_code == 422
    assert auditor.post("/api/disclosures", json={"patient_id": phi.MRN}).status_code == 422
    analyst = web.session("integration_analyst")
    assert analyst.post("/api/disclosures", json={"patient_id": phi.MRN, "reason": "x"}).status_code == 403
    # the page: a form posting the identifier; the answer does not show it back
    pages = web.session("auditor", accept_html=True)
    assert pages.get("/disclosures").status_code == 200
    answer = pages.post("/disclosures", data={"patient_id": phi.MRN, "reason": "patient request"})
    assert answer.status_code == 200 and "1 disclosure(s) recorded for this patient" in answer.text
    assert "cxr@2024.3 models.example.test" in answer.text and phi.leaks_in_bytes(answer.content) == []
