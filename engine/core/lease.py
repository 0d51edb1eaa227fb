"""One named lease, claimed from worker threads while a task runs and released once when it stops.

A claim runs in a worker thread that cancelling its task does not stop: without the guard, stop()
could release the lease while such a claim is still under way, and the claim would then take the
lease back for an engine that has stopped (another engine would wait out the whole TTL)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


class OwnedLease:
    def __init__(self, leases: Any, name: str) -> None:
        self.leases, self.name = leases, name  # leases: engine.store.leases.Leases (core imports no store)
        self._guard = threading.Lock()
        self._released = False

    def claim(self) -> bool:
        """Take or renew the lease; False once released (or when another holder has it)."""
        with self._guard:
            return not self._released and bool(self.leases.claim(self.name))

    def release(self) -> None:
        """Give the lease up for good (waits for a claim under way to finish first)."""
        with self._guard:
            self._released = True
            self.leases.release(self.name)

    async def release_on_stop(self) -> None:
        """release() from a stopping task, off the event loop; a failure is ignored (the lease expires anyway)."""
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.release)
