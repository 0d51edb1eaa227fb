"""GET /metrics: the engine's state in the Prometheus text format, read from the store at scrape time.

A registry of its own per application (never the process-global one) with one collector that asks
the store for current counts (engine/store/metrics.py) when scraped: no counters to keep in step,
and several engine nodes sharing a PostgreSQL store all report the same numbers. Labels carry only
names from configuration and states (channel, destination, status, model, version, state): no
identifier, so no PHI. A scrape needs `channels.view` (a service token scoped to it, see
docs/operations.md). Snapshots are reused for `SNAPSHOT_SECONDS` so that several Prometheus servers
scraping together cost one read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from engine import __version__
from engine.security.access import Principal
from engine.store.metrics import Snapshot, snapshot
from engine.web.auth import Need, site_of
from engine.web.site import Site

router = APIRouter()
SNAPSHOT_SECONDS = 5.0
_REGISTRY = "metrics.registry"
_lock = threading.Lock()


def _gauge(name: str, text: str, labels: list[str], values: dict[tuple[str, ...], float]) -> GaugeMetricFamily:
    """One gauge family from {label values: value}, in a stable order."""
    family = GaugeMetricFamily(name, text, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


class StoreCollector(Collector):
    """Reads the store (and the running channels) each time the registry is collected."""

    def __init__(self, site: Site, max_age: float = SNAPSHOT_SECONDS) -> None:
        self.site = site
        self.max_age = max_age
        self._last: tuple[float, Snapshot] | None = None
        self._lock = threading.Lock()

    def _snapshot(self) -> Snapshot:
        with self._lock:
            if self._last is None or time.monotonic() - self._last[0] >= self.max_age:
                policy = self.site.ctx.project.engine.auth.sessions
                self._last = (time.monotonic(), snapshot(self.site.ctx.db, self.site.clock(), policy))
            return self._last[1]

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield _gauge("radbridge_messages", "Messages received in the last 24 hours, by status now.",
                     ["channel", "status"], snap.messages)  # fmt: skip
        yield _gauge("radbridge_deliveries", "Deliveries of messages received in the last 24 hours, by status now "
                     "(queued and dead: radbridge_delivery_backlog).",
                     ["channel", "destination", "status"], snap.deliveries)  # fmt: skip
        yield _gauge("radbridge_delivery_backlog", "Deliveries still queued or dead, however old (absent: none).",
                     ["channel", "destination", "status"], snap.backlog)  # fmt: skip
        yield _gauge("radbridge_delivery_oldest_queued_seconds",
                     "Age of the oldest message still queued for a destination (absent: nothing queued).",
                     ["channel", "destination"], snap.oldest_queued)  # fmt: skip
        yield _gauge("radbridge_inference_jobs", "Inference jobs by model, version and state.",
                     ["model", "version", "state"], snap.jobs)  # fmt: skip
        yield _gauge("radbridge_studies", "Studies by correlation state.", ["state"],
                     {(state,): n for state, n in snap.studies.items()})  # fmt: skip
        yield CounterMetricFamily("radbridge_audit_entries", "Entries in the audit trail (all nodes).",
                                  value=snap.audit_entries)  # fmt: skip
        checkpoint = snap.last_checkpoint.timestamp() if snap.last_checkpoint else 0.0
        yield GaugeMetricFamily(
            "radbridge_audit_last_checkpoint_timestamp_seconds",
            "Time of the newest signed audit checkpoint (0: none yet).",
            value=checkpoint,
        )
        yield GaugeMetricFamily("radbridge_break_glass_in_force", "Break-glass grants in force now.",
                                value=snap.break_glass_in_force)  # fmt: skip
        yield GaugeMetricFamily("radbridge_sessions_active", "Web sessions neither ended nor timed out.",
                                value=snap.sessions_active)  # fmt: skip
        running = GaugeMetricFamily(
            "radbridge_channel_running", "1 when the channel runs in this process, 0 otherwise.", labels=["channel"]
        )
        live = set(self.site.engine.running) if self.site.engine is not None else set()
        for name in sorted(c.config.name for c in self.site.ctx.project.channels):
            running.add_metric([name], 1 if name in live else 0)
        yield running
        info = InfoMetricFamily("radbridge", "The engine's version and node id.", labels=["version", "node"])
        info.add_metric([__version__, self.site.ctx.node], {})
        yield info


def registry_of(site: Site) -> tuple[CollectorRegistry, StoreCollector]:
    """The application's own registry and its collector, made on first use."""
    with _lock:
        found = site.extras.get(_REGISTRY)
        if found is None:
            collector = StoreCollector(site)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(collector)
            found = site.extras[_REGISTRY] = (registry, collector)
    return found  # type: ignore[no-any-return]


@router.get("/metrics", tags=["operations"], response_class=Response)
def metrics(request: Request, who: Principal = Depends(Need("channels.view"))) -> Response:
    """Prometheus text exposition of counts by channel, destination, model and state (no PHI)."""
    return Response(generate_latest(registry_of(site_of(request))[0]), media_type=CONTENT_TYPE_PLAIN_0_0_4)
