import time
from datetime import timedelta

from sqlalchemy import update

from engine.runtime.context import Context
from engine.store.leases import Leases, holder_id
from engine.store.tables import Lease


def test_one_holder_at_a_time_until_expiry(ctx: Context) -> None:
    ttl = timedelta(seconds=0.3)
    a = Leases(ctx.db, "node-a/other-host/1/aaaa", ttl)
    b = Leases(ctx.db, "node-b/other-host/2/bbbb", ttl)
    assert a.claim("deliver:orders/pacs")
    assert not b.claim("deliver:orders/pacs")
    assert a.claim("deliver:orders/pacs")  # renewal
    assert b.claim("deliver:other/pacs")  # another queue is free
    time.sleep(0.4)
    assert b.claim("deliver:orders/pacs")  # a stopped renewing: b takes over
    assert not a.claim("deliver:orders/pacs")
    b.release("deliver:orders/pacs")
    assert a.claim("deliver:orders/pacs")


def test_a_dead_process_on_this_host_is_not_waited_out(ctx: Context) -> None:
    ttl = timedelta(minutes=5)
    me = Leases(ctx.db, holder_id("node-a"), ttl)
    assert me.claim("q")
    dead = me.holder.split("/")
    dead[2] = "999999999"  # no such process
    with ctx.db.begin() as conn:
        conn.execute(update(Lease.__table__).values(holder="/".join(dead)))
    assert me.claim("q")
    alive = me.holder.split("/")
    alive[2], alive[3] = "1", "other"  # pid 1 is alive: its lease must be respected
    with ctx.db.begin() as conn:
        conn.execute(update(Lease.__table__).values(holder="/".join(alive)))
    assert not me.claim("q")
