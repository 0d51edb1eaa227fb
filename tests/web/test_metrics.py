"""GET /metrics over real HTTP: a Prometheus scrape with a service token, parsed with prometheus_client's own
parser; the numbers follow the store, and nothing in the output is patient data."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from engine import __version__
from engine.config import load_project
from engine.core.clock import utcnow
from engine.core.ids import new_id
from engine.inference.jobs import JobRow, Jobs
from engine.store.tables import AuditRow, Study
from engine.store.writer import WriteItem
from engine.web.metrics import registry_of
from tests.phi import MRN, ORM, STRINGS, leaks_in_bytes
from tests.web.conftest import Web, totp_now

CHANNEL = """\
    name: {name}
    enabled: {enabled}
    source: {{kind: topic, topic: test.{name}}}
    destinations:
      - {{name: ehr, kind: topic, topic: test.after}}
    """


def scrape(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert leaks_in_bytes(response.content) == [], "PHI in the metrics"
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def samples(families: dict[str, Any], family: str, sample: str | None = None) -> dict[tuple, float]:
    """{label values (sorted by label name): value} of one family's samples."""
    found = {}
    for s in families[family].samples:
        if s.name == (sample or family):
            found[tuple(v for _k, v in sorted(s.labels.items()))] = s.value
    return found


def _message(web: Web, channel: str, status: str, destinations: list[str]) -> str:
    mrn_idx = web.ctx.index("mrn", MRN)
    message_id, item = web.ctx.messages.receive(channel, "hl7v2 ORM^O01", ORM.encode(), status=status,
                                                destinations=destinations, indexes={"mrn": mrn_idx})  # fmt: skip
    web.ctx.writer.write(item)
    return message_id


def _job(web: Web, model: str, version: str, state: str) -> None:
    now = utcnow()
    job = JobRow(id=new_id(), study_id=new_id(), study_uid_idx=None, content_hash=new_id(), model=model,
                 model_version=version, state=state, priority=3, attempts=0, due_at=now if state == "queued" else None,
                 holder=None, lease_until=None, channel="inference", trigger="neuro/head-ct", request_message="m",
                 result_message=None, clinical=None, input_digest=None, output_digest=None, error=None, revision=0,
                 created_at=now, started_at=None, finished_at=None, updated_at=now)  # fmt: skip
    web.ctx.writer.write(Jobs(web.ctx.db).new(job))


def _study(web: Web, state: str) -> None:
    now = utcnow()
    uid_idx = web.ctx.index("study_uid", "1.2.3")
    row = {"key": new_id(), "id": new_id(), "channel": "pacs-images", "study_uid_idx": uid_idx, "state": state,
           "reason": None, "instances": 3, "first_at": now, "last_at": now, "stable_due": None,
           "wait_due": None, "header_message": new_id(), "content_hash": None, "triggered_hash": None, "version": 0,
           "updated_at": now}  # fmt: skip
    web.ctx.writer.write(WriteItem(inserts=[(Study.__table__, row)]))


def _with_channels(web: Web) -> None:
    root = web.ctx.project.root
    (root / "channels" / "orders-in.yaml").write_text(textwrap.dedent(CHANNEL.format(name="orders-in", enabled="true")))
    (root / "channels" / "results-out.yaml").write_text(
        textwrap.dedent(CHANNEL.format(name="results-out", enabled="false"))
    )
    web.ctx.project = load_project(root)


def test_a_scrape_reports_the_stores_counts_without_patient_data(web: Web) -> None:
    _with_channels(web)
    web.site.engine = SimpleNamespace(running={"orders-in": object()})  # type: ignore[assignment]
    for _ in range(2):
        _message(web, "orders-in", "received", ["ehr"])
    _message(web, "orders-in", "error", [])
    _message(web, "results-out", "sent", [])
    for model, version, state in [("head-ct", "1.0.0", "queued"), ("head-ct", "1.0.0", "queued"),
                                  ("head-ct", "1.0.0", "completed"), ("chest-xr", "2.1", "dead")]:  # fmt: skip
        _job(web, model, version, state)
    _study(web, "waiting")
    _study(web, "ready")
    _study(web, "ready")
    web.site.grants.grant("admin", f"ED trauma, {MRN} {STRINGS[0]} unconscious, attending unreachable", 10,
                          totp_now(web.totp["admin"]))  # fmt: skip
    assert web.ctx.checkpoint() is not None
    web.session("radiologist")  # one session
    families = scrape(web.token("service", ["channels.view"]))

    assert samples(families, "radbridge_messages") == {
        ("orders-in", "error"): 1, ("orders-in", "received"): 2, ("results-out", "sent"): 1,
    }  # fmt: skip
    assert samples(families, "radbridge_deliveries") == {}  # queued ones are the backlog's
    assert samples(families, "radbridge_delivery_backlog") == {("orders-in", "ehr", "queued"): 2}
    oldest = samples(families, "radbridge_delivery_oldest_queued_seconds")
    assert list(oldest) == [("orders-in", "ehr")] and 0 <= oldest[("orders-in", "ehr")] < 60
    assert samples(families, "radbridge_inference_jobs") == {
        ("head-ct", "queued", "1.0.0"): 2, ("head-ct", "completed", "1.0.0"): 1, ("chest-xr", "dead", "2.1"): 1,
    }  # fmt: skip
    assert samples(families, "radbridge_studies") == {("ready",): 2, ("waiting",): 1}
    with web.ctx.db.connect() as conn:
        entries = conn.execute(select(func.count()).select_from(AuditRow.__table__)).scalar_one()
    assert samples(families, "radbridge_audit_entries", "radbridge_audit_entries_total") == {(): entries}
    assert families["radbridge_audit_entries"].type == "counter"
    checkpoint = samples(families, "radbridge_audit_last_checkpoint_timestamp_seconds")[()]
    assert abs(checkpoint - utcnow().timestamp()) < 60
    assert samples(families, "radbridge_break_glass_in_force") == {(): 1}
    assert samples(families, "radbridge_sessions_active") == {(): 1}
    assert samples(families, "radbridge_channel_running") == {("orders-in",): 1, ("results-out",): 0}
    assert samples(families, "radbridge_info") == {("test-node", __version__): 1}

    # outside `radbridge run` no channel runs here
    web.site.engine = None
    assert samples(scrape(web.token("service", ["channels.view"])), "radbridge_channel_running") == {
        ("orders-in",): 0, ("results-out",): 0,
    }  # fmt: skip
    # identifiers never reach a label: neither in clear (checked in scrape) nor as blind indexes
    text = web.token("service", ["channels.view"]).get("/metrics").text
    assert web.ctx.index("mrn", MRN) not in text


def test_an_empty_store_scrapes_cleanly(web: Web) -> None:
    families = scrape(web.session("admin"))
    assert samples(families, "radbridge_messages") == {}
    assert samples(families, "radbridge_audit_last_checkpoint_timestamp_seconds") == {(): 0}
    assert samples(families, "radbridge_break_glass_in_force") == {(): 0}


def test_scrapes_within_a_few_seconds_share_one_read(web: Web) -> None:
    client = web.token("service", ["channels.view"])
    assert samples(scrape(client), "radbridge_messages") == {}
    _message(web, "orders-in", "received", [])
    assert samples(scrape(client), "radbridge_messages") == {}  # the snapshot of a moment ago
    registry_of(web.site)[1].max_age = 0
    assert samples(scrape(client), "radbridge_messages") == {("orders-in", "received"): 1}


def test_only_callers_allowed_to_see_channels_may_scrape(web: Web) -> None:
    assert web.client().get("/metrics").status_code == 401
    assert web.token("service", ["messages.view"]).get("/metrics").status_code == 403
    assert web.session("radiologist").get("/metrics").status_code == 403
    assert web.session("auditor").get("/metrics").status_code == 403
    for role in ("admin", "integration_analyst"):
        assert web.session(role).get("/metrics").status_code == 200


def test_messages_count_over_the_last_day_only(web: Web) -> None:
    """A scrape reads a day of messages (a primary-key range), not the whole store."""
    from datetime import timedelta

    from engine.store.stats import id_floor

    old = id_floor(utcnow() - timedelta(days=2))[:-1] + "1"  # a message id made two days ago
    _, item = web.ctx.messages.receive("orders-in", "hl7v2 ORM^O01", ORM.encode(), message_id=old)
    web.ctx.writer.write(item)
    _message(web, "orders-in", "received", [])
    families = scrape(web.token("service", ["channels.view"]))
    assert samples(families, "radbridge_messages") == {("orders-in", "received"): 1}


def _old_message(web: Web, days: float, destinations: list[str]) -> str:
    """A message (and its deliveries) whose UUIDv7 id was made `days` ago."""
    from datetime import timedelta

    from engine.store.stats import id_floor

    old = id_floor(utcnow() - timedelta(days=days))[:-1] + "1"
    _, item = web.ctx.messages.receive("orders-in", "hl7v2 ORM^O01", ORM.encode(), message_id=old,
                                       destinations=destinations, status="queued")  # fmt: skip
    web.ctx.writer.write(item)
    return old


def test_the_backlog_counts_however_old_the_day_counts_only_the_last_day(web: Web) -> None:
    """A dead letter from last week must keep its alert firing; a sent message from last week is history."""
    from engine.store.tables import Delivery

    dead = _old_message(web, 7, ["ehr"])
    _old_message(web, 2, ["ehr", "archive"])  # still waiting for both
    sent = _old_message(web, 3, ["ehr"])
    deliveries = Delivery.__table__
    with web.ctx.db.begin() as conn:
        for message_id, status in ((dead, "dead"), (sent, "sent")):
            conn.execute(deliveries.update().where(deliveries.c.message_id == message_id).values(status=status))
    _message(web, "orders-in", "queued", ["ehr"])  # today's
    families = scrape(web.token("service", ["channels.view"]))

    assert samples(families, "radbridge_deliveries") == {}  # last week's sent one is history
    assert samples(families, "radbridge_delivery_backlog") == {
        ("orders-in", "ehr", "queued"): 2, ("orders-in", "ehr", "dead"): 1, ("orders-in", "archive", "queued"): 1,
    }  # fmt: skip
    oldest = samples(families, "radbridge_delivery_oldest_queued_seconds")
    two_days = 2 * 86400
    assert set(oldest) == {("orders-in", "ehr"), ("orders-in", "archive")}
    assert all(two_days - 60 < age < two_days + 60 for age in oldest.values()), oldest


def test_a_scrape_reads_ranges_of_messages_and_deliveries_never_every_row(web: Web) -> None:
    """Each statement a scrape (and the channels view) runs on messages or deliveries is a SEARCH in
    SQLite's plan, never a SCAN: on a store of millions a scan every 15 s is the operator's outage."""
    from sqlalchemy import event

    from engine.store.metrics import snapshot
    from engine.store.stats import channel_stats

    for _ in range(3):
        _message(web, "orders-in", "queued", ["ehr", "archive"])
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    db = web.ctx.db
    event.listen(db, "before_cursor_execute", seen)
    try:
        snapshot(db, utcnow(), web.ctx.project.engine.auth.sessions)
        channel_stats(db, utcnow())
    finally:
        event.remove(db, "before_cursor_execute", seen)
    full_scans = []
    with db.connect() as conn:
        for statement, parameters in statements:
            if " messages" not in statement and " deliveries" not in statement:
                continue
            plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            # the first entry of an index in its own order (no sort) reads one row, not the table
            if "LIMIT" in statement and parameters[-2:] == (1, 0) and not any("TEMP B-TREE" in s for s in plan):
                continue
            full_scans += [(statement, step) for step in plan if step.startswith(("SCAN messages", "SCAN deliveries"))]
    assert len(statements) > 5 and full_scans == []
