"""The message browser over HTTP: metadata lists, search by blind index, the masked view, reveal
(permitted, audited), reprocess — with fake PHI that must never show where it is masked."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from engine.security.access import MASK
from engine.web.messages import masked_hl7
from tests import phi
from tests.web.ops_world import OpsWorld, leaks, url_recorder


def test_masking_follows_the_deidentification_rules() -> None:
    raw = (phi.ORM + "NK1|1|FAKEKIN^ONE|SPO\rZXY|secret-" + phi.MRN + "\r").encode()
    segments = {s["name"]: s for s in masked_hl7(raw)}
    assert leaks(json.dumps(list(segments.values()))) == []
    msh = segments["MSH"]
    assert msh["fields"][:2] == ["|", "^~\\&"] and msh["fields"][8] == "ORM^O01" and msh["fields"][9] == "CTRL0001"
    assert msh["fields"][6] == MASK and msh["masked"] == [7]  # MSH-7, a date
    pid = segments["PID"]
    assert pid["fields"][0] == "1" and pid["fields"][7] == "F"  # set id and sex are not identifiers
    assert {3, 5, 7, 11, 13} <= set(pid["masked"]) and pid["fields"][1] == ""  # empty stays empty
    assert segments["PV1"]["fields"][2] == "RAD^^^GENHOSP"  # locations are kept, as de-identification keeps them
    assert segments["NK1"]["masked"] == [1, 2, 3] and segments["ZXY"]["text"] == f"ZXY|{MASK}"  # no table: all
    assert segments["PID"]["text"].startswith(f"PID|1||{MASK}||{MASK}||{MASK}|F")


def test_unparseable_content_is_masked_whole() -> None:
    [line] = masked_hl7(f"{phi.NAME_FAMILY} was here".encode())
    assert line == {"name": MASK, "fields": [], "masked": [], "text": MASK}


def test_list_and_filters_are_metadata_only(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    client = world.web.session("auditor")
    listed = client.get("/api/messages", params={"channel": "ris-orders", "status": "dead"}).json()["messages"]
    assert [m["id"] for m in listed] == [dead]
    [m] = listed
    assert m["kind"] == "hl7v2 ORM^O01" and m["deliveries"] == [{"destination": "downstream", "status": "dead",
                                                                 "attempts": 1}]  # fmt: skip
    assert m["size"] == len(phi.ORM) and m["error"]
    now = datetime.now(UTC)
    assert client.get("/api/messages", params={"until": (now - timedelta(hours=1)).isoformat()}).json() == {
        "messages": []
    }
    window = {"since": (now - timedelta(hours=1)).isoformat(), "until": (now + timedelta(minutes=1)).isoformat()}
    assert [m["id"] for m in client.get("/api/messages", params=window).json()["messages"]] == [dead]
    assert client.get("/api/messages", params={"limit": 501}).status_code == 422
    assert client.get("/api/messages", params={"status": "lost"}).status_code == 422
    assert leaks(client.get("/api/messages").text) == []


def test_search_by_accession_uses_the_blind_index(world: OpsWorld, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dead = world.dead_message(phi.ORM.encode())
    client = world.web.session("integration_analyst")
    urls = url_recorder(client)
    found = client.post("/api/messages/search", json={"accession": phi.ACCESSION}).json()["messages"]
    assert [m["id"] for m in found] == [dead]
    assert client.post("/api/messages/search", json={"mrn": phi.MRN}).json()["messages"][0]["id"] == dead
    assert client.post("/api/messages/search", json={"accession": "ACC-NOT-THERE"}).json() == {"messages": []}
    assert client.post("/api/messages/search", json={}).status_code == 422
    refused = client.post("/api/messages/search", json={"accession": phi.ACCESSION, "mrn": phi.MRN})
    assert refused.status_code == 422 and leaks(refused.text) == []
    rows = world.audit("message.searched")
    assert len(rows) == 3
    first = rows[0]
    assert json.loads(first.indexes) == {"accession": world.ctx.index("accession", phi.ACCESSION)}
    assert json.loads(first.record_ids) == [dead] and first.actor == "user:integration-analyst"
    clear = " ".join(str(v) for k, v in first._mapping.items() if k != "detail")
    assert leaks(clear) == [] and leaks(" ".join(urls)) == [] and leaks(caplog.text) == []


def test_masked_view_never_shows_phi_and_is_audited(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    for role in ("auditor", "integration_analyst", "admin"):
        response = world.web.session(role).get(f"/api/messages/{dead}")
        assert response.status_code == 200
        assert leaks(response.text) == []
        body = response.json()
        assert body["content"]["masked"] is True and MASK in response.text
        assert {p["name"] for p in body["parts"]} >= {"raw", "transformed"}
        assert next(p for p in body["parts"] if p["name"] == "raw")["size"] == len(phi.ORM)
    rows = world.audit("message.viewed")
    assert len(rows) == 3 and all(json.loads(r.record_ids) == [dead] for r in rows)
    assert world.ctx.audit.open_detail(rows[0].id, rows[0].detail) == {"masked": True, "part": "raw"}
    html = world.web.session("auditor", accept_html=True).get(f"/messages/{dead}").text
    assert leaks(html) == [] and MASK in html
    assert "/reveal" not in html and "/reprocess" not in html  # the auditor may do neither
    html = world.web.session("integration_analyst", accept_html=True).get(f"/messages/{dead}").text
    assert f'action="/messages/{dead}/reveal"' in html and f'action="/messages/{dead}/reprocess"' in html
    assert leaks(html) == []


def test_other_kinds_show_metadata_and_parts_only(world: OpsWorld) -> None:
    message_id, item = world.ctx.messages.receive("pacs", "dicom CT", b"DICM" + phi.NAME_FAMILY.encode(),
                                                   parts={"header": phi.MRN.encode()})  # fmt: skip
    world.ctx.writer.write(item)
    body = world.web.session("auditor").get(f"/api/messages/{message_id}").json()
    assert body["content"] is None and {p["name"]: p["size"] for p in body["parts"]} == {
        "header": len(phi.MRN),
        "raw": 4 + len(phi.NAME_FAMILY),
    }
    assert world.audit("message.viewed") == []  # nothing was read
    assert world.web.session("auditor").get("/api/messages/00000000-0000-7000-8000-000000000000").status_code == 404


def test_reveal_as_analyst_is_audited_and_refused_to_others(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    analyst = world.web.session("integration_analyst")
    response = analyst.post(f"/api/messages/{dead}/reveal", json={"part": "raw", "reason": "operations"})
    assert response.status_code == 200
    assert phi.NAME_FAMILY in response.json()["content"] and response.json()["encoding"] == "text"
    [reveal] = world.audit("phi.reveal")
    assert reveal.outcome == "success" and reveal.purpose == "operations" and json.loads(reveal.record_ids) == [dead]
    [viewed] = world.audit("message.viewed")
    assert viewed.purpose == "operations"
    assert world.ctx.audit.open_detail(viewed.id, viewed.detail) == {"masked": False, "part": "raw"}
    for role in ("auditor", "technologist", "admin"):
        refused = world.web.session(role).post(f"/api/messages/{dead}/reveal", json={"reason": "operations"})
        assert refused.status_code == 403 and leaks(refused.text) == []
    assert analyst.post(f"/api/messages/{dead}/reveal", json={"part": "nope", "reason": "treatment"}).status_code == 404
    assert analyst.post(f"/api/messages/{dead}/reveal", json={"reason": "curiosity"}).status_code == 422
    assert len(world.audit("phi.reveal")) == 1  # refusals stopped before any reveal


def test_reveal_and_search_pages(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    analyst = world.web.session("integration_analyst", accept_html=True)
    urls = url_recorder(analyst)
    page = analyst.post(f"/messages/{dead}/reveal", data={"part": "raw", "reason": "treatment"})
    assert page.status_code == 200 and phi.NAME_FAMILY in page.text and "Content in clear" in page.text
    results = analyst.post("/messages/search", data={"kind": "accession", "value": phi.ACCESSION})
    assert results.status_code == 200 and dead in results.text and leaks(results.text) == []
    listing = analyst.get("/messages", params={"channel": "ris-orders", "status": "dead"})
    assert dead in listing.text and 'action="/messages/search"' in listing.text and leaks(listing.text) == []
    assert analyst.get("/messages", params={"since": "yesterday"}).status_code == 422
    assert leaks(" ".join(urls)) == []
    assert world.web.session("auditor", accept_html=True).post(
        f"/messages/{dead}/reveal", data={"reason": "operations"}).status_code == 403  # fmt: skip


def test_reprocess_creates_new_messages(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    analyst = world.web.session("integration_analyst")
    [result] = analyst.post(f"/api/messages/{dead}/reprocess").json()["results"]
    assert result["original"] == dead and result["new"] and result["new"] != dead and result["status"] == "accepted"
    reprocessed = world.audit("message.reprocessed")
    assert reprocessed[0].actor == "user:integration-analyst" and dead in json.loads(reprocessed[0].record_ids)
    world.until(lambda: world.status(result["new"]) == "dead")  # the peer is still down
    many = analyst.post("/api/messages/reprocess", json={"ids": [dead, result["new"]]}).json()["results"]
    assert [r["original"] for r in many] == [dead, result["new"]] and all(r["new"] for r in many)
    by_state = analyst.post("/api/messages/reprocess", json={"channel": "ris-orders", "status": "dead", "limit": 2})
    assert len(by_state.json()["results"]) == 2
    missing = analyst.post("/api/messages/reprocess", json={"ids": [dead, "00000000-0000-7000-8000-000000000000"]})
    assert missing.status_code == 404 and missing.json()["missing"] == ["00000000-0000-7000-8000-000000000000"]
    assert analyst.post("/api/messages/reprocess", json={}).status_code == 422
    assert world.web.session("auditor").post(f"/api/messages/{dead}/reprocess").status_code == 403


def test_reprocess_page_redirects_to_the_new_message(world: OpsWorld) -> None:
    world.downstream()
    assert world.send(phi.ORM.encode()) == "AA"
    [sent] = world.ctx.messages.list(channel="ris-orders")
    world.until(lambda: world.status(sent.id) == "sent")
    analyst = world.web.session("integration_analyst", accept_html=True)
    response = analyst.post(f"/messages/{sent.id}/reprocess")
    assert response.status_code == 303
    location = response.headers["location"]
    new = location.split("/messages/")[1].split("?")[0]
    assert location == f"/messages/{new}?reprocessed_from={sent.id}"
    page = analyst.get(location)
    assert f"Reprocessed message {sent.id}: this is the new message {new}." in page.text
    world.until(lambda: world.status(new) == "sent")  # the running worker was woken, not left to its poll
    assert world.received == ["CTRL0001", "CTRL0001"]
