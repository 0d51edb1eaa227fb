"""Break-glass review over HTTP: grants listed in force without their reason, the reason opened only
on request (audited), reviewed by someone else once, refused for the holder, ended early by an
admin, and gone from "in force" once expired."""

from __future__ import annotations

from datetime import timedelta

import pyotp

from engine.store.breakglass import Grant
from tests import phi
from tests.web.conftest import Web, totp_now

REASON = f"ED trauma: unlabelled CT of {phi.NAME_FAMILY} {phi.NAME_GIVEN}, MRN {phi.MRN}"


def _grant(web: Web, username: str, minutes: int = 30) -> Grant:
    secret = web.totp.get(username) or web.site.users.enroll_totp(username, "user:test")[0]
    return web.site.grants.grant(username, REASON, minutes, pyotp.TOTP(secret).now(), web.site.clock())


def test_in_force_listed_without_reason_and_reason_read_on_request_audited(web: Web) -> None:
    grant = _grant(web, "radiologist")
    auditor = web.session("auditor")
    listed = auditor.get("/api/break-glass", params={"in_force": "true"})
    assert listed.status_code == 200 and phi.leaks_in_bytes(listed.content) == []
    [shown] = listed.json()["grants"]
    assert (shown["id"], shown["username"], shown["minutes"], shown["state"]) == (
        grant.id,
        "radiologist",
        30,
        "in_force",
    )
    assert shown["reviewed_by"] is None and "reason" not in shown
    page = web.session("auditor", accept_html=True).get("/break-glass")
    assert page.status_code == 200 and phi.leaks_in_bytes(page.content) == []
    assert page.text.index('id="in-force"') < page.text.index('id="unreviewed"')
    assert f'data-grant="{grant.id}"' in page.text
    opened = auditor.post(f"/api/break-glass/{grant.id}/reason")
    assert opened.status_code == 200 and opened.json()["reason"] == REASON
    entries = auditor.get("/api/audit", params={"action": "auth.break_glass_listed"}).json()["entries"]
    assert entries[0]["actor"] == "user:auditor" and entries[0]["record_ids"] == [grant.id]
    revealed = web.session("auditor", accept_html=True).post(f"/break-glass/{grant.id}/reason")
    assert revealed.status_code == 200 and phi.NAME_FAMILY in revealed.text  # in that response only
    assert auditor.post("/api/break-glass/00000000-0000-7000-8000-000000000000/reason").status_code == 404


def test_reviewed_by_someone_else_once_and_never_by_the_holder(web: Web) -> None:
    own = _grant(web, "admin")
    admin = web.session("admin")
    refused = admin.post(f"/api/break-glass/{own.id}/review", json={"note": "all fine"})
    assert refused.status_code == 403 and "someone other than" in refused.json()["error"]
    grant = _grant(web, "radiologist")
    auditor = web.session("auditor")
    assert auditor.post(f"/api/break-glass/{grant.id}/review", json={"note": " "}).status_code == 422
    reviewed = auditor.post(f"/api/break-glass/{grant.id}/review", json={"note": f"checked; {phi.MRN} was in ED"})
    assert reviewed.status_code == 200, reviewed.text
    assert reviewed.json()["reviewed_by"] == "user:auditor" and reviewed.json()["reviewed_at"]
    assert phi.leaks_in_bytes(reviewed.content) == []
    again = admin.post(f"/api/break-glass/{grant.id}/review", json={"note": "me too"})
    assert again.status_code == 409
    unreviewed = [g["id"] for g in auditor.get("/api/break-glass", params={"unreviewed": "true"}).json()["grants"]]
    assert unreviewed == [own.id]
    assert auditor.post(f"/api/break-glass/{grant.id}/reason").json()["review_note"].startswith("checked;")
    # the page's review form
    page_client = web.session("auditor", accept_html=True)
    assert page_client.post(f"/break-glass/{own.id}/review", data={"note": "admin's grant checked"}).status_code == 303
    assert auditor.get("/api/break-glass", params={"unreviewed": "true"}).json()["grants"] == []
    assert web.session("radiologist").post(f"/api/break-glass/{grant.id}/review", json={"note": "x"}).status_code == 403


def test_expired_grant_is_no_longer_in_force(web: Web) -> None:
    grant = _grant(web, "technologist", minutes=1)
    auditor = web.session("auditor")
    assert [g["id"] for g in auditor.get("/api/break-glass", params={"in_force": "true"}).json()["grants"]] == [
        grant.id
    ]
    start = web.site.clock()
    web.site.clock = lambda: start + timedelta(minutes=2)
    assert auditor.get("/api/break-glass", params={"in_force": "true"}).json()["grants"] == []
    [listed] = auditor.get("/api/break-glass").json()["grants"]
    assert listed["state"] == "expired"
    assert "Nobody is elevated." in web.session("auditor", accept_html=True).get("/break-glass").text
    ended = web.session("admin").post(f"/api/break-glass/{grant.id}/end")
    assert ended.status_code == 409 and "expired" in ended.json()["error"]


def test_admin_ends_a_grant_early_auditor_may_not(web: Web) -> None:
    grant = _grant(web, "integration-analyst")
    assert web.session("auditor").post(f"/api/break-glass/{grant.id}/end").status_code == 403
    admin = web.session("admin")
    ended = admin.post(f"/api/break-glass/{grant.id}/end")
    assert ended.status_code == 200 and ended.json()["state"] == "ended" and ended.json()["ended_at"]
    assert admin.post(f"/api/break-glass/{grant.id}/end").status_code == 409
    assert web.site.grants.active("integration-analyst", web.site.clock()) is None
    entries = admin.get("/api/audit", params={"action": "auth.break_glass_ended"}).json()["entries"]
    assert entries[0]["actor"] == "user:admin" and entries[0]["record_ids"] == [grant.id]
    other = _grant(web, "radiologist")
    page = web.session("admin", accept_html=True)
    assert f'action="/break-glass/{other.id}/end"' in page.get("/break-glass").text
    assert page.post(f"/break-glass/{other.id}/end").status_code == 303
    assert admin.post("/api/break-glass/00000000-0000-7000-8000-000000000000/end").status_code == 404


def test_the_channel_dashboard_shows_who_is_elevated_to_those_who_review_it(web: Web) -> None:
    secret = web.site.users.enroll_totp("technologist", "user:test")[0]
    web.site.grants.grant("technologist", "ED trauma patient, attending unreachable", 20, totp_now(secret))
    admin = web.session("admin", accept_html=True).get("/channels")
    assert admin.status_code == 200 and "In force now" in admin.text and "technologist" in admin.text
    analyst = web.session("integration_analyst", accept_html=True).get("/channels")
    assert analyst.status_code == 200 and "In force now" not in analyst.text
