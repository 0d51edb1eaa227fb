"""OwnedLease: a claim still running in its worker thread when the owner stops cannot take the lease
back after the release (seen once in CI: a restarted engine waited out the lease)."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select

from engine.core.lease import OwnedLease
from engine.runtime.context import Context
from engine.store.leases import Leases
from engine.store.tables import Lease


class SlowLeases(Leases):
    """A claim that pauses inside, until the test lets it go on."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.inside, self.go_on = threading.Event(), threading.Event()

    def claim(self, name: str) -> bool:
        self.inside.set()
        assert self.go_on.wait(5)
        return super().claim(name)


def _holders(ctx: Context) -> list[str]:
    with ctx.db.connect() as conn:
        return [r.holder for r in conn.execute(select(Lease.__table__))]


def test_a_claim_under_way_at_release_does_not_keep_the_lease(ctx: Context) -> None:
    leases = SlowLeases(ctx.db, "node-a:1", timedelta(seconds=30))
    owned = OwnedLease(leases, "deliver:orders/ris")
    results: list[bool] = []
    claimer = threading.Thread(target=lambda: results.append(owned.claim()))
    claimer.start()
    assert leases.inside.wait(5)
    releaser = threading.Thread(target=owned.release)
    releaser.start()  # waits for the claim under way to end, then releases
    leases.go_on.set()
    claimer.join(5)
    releaser.join(5)
    assert results == [True]
    assert _holders(ctx) == []
    assert owned.claim() is False  # released for good
    assert _holders(ctx) == []


def test_released_means_another_engine_can_take_it_at_once(ctx: Context) -> None:
    mine = OwnedLease(Leases(ctx.db, "node-a:1", timedelta(seconds=30)), "sweep:outputs")
    theirs = OwnedLease(Leases(ctx.db, "node-b:2", timedelta(seconds=30)), "sweep:outputs")
    assert mine.claim() and not theirs.claim()
    mine.release()
    assert theirs.claim()
    assert _holders(ctx) == ["node-b:2"]
