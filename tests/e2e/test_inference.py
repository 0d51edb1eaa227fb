"""Inference end to end as `radbridge run`: python-hl7's MLLP client sends the order, dcmtk's storescu
sends a head CT holding a 5 mL hyperdensity; correlation makes it ready, the routing rule picks the
built-in reference model, the job runs in a worker process, and one critical result is stored and
emitted as inference.completed — every step audited, no fake PHI in clear on disk or in the logs."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from engine.inference.jobs import Jobs
from engine.runtime.context import open_context
from engine.store.tables import AuditRow
from tests import phi
from tests.e2e.harness import free_port, make_project, start_engine, stop, wait_for
from tests.e2e.test_imaging import _channels as imaging_channels
from tests.e2e.test_imaging import _send_order, storescu
from tests.inference.volumes import BLEED_5ML, head_ct


def _channels(mllp: int, dicom: int) -> dict[str, str]:
    channels = {k: v for k, v in imaging_channels(mllp, dicom, free_port()).items() if k != "notify.yaml"}
    return {
        **channels,
        "inference.yaml": """\
            name: inference
            source:
              kind: inference
              poll_s: 0.2
              models:
                - {name: head-ct-hyperdensity, version: "1.0.0", kind: builtin, initial_state: active,
                   evidence: docs/reference-model.md, thresholds: {"1386000": {critical: 0.5, report: 0.1}}}
              rule_sets:
                - name: neuro
                  rules:
                    - {name: head-ct, when: {channel: [images], modality: [CT], body_part: [HEAD]},
                       models: [head-ct-hyperdensity]}
            destinations: [{name: events, kind: topic, retry: {backoff_s: 0.2}}]
            """,
        "results.yaml": "name: results\nsource: {kind: topic, topic: 'inference.*'}\n",
    }


def test_order_and_head_ct_give_one_critical_audited_result(tmp_path: Path) -> None:
    mllp, dicom = free_port(), free_port()
    root = make_project(tmp_path / "p", _channels(mllp, dicom))
    series = head_ct(shapes=(BLEED_5ML,), seed=3)

    def results() -> list[dict]:
        ctx = open_context(root)
        try:
            records = [json.loads(ctx.messages.read(v.id)) for v in ctx.messages.list(channel="results", limit=50)]
            return [r["fields"] for r in records if r["topic"] == "inference.completed"]
        finally:
            ctx.close()

    proc = start_engine(root)
    try:
        _send_order(mllp)
        storescu(dicom, series.instances, tmp_path)
        wait_for(results, timeout=60)
    finally:
        err = stop(proc)
    [result] = results()
    assert (result["model"], result["version"], result["clinical"], result["critical"]) == (
        "head-ct-hyperdensity", "1.0.0", True, True,
    )  # fmt: skip
    [finding] = result["result"]["findings"]
    assert finding["code"] == "1386000" and finding["critical"] and finding["score"] >= 0.5
    [volume] = [m for m in finding["measurements"] if m["name"] == "volume"]
    assert abs(volume["value"] - 5.0) <= 0.75
    assert set(finding["instance_uids"]) == set(series.slices_holding(BLEED_5ML))
    assert result["result"]["suggested_priority"] == "stat"
    assert "not a medical device" in result["result"]["disclaimer"].lower()
    assert result["orders"][0]["accession"] == phi.ACCESSION  # sealed in the store, linked to its order
    ctx = open_context(root)
    try:
        [job] = Jobs(ctx.db).list()
        assert job.state == "completed" and job.attempts == 1 and job.trigger == "neuro/head-ct"
        with ctx.db.connect() as conn:
            query = select(AuditRow.action).where(AuditRow.action.like("inference.%"))
            actions = [r.action for r in conn.execute(query)]
    finally:
        ctx.close()
    assert sorted(actions) == ["inference.completed", "inference.requested", "inference.started"]
    assert phi.leaks_in_tree(root) == {}
    assert phi.leaks_in_bytes(err.encode()) == []
