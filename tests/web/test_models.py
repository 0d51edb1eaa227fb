"""Model versions and their post-market monitoring over real HTTP: governance state from the registry;
per version and ISO week, studies processed, positive and critical rates, feedback and agreement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from engine.store.tables import ModelVersion
from engine.store.writer import WriteItem
from tests.web.conftest import Web
from tests.web.worklist_seed import FRACTURE, ICH, Seed


def register(web: Web, name: str, version: str, state: str) -> None:
    row = {"name": name, "version": version, "state": state, "evidence": f"https://qms.example.org/{name}",
           "thresholds": None, "running": 0, "changed_at": datetime.now(UTC), "changed_by": "user:qa"}  # fmt: skip
    web.ctx.writer.write(WriteItem(inserts=[(ModelVersion.__table__, row)]))


def week_of(when: datetime) -> str:
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def test_versions_and_weekly_monitoring_with_agreement(web: Web) -> None:
    register(web, "ich-ct", "1.2.0", "active")
    register(web, "ich-ct", "2.0.0", "shadow")
    seed = Seed(web.ctx)
    now = datetime.now(UTC)
    earlier = now - timedelta(days=7)
    # this week: three studies, two with a finding (one critical); a week before: one without
    positive = seed.study()
    report_id, _ = seed.result(positive, findings=[(ICH, 0.95, True), (FRACTURE, 0.6, False)], finished=now)
    seed.result(seed.study(), findings=[(FRACTURE, 0.7, False)], finished=now)
    seed.result(seed.study(), findings=[], finished=now)
    seed.result(seed.study(), findings=[], finished=earlier)
    # the shadow version ran on the same study: counted for its own version (no report, no feedback)
    seed.result(positive, model="ich-ct", version="2.0.0", clinical=False, finished=now)
    # an unregistered version's result still shows up
    seed.result(seed.study(), model="other-ct", version="0.1", finished=now)
    # feedback from two users: one agrees, one disagrees, on the critical finding; n/a on the other
    url = f"/api/worklist/{positive.study_id}/feedback"
    radiologist, service = web.session("radiologist"), web.token("service")

    def give(client: httpx.Client, code: str, verdict: str) -> None:
        response = client.post(url, json={"report_id": report_id, "code": code, "verdict": verdict})
        assert response.status_code == 200, response.text

    give(radiologist, "1386000", "agree")
    give(service, "1386000", "disagree")
    give(radiologist, "263204007", "not_applicable")
    client = web.session("auditor")  # models.view without patient data
    versions = client.get("/api/models").json()["models"]
    assert [(v["name"], v["version"], v["state"]) for v in versions] == [
        ("ich-ct", "1.2.0", "active"), ("ich-ct", "2.0.0", "shadow"),
    ]  # fmt: skip
    assert versions[0]["evidence"] == "https://qms.example.org/ich-ct" and versions[0]["changed_by"] == "user:qa"
    monitored = {(v["name"], v["version"]): v for v in client.get("/api/models/monitoring").json()["versions"]}
    assert set(monitored) == {("ich-ct", "1.2.0"), ("ich-ct", "2.0.0"), ("other-ct", "0.1")}
    active = monitored[("ich-ct", "1.2.0")]
    assert active["state"] == "active"
    assert [w["week"] for w in active["weeks"]] == [week_of(now), week_of(earlier)]
    this, last = active["weeks"]
    assert (this["processed"], this["positive"], this["critical"]) == (3, 2, 1)
    assert abs(this["positive_rate"] - 2 / 3) < 1e-9 and abs(this["critical_rate"] - 1 / 3) < 1e-9
    assert this["feedback"] == {"agree": 1, "disagree": 1, "not_applicable": 1} and this["agreement"] == 0.5
    assert (last["processed"], last["positive"], last["positive_rate"], last["agreement"]) == (1, 0, 0.0, None)
    assert active["total"]["processed"] == 4 and active["total"]["agreement"] == 0.5
    shadow = monitored[("ich-ct", "2.0.0")]
    assert (shadow["state"], shadow["total"]["processed"], shadow["total"]["critical"]) == ("shadow", 1, 1)
    assert shadow["total"]["agreement"] is None
    assert monitored[("other-ct", "0.1")]["state"] == "unregistered"
    # the radiologist changes their mind: the verdict is replaced, agreement drops to 0
    give(radiologist, "1386000", "disagree")
    [active] = [v for v in client.get("/api/models/monitoring").json()["versions"] if v["version"] == "1.2.0"]
    assert active["weeks"][0]["feedback"] == {"agree": 0, "disagree": 2, "not_applicable": 1}
    assert active["weeks"][0]["agreement"] == 0.0
    # a window of one week leaves the earlier week out
    narrow = client.get("/api/models/monitoring", params={"weeks": 1}).json()["versions"]
    assert [w["week"] for w in narrow[0]["weeks"]] == [week_of(now)]
    assert client.get("/api/models/monitoring", params={"weeks": 0}).status_code == 422
    # the page: one table per version, the agreement as a percentage
    page = web.session("radiologist", accept_html=True).get("/models")
    assert page.status_code == 200
    assert "ich-ct 1.2.0" in page.text and "ich-ct 2.0.0" in page.text and week_of(earlier) in page.text
    assert "67 %" in page.text and "0 %" in page.text
    assert web.session("technologist").get("/api/models").status_code == 403
