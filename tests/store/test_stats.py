"""The operators' counts (engine.store.stats, engine.store.metrics) on SQLite and PostgreSQL: a day's
window of messages and deliveries, and the backlog of queued and dead deliveries however old."""

from datetime import timedelta

from engine.config.auth import SessionPolicy
from engine.core.clock import utcnow
from engine.runtime.context import Context
from engine.store.metrics import snapshot
from engine.store.stats import channel_stats, id_floor, queues
from engine.store.tables import Delivery

ORDER = b"MSH|^~\\&|RIS|GENHOSP|RADBRIDGE|GENHOSP|20261121101500||ORM^O01|C1|P|2.3.1\r"


def _message(ctx: Context, channel: str, destinations: list[str], days_ago: float = 0) -> str:
    message_id = None
    if days_ago:
        message_id = id_floor(utcnow() - timedelta(days=days_ago))[:-1] + "1"
    found, item = ctx.messages.receive(channel, "hl7v2 ORM^O01", ORDER, destinations=destinations, status="queued",
                                       message_id=message_id)  # fmt: skip
    ctx.writer.write(item)
    return found


def _set(ctx: Context, message_id: str, status: str) -> None:
    deliveries = Delivery.__table__
    with ctx.db.begin() as conn:
        conn.execute(deliveries.update().where(deliveries.c.message_id == message_id).values(status=status))


def test_day_window_and_backlog(ctx: Context) -> None:
    _set(ctx, _message(ctx, "orders", ["ehr"], days_ago=5), "dead")
    _set(ctx, _message(ctx, "orders", ["ehr", "archive"], days_ago=4), "sent")
    _message(ctx, "orders", ["ehr"], days_ago=2)
    _message(ctx, "results", ["pacs"])
    _set(ctx, _message(ctx, "orders", ["ehr"]), "sent")
    now = utcnow()

    with ctx.db.connect() as conn:
        assert queues(conn) == [("orders", "archive"), ("orders", "ehr"), ("results", "pacs")]
    snap = snapshot(ctx.db, now, SessionPolicy())
    assert snap.messages == {("orders", "queued"): 1, ("results", "queued"): 1}  # message status as received
    assert snap.deliveries == {("orders", "ehr", "sent"): 1}  # today's; queued and dead are the backlog
    assert snap.backlog == {("orders", "ehr", "dead"): 1, ("orders", "ehr", "queued"): 1,
                            ("results", "pacs", "queued"): 1}  # fmt: skip
    assert abs(snap.oldest_queued[("orders", "ehr")] - 2 * 86400) < 60
    assert snap.oldest_queued[("results", "pacs")] < 60 and ("orders", "archive") not in snap.oldest_queued

    day = channel_stats(ctx.db, now - timedelta(days=1))  # sent in the window, what waits or died however old
    assert set(day) == {"orders", "results"}
    assert day["orders"].queues["ehr"].counts == {"sent": 1, "queued": 1, "dead": 1}
    assert abs((now - day["orders"].queues["ehr"].oldest_queued_at).total_seconds() - 2 * 86400) < 60
    assert "archive" not in day["orders"].queues  # its one delivery was sent four days ago
    ever = channel_stats(ctx.db)
    assert ever["orders"].queues["ehr"].counts == {"dead": 1, "sent": 2, "queued": 1}
    assert ever["orders"].queues["archive"].counts == {"sent": 1}
    assert ever["orders"].messages == {"queued": 4}


def test_an_empty_store(ctx: Context) -> None:
    with ctx.db.connect() as conn:
        assert queues(conn) == []
    snap = snapshot(ctx.db, utcnow(), SessionPolicy())
    assert snap.deliveries == {} and snap.backlog == {} and snap.oldest_queued == {}
