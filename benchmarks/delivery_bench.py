"""Result delivery: throughput of results → ORU + FHIR DiagnosticReport + priority update, and the
latency from study.stable to every output acknowledged, model compute excluded.

One engine runs in this process with the sample pipeline: correlation, inference (the built-in
reference model), the outputs stage, and three result channels — ORU^R01 (mappings/result-to-oru.yaml,
hl7apy-validated) and ORM^O01 XO (priority-to-orm-xo.yaml) over MLLP to python-hl7's MLLP server (its
own process, tests/e2e/downstream.py, ACK after fsync), and the FHIR transaction to a FHIR server
(tests/fhir/server.py, uvicorn in a thread of this process).

  throughput  N critical results published on inference.completed at once; time until every ORU,
              XO and DiagnosticReport delivery is acknowledged.
  latency     M studies, one at a time: order record + a synthetic head CT with a 5 mL bleed; from
              the study.stable record to the last output acknowledged, minus the model call
              (`model_ms` of the job's inference.completed audit entry).

    .venv/bin/python benchmarks/delivery_bench.py [--results 100] [--studies 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import select  # noqa: E402

from engine.core.component import Inbound  # noqa: E402
from engine.dicom import read_header  # noqa: E402
from engine.store.tables import AuditRow, Delivery, Message  # noqa: E402
from tests import phi  # noqa: E402
from tests.conftest import write_project  # noqa: E402
from tests.e2e.harness import free_port, start_downstream, stop  # noqa: E402
from tests.fhir.server import FhirServer  # noqa: E402
from tests.inference.http.servers import serve  # noqa: E402
from tests.inference.volumes import BLEED_5ML, head_ct  # noqa: E402
from tests.world import EngineWorld  # noqa: E402

OUT_CHANNELS = ("results-ris", "worklist-ris", "results-ehr")


def _project(root: Path, ris: int, fhir: str) -> Path:
    write_project(root)
    from engine.security import keyring

    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    shutil.copytree(REPO / "mappings", root / "mappings", dirs_exist_ok=True)
    to_ris = f"{{name: ris, kind: mllp, host: 127.0.0.1, port: {ris}, retry: {{backoff_s: 0.1}}}}"
    ehr = (f"{{name: ehr, kind: fhir, base_url: '{fhir}', release: preliminary, "
           "patient_identifier_system: 'urn:oid:1.2.3.4.5', "
           "accession_identifier_system: 'urn:oid:1.2.3.4.6'}")  # fmt: skip
    channels = {
        "images": "source: {kind: topic, topic: bench.dicom}\nstudy: {quiet_s: 0.2}\n",
        "correlation": "source: {kind: correlation, sweep_s: 0.02, unmatched_study: {wait_s: 0}}\n"
                       "destinations: [{name: events, kind: topic}]\n",
        "inference": "source:\n  kind: inference\n  poll_s: 0.05\n  models:\n"
                     "    - {name: head-ct-hyperdensity, version: '1.0.0', kind: builtin, initial_state: active,"
                     " evidence: bench, thresholds: {'1386000': {critical: 0.5, report: 0.1}}}\n"
                     "  rule_sets: [{name: neuro, rules: [{name: ct, when: {modality: [CT]},"
                     " models: [head-ct-hyperdensity]}]}]\n"
                     "destinations: [{name: events, kind: topic}]\n",
        "outputs": "source: {kind: outputs}\ndestinations: [{name: events, kind: topic}]\n",
        "results-ris": f"source: {{kind: topic, topic: 'result.*'}}\nmapping: mappings/result-to-oru.yaml\n"
                       f"destinations: [{to_ris}]\n",
        "worklist-ris": f"source: {{kind: topic, topic: worklist.priority}}\n"
                        f"mapping: mappings/priority-to-orm-xo.yaml\ndestinations: [{to_ris}]\n",
        "results-ehr": f"source: {{kind: topic, topic: 'result.*'}}\ndestinations: [{ehr}]\n",
    }  # fmt: skip
    for name, body in channels.items():
        (root / "channels" / f"{name}.yaml").write_text(f"name: {name}\n{body}")
    return root


def _result(n: int) -> dict:
    return {
        "job_id": f"bench-job-{n}", "study_id": f"bench-study-{n}", "study_uid": f"1.2.826.0.1.3680043.10.99.{n}",
        "accessions": [f"ACC{n:08d}"], "orders": [{"order_id": f"o{n}", "accession": f"ACC{n:08d}",
                                                   "placer_number": f"PLC{n}", "procedure_code": "CTHEAD"}],
        "patient_id": phi.MRN, "patient_name": f"{phi.NAME_FAMILY}^{phi.NAME_GIVEN}", "birth_date": phi.DOB,
        "sex": "F", "modality": "CT", "body_part": "HEAD", "procedure_code": "CTHEAD", "priority": "routine",
        "model": "head-ct-hyperdensity", "version": "1.0.0", "trigger": "neuro/ct", "clinical": True,
        "critical": True, "completed_at": datetime.now(UTC).isoformat(),
        "result": {"model": "head-ct-hyperdensity", "version": "1.0.0", "summary": "bench",
                   "suggested_priority": "stat",
                   "findings": [{"system": "http://snomed.info/sct", "code": "1386000",
                                 "display": "Intracranial hemorrhage", "score": 0.93, "critical": True,
                                 "measurements": [{"name": "volume", "value": 5.2, "unit": "mL"}]}]},
    }  # fmt: skip


def _pending(world: EngineWorld) -> int:
    assert world.ctx is not None
    with world.ctx.db.connect() as conn:
        rows = conn.execute(select(Delivery.__table__.c.status).where(
            Delivery.__table__.c.channel.in_(OUT_CHANNELS))).all()  # fmt: skip
    return sum(1 for r in rows if r.status != "sent") + (0 if rows else 1)


def _sent(world: EngineWorld, channel: str) -> int:
    assert world.ctx is not None
    with world.ctx.db.connect() as conn:
        return len(conn.execute(select(Delivery.__table__.c.status).where(
            Delivery.__table__.c.channel == channel, Delivery.__table__.c.status == "sent")).all())  # fmt: skip


async def _wait(check, timeout: float = 300.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("outputs not acknowledged in time")
        await asyncio.sleep(0.005)


async def _throughput(world: EngineWorld, count: int) -> None:
    assert world.engine is not None
    started = time.perf_counter()
    for n in range(count):
        raw = json.dumps({"type": "result", "topic": "inference.completed", "fields": _result(n)}).encode()
        inbound = Inbound(raw=raw, kind="record", peer="bench", decoded=json.loads(raw))
        await world.engine.topics.publish("inference.completed", inbound)
    await _wait(lambda: all(_sent(world, c) >= count for c in OUT_CHANNELS))
    took = time.perf_counter() - started
    print(f"throughput: {count} critical results -> {3 * count} outputs acknowledged (ORU, ORM XO, FHIR) in "
          f"{took:.2f} s: {count / took:.1f} results/s, {3 * count / took:.1f} outputs/s")  # fmt: skip


async def _latency(world: EngineWorld, studies: int) -> None:
    assert world.engine is not None and world.ctx is not None
    ctx = world.ctx
    timings, compute = [], []
    for n in range(studies):
        accession = f"ACCLAT{n:06d}"
        order = {"event": "accepted", "accession": accession, "patient_id": phi.MRN, "priority": "routine",
                 "procedure_code": "CTHEAD", "placer_number": f"PLCLAT{n}"}  # fmt: skip
        raw = json.dumps({"type": "order", "topic": "order.accepted", "fields": order}).encode()
        inbound = Inbound(raw=raw, kind="record", peer="bench", decoded=json.loads(raw))
        await world.engine.topics.publish("order.accepted", inbound)
        series = head_ct(shapes=(BLEED_5ML,), seed=n, slices=20, size=192, pixel_mm=0.7)
        for data in series.instances:
            import io

            from pydicom import dcmread

            ds = dcmread(io.BytesIO(data))
            ds.AccessionNumber = accession
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            data = out.getvalue()
            header = read_header(data)
            inbound = Inbound(raw=data, kind="dicom", peer="bench", decoded=header, dedup=header.sop_instance_uid)
            await world.engine.topics.publish("bench.dicom", inbound)
        before = {c: _sent(world, c) for c in OUT_CHANNELS}
        await _wait(lambda b=before: all(_sent(world, c) > b[c] for c in OUT_CHANNELS))
        messages, deliveries = Message.__table__, Delivery.__table__
        with ctx.db.connect() as conn:
            stable = conn.execute(select(messages.c.received_at).where(messages.c.kind == "record study.stable")
                                  .order_by(messages.c.received_at.desc()).limit(1)).scalar()  # fmt: skip
            last = conn.execute(select(deliveries.c.updated_at).where(deliveries.c.channel.in_(OUT_CHANNELS))
                                .order_by(deliveries.c.updated_at.desc()).limit(1)).scalar()  # fmt: skip
            entry = conn.execute(select(AuditRow).where(AuditRow.action == "inference.completed")
                                 .order_by(AuditRow.ts.desc()).limit(1)).first()  # fmt: skip
        model_ms = ctx.audit.open_detail(entry.id, entry.detail)["model_ms"]
        total = (last - stable).total_seconds()
        timings.append(total - model_ms / 1000)
        compute.append(model_ms / 1000)
    timings.sort()
    p99 = timings[min(len(timings) - 1, round(0.99 * (len(timings) - 1)))]
    print(f"latency: {studies} studies, study.stable -> ORU + XO + DiagnosticReport acknowledged, model compute "
          f"excluded: median {statistics.median(timings) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {timings[-1] * 1000:.0f} ms (bar: p99 <= 1000 ms); model compute median "
          f"{statistics.median(compute) * 1000:.0f} ms")  # fmt: skip


async def _run(results: int, studies: int, work: Path) -> None:
    ris = free_port()
    downstream = start_downstream(ris, work / "ris.log")
    fhir = FhirServer()
    try:
        with serve(fhir.app()) as url:
            world = EngineWorld(_project(work / "p", ris, url + "/fhir"))
            await world.start()
            try:
                await _throughput(world, results)
                await _latency(world, studies)
            finally:
                await world.stop()
    finally:
        stop(downstream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=int, default=100)
    parser.add_argument("--studies", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radbridge-delivery-bench-"))
    try:
        asyncio.run(_run(args.results, args.studies, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
