"""The dead-letter queue over HTTP: a real dead letter (the downstream peer was down), listed, retried
once the peer is back (sent by the running engine), discarded with a reason; and the analyst's
one-click reprocess from the dead-letter page."""

from __future__ import annotations

import json

import pytest

from engine.store.deadletters import DeadLetters
from engine.store.queue import Queues
from engine.store.writer import StaleWrite
from tests import phi
from tests.web.ops_world import OpsWorld, leaks


def test_list_dead_letters(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    client = world.web.session("integration_analyst")
    [entry] = client.get("/api/dead-letters").json()["dead_letters"]
    assert entry["message_id"] == dead and entry["channel"] == "ris-orders" and entry["destination"] == "downstream"
    assert entry["attempts"] == 1 and entry["last_error"] and entry["status"] == "dead" and entry["updated_at"]
    assert leaks(json.dumps(entry)) == []
    assert client.get("/api/dead-letters", params={"channel": "other"}).json() == {"dead_letters": []}
    assert len(client.get("/api/dead-letters", params={"destination": "downstream"}).json()["dead_letters"]) == 1
    assert world.web.session("auditor").get("/api/dead-letters").status_code == 403


def test_retry_requeues_and_the_running_engine_sends_it(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    world.downstream()  # the peer is back
    client = world.web.session("integration_analyst")
    response = client.post(f"/api/dead-letters/{dead}/downstream/retry")
    assert response.status_code == 200, response.text
    assert response.json() == {"message_id": dead, "destination": "downstream", "channel": "ris-orders",
                               "status": "queued", "woken": True}  # fmt: skip
    world.until(lambda: world.status(dead) == "sent", timeout=4)  # woken: well before the workers' 5 s poll
    assert world.received == ["CTRL0001"]
    assert world.ctx.messages.get(dead).deliveries == (("downstream", "sent", 1),)  # attempts counted afresh
    [row] = world.audit("dead_letter.retried")
    assert row.actor == "user:integration-analyst" and json.loads(row.record_ids) == [dead]
    assert world.ctx.audit.open_detail(row.id, row.detail)["destination"] == "downstream"
    assert client.get("/api/dead-letters").json() == {"dead_letters": []}
    again = client.post(f"/api/dead-letters/{dead}/downstream/retry")
    assert again.status_code == 409 and "sent, not dead" in again.json()["error"]
    assert client.post(f"/api/dead-letters/{dead}/elsewhere/retry").status_code == 404


def test_retry_without_the_peer_goes_dead_again(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    client = world.web.session("admin")
    assert client.post(f"/api/dead-letters/{dead}/downstream/retry").status_code == 200
    world.until(lambda: len(world.audit("message.dead")) == 2)
    assert world.status(dead) == "dead"


def test_discard(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    client = world.web.session("integration_analyst")
    reason = f"resent by the RIS for {phi.NAME_FAMILY}"  # free text may name a patient: sealed in the audit
    assert client.post(f"/api/dead-letters/{dead}/downstream/discard", json={}).status_code == 422
    response = client.post(f"/api/dead-letters/{dead}/downstream/discard", json={"reason": reason})
    assert response.status_code == 200 and response.json()["status"] == "discarded"
    view = world.ctx.messages.get(dead)
    assert view.deliveries == (("downstream", "discarded", 1),)
    assert view.status == "filtered" and view.error == "delivery to downstream discarded by an operator"
    assert client.get("/api/dead-letters").json() == {"dead_letters": []}
    [row] = world.audit("dead_letter.discarded")
    assert world.ctx.audit.open_detail(row.id, row.detail)["reason"] == reason
    assert leaks(" ".join(str(v) for k, v in row._mapping.items() if k != "detail")) == []
    assert client.post(f"/api/dead-letters/{dead}/downstream/retry").status_code == 409
    channels = {c["name"]: c for c in client.get("/api/channels").json()["channels"]}
    assert channels["ris-orders"]["destinations"][0]["deliveries"]["discarded"] == 1
    assert channels["ris-orders"]["messages"]["dead"] == 0


def test_concurrent_changes_are_guarded(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    repo = DeadLetters(world.ctx.db)
    first, second = repo.discard(dead, "downstream"), repo.retry(dead, "downstream")
    world.ctx.writer.write(first)
    with pytest.raises(StaleWrite):
        world.ctx.writer.write(second)
    assert world.ctx.messages.get(dead).deliveries == (("downstream", "discarded", 1),)


def test_dead_letter_page_and_one_click_reprocess(world: OpsWorld) -> None:
    """An integration analyst reprocesses a dead-lettered message from the dead-letter page."""
    dead = world.dead_message(phi.ORM.encode())
    analyst = world.web.session("integration_analyst", accept_html=True)
    page = analyst.get("/dead-letters")
    assert page.status_code == 200 and dead in page.text and leaks(page.text) == []
    html = page.text
    for action in (f"/dead-letters/{dead}/downstream/retry", f"/dead-letters/{dead}/downstream/discard",
                   f"/dead-letters/{dead}/reprocess"):  # fmt: skip
        assert f'action="{action}"' in html
    assert html.count("data-confirm=") == 3
    world.downstream()
    response = analyst.post(f"/dead-letters/{dead}/reprocess")
    assert response.status_code == 303
    new = response.headers["location"].split("/messages/")[1].split("?")[0]
    shown = analyst.get(response.headers["location"])
    assert new in shown.text and f"Reprocessed message {dead}" in shown.text and leaks(shown.text) == []
    world.until(lambda: world.status(new) == "sent")
    # the original's dead letter is settled, so nobody retries it as well (the data would go twice)
    assert world.ctx.messages.get(dead).deliveries == (("downstream", "discarded", 1),)
    assert dead not in analyst.get("/dead-letters").text
    [row] = world.audit("dead_letter.discarded")
    assert world.ctx.audit.open_detail(row.id, row.detail)["reason"] == f"reprocessed as {new}"
    assert analyst.post(f"/dead-letters/{dead}/reprocess").status_code == 404  # nothing dead is left


def test_reprocessing_a_dead_letter_needs_both_permissions(world: OpsWorld) -> None:
    dead = world.dead_message(phi.ORM.encode())
    assert world.web.session("technologist").post(f"/api/dead-letters/{dead}/reprocess").status_code == 403
    assert world.web.session("auditor").post(f"/api/dead-letters/{dead}/reprocess").status_code == 403
    answer = world.web.session("admin").post(f"/api/dead-letters/{dead}/reprocess")
    assert answer.status_code == 200 and answer.json()["original"] == dead and answer.json()["new"] != dead


def test_dead_letter_page_actions(world: OpsWorld) -> None:
    first = world.dead_message(phi.ORM.encode())
    second = world.dead_message(phi.ORM.replace("CTRL0001", "CTRL0002").encode())
    analyst = world.web.session("integration_analyst", accept_html=True)
    response = analyst.post(f"/dead-letters/{first}/downstream/discard", data={"reason": "duplicate order"})
    assert response.status_code == 303
    page = analyst.get(response.headers["location"])
    assert f"Discarded: {first} to downstream." in page.text and f'action="/dead-letters/{first}/' not in page.text
    response = analyst.post(f"/dead-letters/{second}/downstream/retry")
    assert response.status_code == 303 and "done=retried" in response.headers["location"]
    assert analyst.post(f"/dead-letters/{first}/downstream/retry").status_code == 409
    admin = world.web.session("admin", accept_html=True).get("/dead-letters")
    assert admin.status_code == 200
    assert world.web.session("technologist", accept_html=True).get("/dead-letters").status_code == 403


def test_a_discarded_delivery_is_settled_beside_a_sent_one(world: OpsWorld) -> None:
    world.run(world.engine.stop_channel("ris-orders"))  # the store alone: nobody works the queue
    message_id, item = world.ctx.messages.receive("ris-orders", "hl7v2 ORM^O01", b"MSH|^~\\&|X\r",
                                                   destinations=["downstream", "archive"], status="queued")  # fmt: skip
    world.ctx.writer.write(item)
    world.ctx.writer.write(Queues.mark(message_id, "archive", "dead", 3, "archive refused it", None))
    world.ctx.writer.write(Queues.mark(message_id, "downstream", "sent", 1, None, None))
    assert Queues(world.ctx.db).overall(message_id, {}) == "dead"
    world.ctx.writer.write(DeadLetters(world.ctx.db).discard(message_id, "archive"))
    view = world.ctx.messages.get(message_id)
    assert view.status == "sent" and view.error == "delivery to archive discarded by an operator"
    assert view.deliveries == (("archive", "discarded", 3), ("downstream", "sent", 1))


def test_a_reprocess_the_channel_does_not_take_leaves_the_dead_letter(world: OpsWorld, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The channel as configured now refuses the message again: its dead letters stay, nothing is settled."""
    from engine.runtime.reprocess import Reprocessed
    from engine.web import deadletters

    dead = world.dead_message(phi.ORM.encode())

    async def refused(ctx, ids, actor):  # type: ignore[no-untyped-def]
        return [Reprocessed(ids[0], "019b0000-0000-7000-8000-000000000001", "refused")]

    monkeypatch.setattr(deadletters, "reprocess", refused)
    answer = world.web.session("integration_analyst").post(f"/api/dead-letters/{dead}/reprocess")
    assert answer.status_code == 409 and "dead letters stay" in answer.json()["error"]
    assert world.ctx.messages.get(dead).deliveries == (("downstream", "dead", 1),)
    assert world.audit("dead_letter.discarded") == []
