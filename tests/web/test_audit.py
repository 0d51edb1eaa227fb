"""The audit viewer over HTTP: filters and paging, every query itself audited, chain verification that
notices tampering, and no patient data in clear for an auditor (break-glass reasons stay masked)."""

from __future__ import annotations

import re

import pyotp
from sqlalchemy import select

from engine.security.access import MASK
from engine.store.tables import AuditRow
from tests import phi
from tests.web.conftest import Web

audit = AuditRow.__table__
REASON_WITH_PHI = f"ED trauma, unlabelled CT of {phi.NAME_FAMILY} {phi.NAME_GIVEN} MRN {phi.MRN}"


def _seed(web: Web) -> tuple[str, str]:
    """A radiologist's disagreement with an AI finding and an analyst's reprocess of a dead letter."""
    study, message = "019b0f5e-0000-7000-8000-00000000aaaa", "019b0f5e-0000-7000-8000-00000000bbbb"
    web.ctx.audit.record(
        "finding.feedback",
        actor="user:radiologist",
        record_ids=[study],
        detail={"verdict": "disagree", "code": "nodule", "comment": f"not {phi.NAME_FAMILY}'s"},
    )
    web.ctx.audit.record("message.reprocessed", actor="user:integration-analyst", record_ids=[message],
                         detail={"channel": "ris-orders", "error": f"PID-5 {phi.NAME_FAMILY}"})  # fmt: skip
    return study, message


def _entries(client, **params: object) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    response = client.get("/api/audit", params=params)
    assert response.status_code == 200, response.text
    return response.json()["entries"]  # type: ignore[no-any-return]


def test_filters_by_action_actor_outcome_record_and_time(web: Web) -> None:
    study, message = _seed(web)
    auditor = web.session("auditor")
    [feedback] = _entries(auditor, action="finding.feedback")
    assert (feedback["actor"], feedback["outcome"], feedback["record_ids"]) == ("user:radiologist", "success", [study])
    assert feedback["detail"]["verdict"] == "disagree" and feedback["detail"]["comment"] == MASK
    [reprocess] = _entries(auditor, actor="user:integration-analyst")
    assert reprocess["action"] == "message.reprocessed" and reprocess["detail"] == {"channel": "ris-orders",
                                                                                    "error": MASK}  # fmt: skip
    assert [e["action"] for e in _entries(auditor, record=message)] == ["message.reprocessed"]
    assert _entries(auditor, record=message[:-1]) == []  # a whole id, not a part of one
    web.site.users.authenticate("technologist", "wrong password", None)  # a refused sign-in
    [refused] = _entries(auditor, action="auth.login", outcome="failure")
    assert refused["actor"] == "user:technologist" and refused["detail"] == {"reason": "bad_password"}
    assert {e["action"] for e in _entries(auditor, action="auth.")} >= {"auth.login", "auth.session"}
    ts = reprocess["ts"]
    assert [e["action"] for e in _entries(auditor, since=ts, action="message.reprocessed")] == ["message.reprocessed"]
    assert _entries(auditor, until=ts, action="message.reprocessed") == []
    assert _entries(auditor, since="2000-01-01", until="2000-01-02") == []
    for bad in ({"outcome": "maybe"}, {"since": "yesterday"}, {"after": "nonsense"}, {"limit": 0}):
        response = auditor.get("/api/audit", params=bad)
        assert response.status_code == 422, bad


def test_paging_by_node_and_seq_sees_every_entry_once(web: Web) -> None:
    for i in range(7):
        web.ctx.audit.record("message.reprocessed", actor="user:integration-analyst", record_ids=[f"m-{i}"])
    auditor = web.session("auditor")
    seen, after = [], ""
    while True:
        response = auditor.get("/api/audit", params={"action": "message.reprocessed", "limit": 3, "after": after})
        body = response.json()
        seen += [e["record_ids"][0] for e in body["entries"]]
        if not body["next"]:
            break
        after = body["next"]
        assert re.fullmatch(r"test-node:\d+", after)
    assert seen == [f"m-{i}" for i in reversed(range(7))]


def test_each_query_is_itself_audited_with_its_filters(web: Web) -> None:
    auditor = web.session("auditor")
    _entries(auditor, action="finding.feedback", actor="user:radiologist", limit=10)
    viewed = _entries(auditor, action="audit.viewed")
    assert viewed[0]["actor"] == "user:auditor" and viewed[0]["peer"]
    assert viewed[0]["detail"]["filters"] == {"action": "finding.feedback", "actor": "user:radiologist"}
    assert viewed[0]["detail"]["limit"] == 10 and viewed[0]["detail"]["entries"] == 0
    _entries(auditor, record="some-record-id")
    assert _entries(auditor, action="audit.viewed", record="some-record-id")[0]["actor"] == "user:auditor"
    page = web.session("admin", accept_html=True).get("/audit", params={"action": "finding.feedback"})
    assert page.status_code == 200
    assert _entries(auditor, action="audit.viewed", actor="user:admin")[0]["detail"]["filters"] == {
        "action": "finding.feedback"
    }


def test_verify_reports_ok_then_the_first_problem_after_tampering(web: Web) -> None:
    auditor = web.session("auditor")
    web.ctx.checkpoint()
    ok = auditor.get("/api/audit/verify").json()
    assert ok["ok"] is True and ok["problem"] is None and ok["entries"] > 5 and ok["checkpoints"] == 1
    assert ok["last_checkpoint"] and ok["nodes"] == ["test-node"]
    with web.ctx.db.begin() as conn:
        conn.execute(audit.update().where(audit.c.seq == 3).values(actor="user:someone-else"))
    broken = auditor.get("/api/audit/verify").json()
    assert broken["ok"] is False
    assert broken["problem"] == "node test-node: entry seq 3 was altered (hash mismatch)"
    verified = _entries(auditor, action="audit.verified")
    assert [e["outcome"] for e in verified[:2]] == ["failure", "success"]
    assert verified[0]["detail"]["problem"] == broken["problem"]
    # the page: verify on demand, and the last result at the top
    page_client = web.session("auditor", accept_html=True)
    assert page_client.post("/audit/verify").status_code == 303
    page = page_client.get("/audit").text
    assert 'data-verification="broken"' in page and "entry seq 3 was altered" in page


def test_verify_needs_audit_verify_and_viewing_needs_audit_view(web: Web) -> None:
    analyst = web.session("integration_analyst")
    assert analyst.get("/api/audit").status_code == 403
    assert analyst.get("/api/audit/verify").status_code == 403
    assert web.session("radiologist", accept_html=True).get("/audit").status_code == 403


def test_auditor_never_sees_a_break_glass_reason_or_other_phi(web: Web) -> None:
    _seed(web)
    secret, _ = web.site.users.enroll_totp("radiologist", "user:test")
    grant = web.site.grants.grant("radiologist", REASON_WITH_PHI, 30, pyotp.TOTP(secret).now())
    web.site.grants.review(grant.id, "user:admin", f"checked with ED about {phi.MRN}")
    web.site.users.set_disabled("technologist", True, "user:admin", f"left; covered {phi.NAME_GIVEN}")
    with web.ctx.db.connect() as conn:  # the reason is in the log, sealed
        assert conn.execute(select(audit.c.id).where(audit.c.action == "auth.break_glass")).first()
    auditor = web.session("auditor")
    response = auditor.get("/api/audit", params={"limit": 500})
    assert response.status_code == 200 and phi.leaks_in_bytes(response.content) == []
    [glass] = [e for e in response.json()["entries"] if e["action"] == "auth.break_glass"]
    assert glass["record_ids"] == [grant.id] and glass["detail"]["reason"] == MASK and glass["detail"]["minutes"] == 30
    [review] = [e for e in response.json()["entries"] if e["action"] == "auth.break_glass_review"]
    assert review["detail"] == {"user": "radiologist", "note": MASK}
    [disabled] = [e for e in response.json()["entries"] if e["action"] == "user.disabled"]
    assert disabled["purpose"] is None and disabled["detail"] == {"reason": MASK}  # free text only sealed
    assert glass["purpose"] == "BTG"  # a code is shown
    page = web.session("auditor", accept_html=True).get("/audit", params={"limit": 500})
    assert page.status_code == 200 and phi.leaks_in_bytes(page.content) == []
    assert "auth.break_glass" in page.text and "finding.feedback" in page.text and "message.reprocessed" in page.text
    for action in ("finding.feedback", "message.reprocessed"):
        filtered = web.session("auditor", accept_html=True).get("/audit", params={"action": action})
        assert f'data-action="{action}"' in filtered.text and phi.leaks_in_bytes(filtered.content) == []
    assert f'href="/audit?record={grant.id}"' in page.text  # a record id links to its own trail
