"""The channels dashboard and API over HTTP, against a real engine running in the web app's loop:
states, listener TLS, statistics from the store, and stop/start through the Engine (audited)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.store.stats import id_floor, id_time
from tests import phi
from tests.web.conftest import Web
from tests.web.ops_world import OpsWorld, ops_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[OpsWorld]:
    with ops_world(tmp_path / "project") as w:
        yield w


def _channels(client: object, **params: str) -> dict[str, dict]:
    response = client.get("/api/channels", params=params)  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    return {c["name"]: c for c in response.json()["channels"]}


def test_channels_show_state_listener_tls_and_statistics(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    found = _channels(world.web.session("integration_analyst"))
    assert set(found) == {"ris-orders", "secure-in", "spare"}
    ris = found["ris-orders"]
    assert ris["enabled"] and ris["running"] and ris["source"] == "mllp"
    assert ris["listens"] == [f"mllp://127.0.0.1:{world.mllp_port}"]
    assert ris["listener"]["label"] == "plaintext" and ris["listener"]["status"] == "attention"  # loopback only
    assert ris["messages"]["dead"] == 1 and ris["messages"]["sent"] == 0 and ris["total"] == 1
    [downstream] = ris["destinations"]
    assert downstream["name"] == "downstream" and downstream["kind"] == "mllp"
    assert downstream["deliveries"] == {"queued": 0, "sent": 0, "dead": 1, "discarded": 0}
    assert downstream["connection"]["label"] == "plaintext"
    secure = found["secure-in"]
    assert secure["running"] and secure["listener"]["label"] == "mTLS" and secure["listener"]["status"] == "pass"
    assert secure["listener"]["peers"] == "client certificate"
    spare = found["spare"]
    assert not spare["enabled"] and not spare["running"] and spare["listens"] == [] and spare["listener"] is None
    # a window after the message: nothing counted
    later = _channels(
        world.web.token("service", ["channels.view"]), since=(datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    )
    assert later["ris-orders"]["messages"]["dead"] == 0
    assert dead  # the message id: counted above, not listed here


def test_queue_depth_and_oldest_queued_age(world: OpsWorld) -> None:
    """A queued delivery (written through the store, as a channel would) counts with its age."""
    message_id, item = world.ctx.messages.receive("ris-orders", "hl7v2 ORM^O01", b"MSH|^~\\&|X\r",
                                                   destinations=["downstream", "archive"], status="queued")  # fmt: skip
    world.run(world.engine.stop_channel("ris-orders"))  # nobody works the queue while we look
    world.ctx.writer.write(item)
    ris = _channels(world.web.session("admin"))["ris-orders"]
    by_name = {d["name"]: d for d in ris["destinations"]}
    assert by_name["downstream"]["deliveries"]["queued"] == 1
    assert by_name["downstream"]["oldest_queued"] == message_id
    assert 0 <= by_name["downstream"]["oldest_queued_age_s"] < 60
    assert by_name["archive"]["configured"] is False  # a destination no longer in the file still shows
    assert ris["messages"]["queued"] == 1 and not ris["running"]


def test_uuid7_time_bounds() -> None:
    when = datetime(2026, 11, 21, 10, 15, tzinfo=UTC)
    floor = id_floor(when)
    assert id_time(floor) == when
    assert id_floor(when + timedelta(milliseconds=1)) > floor
    assert id_time("not-an-id") is None


def test_stop_and_start_through_the_engine_audited(world: OpsWorld, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    analyst = world.web.session("integration_analyst")
    response = analyst.post("/api/channels/ris-orders/stop")
    assert response.status_code == 200 and response.json() == {"name": "ris-orders", "running": False, "changed": True}
    assert "ris-orders" not in world.engine.running
    with pytest.raises(Exception):  # noqa: B017 - the listener is closed: nothing accepts the connection
        world.send(phi.ORM.encode())
    assert analyst.post("/api/channels/ris-orders/stop").json()["changed"] is False  # idempotent, not audited
    response = analyst.post("/api/channels/ris-orders/start")
    assert response.status_code == 200 and response.json()["running"] is True
    assert world.send(phi.ORM.encode()) == "AA"
    for action in ("channel.stopped", "channel.started"):
        [row] = world.audit(action)
        assert row.actor == "user:integration-analyst" and json.loads(row.record_ids) == ["ris-orders"]
        assert row.peer and row.peer.startswith("127.0.0.1:") and row.outcome == "success"
    assert "ris-orders stopped" in caplog.text and "integration-analyst" not in caplog.text  # usernames: audit only


def test_a_channel_an_operator_stopped_stays_stopped_through_a_reload(world: OpsWorld) -> None:
    analyst = world.web.session("integration_analyst")
    assert analyst.post("/api/channels/ris-orders/stop").json()["running"] is False
    changed = world.run(world.engine.reload(world.ctx.project))
    assert "ris-orders" not in world.engine.running and "ris-orders" not in changed
    assert "secure-in" in world.engine.running  # the others run on
    assert analyst.post("/api/channels/ris-orders/start").json()["running"] is True
    world.run(world.engine.reload(world.ctx.project))
    assert "ris-orders" in world.engine.running


def test_unknown_disabled_and_refused(world: OpsWorld) -> None:
    analyst = world.web.session("integration_analyst")
    assert analyst.post("/api/channels/nope/stop").status_code == 404
    response = analyst.post("/api/channels/spare/start")
    assert response.status_code == 409 and "disabled" in response.json()["error"]
    assert world.web.session("auditor").get("/api/channels").status_code == 403
    assert world.web.token("service", ["channels.view"]).post("/api/channels/ris-orders/stop").status_code == 403
    assert "ris-orders" in world.engine.running


def test_no_engine_in_this_process_is_409(world: OpsWorld) -> None:
    detached: Web = world.detached()
    analyst = detached.session("integration_analyst")
    response = analyst.post("/api/channels/ris-orders/stop")
    assert response.status_code == 409 and response.json()["error"].startswith("channels are not run by this process")
    listed = _channels(analyst)
    assert listed["ris-orders"]["running"] is False and listed["ris-orders"]["enabled"] is True
    assert analyst.post("/api/channels/nope/start").status_code == 404


def test_dashboard_page(world: OpsWorld) -> None:
    world.dead_message(phi.ORM.encode())
    page = world.web.session("integration_analyst", accept_html=True).get("/channels")
    assert page.status_code == 200
    html = page.text
    assert 'action="/channels/ris-orders/stop"' in html and "data-confirm=" in html
    assert "mTLS" in html and "plaintext" in html and "disabled" in html
    assert 'href="/dead-letters?channel=ris-orders&amp;destination=downstream"' in html
    viewer = world.web.token("service", ["channels.view"])
    html = viewer.get("/channels", headers={"Accept": "text/html"}).text
    assert "ris-orders" in html and "/channels/ris-orders/stop" not in html  # no buttons without channels.operate
    assert world.web.session("integration_analyst").get("/channels", params={"window": "1h"}).status_code == 200


def test_dashboard_stop_button(world: OpsWorld) -> None:
    analyst = world.web.session("integration_analyst", accept_html=True)
    response = analyst.post("/channels/ris-orders/stop")
    assert response.status_code == 303 and response.headers["location"] == "/channels"
    html = analyst.get("/channels").text
    assert 'action="/channels/ris-orders/start"' in html
    assert analyst.post("/channels/nope/start").status_code == 404
    assert analyst.post("/channels/spare/start").status_code == 409
