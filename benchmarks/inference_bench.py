"""Orchestration overhead of inference per study, model compute excluded.

A study of 200 CT instances is stored through the engine (sealed, assembled), then its study.ready
goes to the inference stage of a running engine. The model is external, so each study is routed,
queued as a job, claimed, read back from the vault (each instance checked against its SHA-256),
de-identified (PS3.15 Annex E), recorded as a disclosure, uploaded over HTTPS (loopback) to a model
that answers at once, and its result re-identified, thresholded and recorded with the job's
completion and the queued output. Timed: study.ready published -> job completed in the store.

    .venv/bin/python benchmarks/inference_bench.py [--studies 20] [--instances 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom.uid import generate_uid  # noqa: E402

from engine.core.component import Inbound  # noqa: E402
from engine.correlation.repo import Repo  # noqa: E402
from engine.deid import DeidProfile, DicomDeidentifier  # noqa: E402
from engine.dicom import read_header  # noqa: E402
from engine.inference.jobs import Jobs  # noqa: E402
from engine.runtime.context import open_context  # noqa: E402
from engine.runtime.engine import Engine  # noqa: E402
from engine.security import keyring  # noqa: E402
from engine.security.tls import server_context  # noqa: E402
from tests.conftest import write_project  # noqa: E402
from tests.dicomdata import KB, make_instance  # noqa: E402
from tests.inference.http.servers import serve  # noqa: E402
from tests.tlscerts import make_certs  # noqa: E402


def _part10(ds) -> bytes:  # type: ignore[no-untyped-def]
    import io

    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _project(root: Path, url: str, ca: Path) -> Path:
    write_project(root)
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    (root / "channels" / "images.yaml").write_text(
        "name: images\nsource: {kind: topic, topic: bench.dicom}\nstudy: {quiet_s: 3600}\n"
    )
    (root / "channels" / "inference.yaml").write_text(textwrap.dedent(f"""\
        name: inference
        source:
          kind: inference
          workers: 4
          models:
            - {{name: vendor-ct, version: "1", kind: upload, url: "{url}/sync", external: true,
               initial_state: active, evidence: bench, timeout_s: 120, tls: {{ca: "{ca}"}}}}
          rule_sets:
            - name: all
              rules: [{{name: ct, when: {{modality: [CT]}}, models: [vendor-ct]}}]
        destinations: [{{name: events, kind: topic}}]
        """))  # fmt: skip
    (root / "channels" / "results.yaml").write_text("name: results\nsource: {kind: topic, topic: 'inference.*'}\n")
    return root


def _model_app():  # type: ignore[no-untyped-def]
    """A model that answers at once: it reads the upload and returns a finding (no DICOM parsing, so
    the figures are the engine's own work, not the test server's)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def sync(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"findings": [{"system": "http://snomed.info/sct", "code": "1386000",
                                           "display": "Intracranial hemorrhage", "score": 0.9}]})  # fmt: skip

    return Starlette(routes=[Route("/sync", sync, methods=["POST"])])


async def _run(studies: int, instances: int, pixel_kb: int, work: Path) -> None:
    certs = make_certs(work / "tls")
    with serve(_model_app(), server_context(str(certs.server_cert), str(certs.server_key))) as url:
        root = _project(work / "p", url, certs.ca)
        ctx = open_context(root)
        engine = Engine(ctx)
        await engine.start()
        try:
            timings = []
            for s in range(studies + 1):  # the first study warms up (TLS, worker, caches): not counted
                study_uid, series_uid = generate_uid(), generate_uid()
                for n in range(instances):
                    raw = _part10(make_instance(study_uid=study_uid, series_uid=series_uid, number=n + 1,
                                                pixel_bytes=pixel_kb * KB))  # fmt: skip
                    header = read_header(raw)
                    inbound = Inbound(raw=raw, kind="dicom", peer="bench", decoded=header,
                                      dedup=header.sop_instance_uid)  # fmt: skip
                    await engine.topics.publish("bench.dicom", inbound)
                [row] = Repo(ctx.db).studies(uid_idx=ctx.index("study_uid", study_uid))
                fields = {"study_id": row.id, "study_uid": study_uid, "content_hash": f"bench-{s}",
                          "modality": "CT", "body_part": "HEAD", "patient_id": "MRN-FAKE-4471902",
                          "priority": "routine", "orders": []}  # fmt: skip
                raw = json.dumps({"type": "study", "topic": "study.ready", "fields": fields}).encode()
                started = time.perf_counter()
                await engine.topics.publish(
                    "study.ready", Inbound(raw=raw, kind="record", peer="bench", decoded=json.loads(raw))
                )
                jobs = Jobs(ctx.db)
                while True:
                    states = [j.state for j in jobs.of_study(row.id)]
                    if states and states[0] in ("completed", "dead"):
                        break
                    await asyncio.sleep(0.002)
                assert states == ["completed"], states
                if s:
                    timings.append(time.perf_counter() - started)
        finally:
            await engine.stop()
            ctx.close()
    timings.sort()
    p99 = timings[min(len(timings) - 1, int(round(0.99 * (len(timings) - 1))))]
    print(f"studies: {studies} x {instances} instances ({pixel_kb} KB pixel data each), external model over HTTPS")
    print(f"study.ready -> result recorded: median {statistics.median(timings) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {timings[-1] * 1000:.0f} ms (bar: p99 <= 1000 ms)")  # fmt: skip


def _deid_rate(instances: int, pixel_kb: int) -> None:
    deid = DicomDeidentifier(DeidProfile(project="bench"), b"bench-key-0123456789abcdef012345")
    study_uid, series_uid = generate_uid(), generate_uid()
    raws = [_part10(make_instance(study_uid=study_uid, series_uid=series_uid, number=n + 1,
                                  pixel_bytes=pixel_kb * KB)) for n in range(instances)]  # fmt: skip
    started = time.perf_counter()
    for raw in raws:
        deid.apply_bytes(raw)
    took = time.perf_counter() - started
    print(f"de-identification alone: {took / instances * 1000:.2f} ms per instance, "
          f"{took * 1000:.0f} ms per {instances}-instance study")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--pixel-kb", type=int, default=32, help="pixel data per instance")
    args = parser.parse_args()
    _deid_rate(args.instances, args.pixel_kb)
    work = Path(tempfile.mkdtemp(prefix="radbridge-inference-bench-"))
    try:
        asyncio.run(_run(args.studies, args.instances, args.pixel_kb, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
