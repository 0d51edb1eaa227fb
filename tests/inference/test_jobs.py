"""Inference jobs through the running engine: real instances assembled and correlated into
study.ready, routed by the inference channel to a model served over real HTTP (an Open Inference
Protocol server, a study-upload server), with the failure modes a model server has: 500s,
timeouts, garbage, Retry-After, a cancelled order mid-job, an engine stopped or killed mid-job.
No job lost, no result recorded or delivered twice, everything audited."""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.core.component import Inbound
from engine.dicom import read_header
from engine.inference.jobs import Jobs
from engine.runtime.context import open_context
from engine.security import keyring
from engine.security.tls import server_context
from engine.store.tables import AuditRow, Disclosure
from tests import phi
from tests.conftest import write_project
from tests.inference.http.servers import KServe, UploadServer, serve
from tests.inference.volumes import head_ct
from tests.tlscerts import make_certs
from tests.world import EngineWorld

LABELS = """
      labels:
        - {system: "http://snomed.info/sct", code: "1386000", display: "Intracranial hemorrhage"}
        - {system: "http://snomed.info/sct", code: "36118008", display: "Pneumothorax"}
        - {system: "http://snomed.info/sct", code: "263204007", display: "Fracture"}
      thresholds:
        "1386000": {critical: 0.9, report: 0.1}
        "36118008": {critical: 0.9, report: 0.5}"""


def oip_model(url: str, *, timeout: float = 5, attempts: int = 3, state: str = "active", concurrency: int = 1,
              name: str = "ich-ct", version: str = "1.2.0") -> str:  # fmt: skip
    return (
        textwrap.indent(
            textwrap.dedent(f"""\
        - name: {name}
          version: "{version}"
          kind: oip
          url: {url}
          model_name: ich-ct
          initial_state: {state}
          evidence: https://qms.example.org/validation/ich-ct
          timeout_s: {timeout}
          max_attempts: {attempts}
          concurrency: {concurrency}
          preprocessing: {{shape: [4, 8, 8], window: {{center: 40, width: 80}}, dtype: float32}}"""),
            "    ",
        )
        + LABELS
    )


def upload_model(url: str, ca: Path) -> str:
    return textwrap.indent(
        textwrap.dedent(f"""\
        - name: vendor-ct
          version: "3.1"
          kind: upload
          url: {url}
          external: true
          initial_state: active
          evidence: https://qms.example.org/validation/vendor-ct
          timeout_s: 5
          max_attempts: 2
          tls: {{ca: {ca}}}"""),
        "    ",
    )


def project(root: Path, store_url: str | None, models: str, rule_models: str, extra: str = "") -> Path:
    write_project(root, store_url=store_url)
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    (root / "channels" / "images.yaml").write_text(
        "name: images\nsource: {kind: topic, topic: test.dicom}\nstudy: {quiet_s: 0.2}\n"
    )
    (root / "channels" / "correlation.yaml").write_text(textwrap.dedent("""\
        name: correlation
        source: {kind: correlation, sweep_s: 0.05, unmatched_study: {wait_s: 0, then: proceed}}
        destinations:
          - {name: events, kind: topic, retry: {backoff_s: 0.05}}
        """))  # fmt: skip
    (root / "channels" / "inference.yaml").write_text(
        "name: inference\nsource:\n  kind: inference\n  poll_s: 0.05\n  backoff_s: 0.05\n  backoff_max_s: 0.2\n"
        f"  models:\n{models}\n"
        "  rule_sets:\n    - name: neuro\n      rules:\n"
        f"        - {{name: head-ct, when: {{modality: [CT], body_part: [HEAD]}}, models: [{rule_models}]}}\n"
        f"{extra}"
        "destinations:\n  - {name: events, kind: topic, retry: {backoff_s: 0.05}}\n"
    )
    (root / "channels" / "watch.yaml").write_text("name: watch\nsource: {kind: topic, topic: 'inference.*'}\n")
    return root


class World(EngineWorld):
    async def study(self, *, modality: str = "CT", slices: int = 4) -> list[bytes]:
        series = head_ct(slices=slices, size=16, pixel_mm=8.0, slice_mm=10.0, modality=modality, noise_hu=0.0)
        assert self.engine is not None
        for raw in series.instances:
            header = read_header(raw)
            inbound = Inbound(raw=raw, kind="dicom", peer="test", decoded=header, dedup=header.sop_instance_uid)
            assert [o.status for o in await self.engine.topics.publish("test.dicom", inbound)] == ["accepted"]
        return series.instances

    async def order(self, event: str = "accepted") -> None:
        fields = {"event": event, "accession": phi.ACCESSION, "patient_id": phi.MRN, "priority": "routine",
                  "procedure_code": "CTHEAD"}  # fmt: skip
        raw = json.dumps({"fields": fields, "topic": f"order.{event}", "type": "order"}, sort_keys=True).encode()
        assert self.engine is not None
        inbound = Inbound(raw=raw, kind="record", peer="test", decoded=json.loads(raw), dedup=raw.hex()[:40])
        assert [o.status for o in await self.engine.topics.publish(f"order.{event}", inbound)] == ["accepted"]

    def jobs(self) -> list:
        assert self.ctx is not None
        return Jobs(self.ctx.db).list(limit=100)

    def results(self, topic: str = "inference.completed") -> list[dict]:
        assert self.ctx is not None
        out = []
        for view in self.ctx.messages.list(channel="watch", limit=100):
            record = json.loads(self.ctx.messages.read(view.id))
            if record["topic"] == topic:
                out.append(record["fields"])
        return out

    def stored_results(self) -> int:
        assert self.ctx is not None
        return sum(1 for v in self.ctx.messages.list(channel="inference", limit=200) if v.kind.startswith("record inf"))

    def audit(self, action: str) -> list:
        assert self.ctx is not None
        with self.ctx.db.connect() as conn:
            return conn.execute(select(AuditRow).where(AuditRow.action == action)).all()


@pytest.fixture
def kserve() -> KServe:
    return KServe(shape=[-1, 4, 8, 8], scores=[0.95, 0.3, 0.6])


@pytest.fixture
def kserve_url(kserve: KServe) -> AsyncIterator[str]:
    with ExitStack() as stack:
        yield stack.enter_context(serve(kserve.app()))


@pytest.fixture
async def world(tmp_path: Path, store_url: str | None, kserve_url: str,
                request: pytest.FixtureRequest) -> AsyncIterator[World]:  # fmt: skip
    options = getattr(request, "param", {})
    w = World(project(tmp_path / "p", store_url, oip_model(kserve_url, **options), "ich-ct"))
    await w.start()
    yield w
    await w.stop()


def one(world: World, state: str) -> Callable[[], bool]:
    return lambda: [j.state for j in world.jobs()] == [state]


async def test_ready_study_runs_once_and_emits_one_audited_result(world: World, kserve: KServe) -> None:
    await world.order()
    await world.study()
    await world.until(lambda: len(world.results()) == 1)
    [job] = world.jobs()
    assert (job.state, job.attempts, job.trigger, job.clinical) == ("completed", 1, "neuro/head-ct", True)
    [result] = world.results()
    assert result["model"] == "ich-ct" and result["version"] == "1.2.0" and result["critical"] is True
    findings = {f["code"]: (f["score"], f["critical"]) for f in result["result"]["findings"]}
    # 0.95 >= critical 0.9; 0.3 < report 0.5 for 36118008: left out; 263204007 has no threshold: kept
    assert findings == {"1386000": (0.95, True), "263204007": (0.6, False)}
    assert result["result"]["suggested_priority"] == "stat"
    assert len(kserve.requests) == 1 and kserve.requests[0]["inputs"][0]["shape"] == [1, 4, 8, 8]
    assert world.ctx is not None
    study_idx = world.ctx.index("study_uid", result["study_uid"])
    for action in ("inference.requested", "inference.started", "inference.completed"):
        [entry] = world.audit(action)
        assert json.loads(entry.indexes) == {"study_uid": study_idx}, action
        assert job.id in json.loads(entry.record_ids) and job.study_id in json.loads(entry.record_ids)
    [completed] = world.audit("inference.completed")
    detail = world.ctx.audit.open_detail(completed.id, completed.detail)
    assert (detail["model"], detail["version"], detail["trigger"], detail["channel"]) == (
        "ich-ct",
        "1.2.0",
        "neuro/head-ct",
        "inference",
    )
    assert detail["input_digest"] == job.input_digest and detail["output_digest"] == job.output_digest
    assert detail["ms"] >= 0 and detail["findings"] == 2 and detail["critical"] is True
    assert job.input_digest and len(job.input_digest) == 64 and job.output_digest and len(job.output_digest) == 64
    # the same study.ready again (a repeated notification) adds no job
    await world.order(event="changed")
    await asyncio.sleep(0.5)
    assert len(world.jobs()) == 1 and len(world.results()) == 1 and world.stored_results() == 1


async def test_model_500_is_retried_then_succeeds(world: World, kserve: KServe) -> None:
    kserve.status = 500
    await world.order()
    await world.study()
    await world.until(lambda: len(world.audit("inference.failed")) >= 1)
    kserve.status = None
    await world.until(lambda: len(world.results()) == 1)
    [job] = world.jobs()
    assert job.state == "completed" and job.attempts >= 2 and job.error is None
    assert world.stored_results() == 1


async def test_garbage_goes_dead_at_once_without_a_result(world: World, kserve: KServe) -> None:
    kserve.scores = [float("nan"), 0.2, 0.1]
    await world.order()
    await world.study()
    await world.until(one(world, "dead"))
    [job] = world.jobs()
    assert job.attempts == 1 and "garbage" in (job.error or "")
    assert world.stored_results() == 0 and world.results() == []
    assert [r.outcome for r in world.audit("inference.failed")] == ["failure"]


@pytest.mark.parametrize("world", [{"timeout": 0.5, "attempts": 2}], indirect=True)
async def test_timeout_retries_then_dead_letters(world: World, kserve: KServe) -> None:
    kserve.delay = 2.0
    await world.order()
    await world.study()
    await world.until(one(world, "dead"), timeout=20)
    [job] = world.jobs()
    assert job.attempts == 2 and world.stored_results() == 0
    assert len(world.audit("inference.failed")) == 2


async def test_retry_after_is_honoured(world: World, kserve: KServe) -> None:
    kserve.status, kserve.headers = 429, {"Retry-After": "30"}
    await world.order()
    await world.study()
    await world.until(lambda: len(world.audit("inference.failed")) == 1)
    [job] = world.jobs()
    assert job.state == "queued" and (job.due_at - job.updated_at).total_seconds() >= 29


@pytest.mark.parametrize("world", [{"timeout": 10}], indirect=True)
async def test_order_cancelled_mid_job_records_and_delivers_nothing(world: World, kserve: KServe) -> None:
    kserve.delay = 1.5
    await world.order()
    await world.study()
    await world.until(one(world, "running"))
    await world.order(event="cancelled")
    await world.until(one(world, "cancelled"))
    await asyncio.sleep(2.0)  # the model would have answered by now
    assert world.stored_results() == 0 and world.results() == []
    assert len(world.audit("inference.cancelled")) == 1
    assert world.ctx is not None and Jobs(world.ctx.db).running_counts()[("ich-ct", "1.2.0")] == 0


@pytest.mark.parametrize("world", [{"timeout": 10}], indirect=True)
async def test_engine_stopped_mid_job_finishes_it_once_after_restart(world: World, kserve: KServe) -> None:
    kserve.delay = 1.0
    await world.order()
    await world.study()
    await world.until(one(world, "running"))
    await world.stop()
    assert [j.state for j in Jobs(open_context(world.root).db).list()] == ["queued"]
    kserve.delay = 0
    await world.start()
    await world.until(lambda: len(world.results()) == 1)
    [job] = world.jobs()
    assert job.state == "completed" and job.attempts == 1  # an interruption is not a failed attempt
    assert world.stored_results() == 1 and len(world.audit("inference.interrupted")) == 1


async def test_a_job_whose_engine_died_is_taken_up_again(world: World, kserve: KServe) -> None:
    kserve.delay = 30  # the first attempt never returns
    await world.order()
    await world.study()
    await world.until(one(world, "running"))
    await world.stop()
    ctx = open_context(world.root)  # as if the process had been killed: running, held by a pid that is gone
    try:
        from sqlalchemy import update

        from engine.store.tables import InferenceJob

        holder = f"node/{socket.gethostname()}/999999999/gone"  # this host, a pid that no longer runs
        until = datetime.now(UTC) + timedelta(hours=1)  # its lease has not run out: the dead pid tells
        with ctx.db.begin() as conn:
            conn.execute(update(InferenceJob.__table__).values(state="running", holder=holder, lease_until=until,
                                                               due_at=None))  # fmt: skip
    finally:
        ctx.close()
    kserve.delay = 0
    await world.start()
    await world.until(lambda: len(world.results()) == 1)
    assert [j.state for j in world.jobs()] == ["completed"] and world.stored_results() == 1


async def test_unrouted_study_is_kept_and_audited(world: World, kserve: KServe) -> None:
    await world.order()
    await world.study(modality="MR")
    await world.until(lambda: len(world.audit("inference.unrouted")) == 1)
    assert world.jobs() == [] and kserve.requests == []
    assert world.ctx is not None
    [view] = [v for v in world.ctx.messages.list(channel="inference") if v.kind == "record study.ready"]
    assert view.status == "filtered" and view.error == "no rule matched"


@pytest.mark.parametrize("world", [{"state": "shadow"}], indirect=True)
async def test_shadow_version_result_is_stored_never_released(world: World, kserve: KServe) -> None:
    await world.order()
    await world.study()
    await world.until(one(world, "completed"))
    [job] = world.jobs()
    assert job.clinical is False and world.stored_results() == 1
    await asyncio.sleep(0.3)
    assert world.results() == [] and world.results("inference.shadow") == []


async def test_external_model_receives_no_phi_and_results_are_reidentified(
    tmp_path: Path, store_url: str | None
) -> None:
    upload = UploadServer()
    certs = make_certs(tmp_path / "tls")
    with serve(upload.app(), server_context(str(certs.server_cert), str(certs.server_key))) as url:
        root = project(tmp_path / "p", store_url, upload_model(url + "/sync", certs.ca), "vendor-ct")
        world = World(root)
        await world.start()
        try:
            upload.result = {"findings": []}  # filled in below with the pseudonymous UIDs the model saw
            await world.order()
            originals = await world.study()
            await world.until(lambda: len(world.results()) == 1 or any(j.state == "dead" for j in world.jobs()))
        finally:
            await world.stop()
    [received] = upload.received
    body = received.body
    for text in phi.STRINGS:
        for form in phi.variants(text):
            assert form not in body, "fake PHI reached the external model"
    original_uids = {str(read_header(raw).sop_instance_uid) for raw in originals}
    assert not original_uids & set(received.sop_instance_uids)  # UIDs were replaced
    ctx = open_context(root)
    try:
        with ctx.db.connect() as conn:
            [disclosure] = conn.execute(select(Disclosure.__table__)).all()
        assert disclosure.method in ("safe-harbor", "limited-data-set") and disclosure.items == len(originals)
        assert disclosure.patient_idx == ctx.index("mrn", phi.MRN)
    finally:
        ctx.close()


async def test_external_result_uids_map_back_to_the_hospitals(tmp_path: Path, store_url: str | None) -> None:
    upload = UploadServer()
    seen: list[str] = []

    certs = make_certs(tmp_path / "tls")
    with serve(upload.app(), server_context(str(certs.server_cert), str(certs.server_key))) as url:
        root = project(tmp_path / "p", store_url, upload_model(url + "/sync", certs.ca), "vendor-ct")
        world = World(root)
        await world.start()
        try:
            original = upload._result_bytes

            def result_naming_what_it_saw() -> bytes:
                got = upload.received[-1]
                seen.extend(got.sop_instance_uids)
                return json.dumps({"findings": [{
                    "system": "http://snomed.info/sct", "code": "1386000", "display": "Intracranial hemorrhage",
                    "score": 0.97, "instance_uids": got.sop_instance_uids[:2],
                }]}).encode()  # fmt: skip

            upload._result_bytes = result_naming_what_it_saw  # type: ignore[method-assign]
            await world.order()
            originals = await world.study()
            await world.until(lambda: len(world.results()) == 1)
            [result] = world.results()
            upload._result_bytes = original  # type: ignore[method-assign]
        finally:
            await world.stop()
    original_uids = [str(read_header(raw).sop_instance_uid) for raw in originals]
    [finding] = result["result"]["findings"]
    assert set(finding["instance_uids"]) <= set(original_uids) and len(finding["instance_uids"]) == 2
    assert not set(finding["instance_uids"]) & set(seen)


async def test_callback_result_arrives_through_the_engine_api(tmp_path: Path, store_url: str | None) -> None:
    """A model that answers later posts to POST /inference/callbacks/{job} of the engine's API, with
    the token its upload carried; a wrong token is refused like an unknown job."""
    import httpx

    from engine.runtime.serve import model_callback
    from engine.web.app import create_app
    from engine.web.site import Site

    api_root = write_project(tmp_path / "api")  # the API's own store: the callback route needs none of it
    keyring.write_file(keyring.generate(dev=False), api_root / "keys" / "keyring.json")
    api_ctx = open_context(api_root)

    upload = UploadServer()
    upload.result = {"findings": [{"system": "http://snomed.info/sct", "code": "1386000",
                                   "display": "Intracranial hemorrhage", "score": 0.97}]}  # fmt: skip
    certs = make_certs(tmp_path / "tls")
    with serve(create_app(Site.open(api_ctx, lambda: (True, {}), callback=model_callback))) as api, \
            serve(upload.app(), server_context(str(certs.server_cert), str(certs.server_key))) as url:  # fmt: skip
        refused = httpx.post(f"{api}/inference/callbacks/no-such-job", content=b"{}",
                             headers={"X-Radbridge-Callback-Token": "guess"})  # fmt: skip
        assert refused.status_code == 404

        def post_back(job_id: str, body: bytes, token: str) -> int:
            wrong = httpx.post(f"{api}/inference/callbacks/{job_id}", content=body,
                               headers={"X-Radbridge-Callback-Token": token + "x"})  # fmt: skip
            assert wrong.status_code == 404
            return httpx.post(f"{api}/inference/callbacks/{job_id}", content=body,
                              headers={"X-Radbridge-Callback-Token": token}).status_code  # fmt: skip

        upload.deliver = post_back
        model = upload_model(url + "/callback", certs.ca) + "\n      result: callback"
        world = World(project(tmp_path / "p", store_url, model, "vendor-ct"))
        await world.start()
        try:
            await world.order()
            await world.study()
            await world.until(lambda: len(world.results()) == 1)
            [result] = world.results()
        finally:
            await world.stop()
            api_ctx.close()
    assert upload.delivered == [200]
    assert [f["code"] for f in result["result"]["findings"]] == ["1386000"]


async def test_external_oip_model_receives_no_phi(tmp_path: Path, store_url: str | None) -> None:
    """The Open Inference Protocol variant: the tensor is made from the de-identified study and the
    request names the job, never the patient."""
    kserve = KServe(shape=[-1, 4, 8, 8], scores=[0.95, 0.3, 0.6])
    certs = make_certs(tmp_path / "tls")
    with serve(kserve.app(), server_context(str(certs.server_cert), str(certs.server_key))) as url:
        model = oip_model(url).replace("      kind: oip\n", f"      kind: oip\n      external: true\n"
                                                           f"      tls: {{ca: {certs.ca}}}\n")  # fmt: skip
        world = World(project(tmp_path / "p", store_url, model, "ich-ct"))
        await world.start()
        try:
            await world.order()
            await world.study()
            await world.until(lambda: len(world.results()) == 1)
            assert world.ctx is not None
            with world.ctx.db.connect() as conn:
                [disclosure] = conn.execute(select(Disclosure.__table__)).all()
        finally:
            await world.stop()
    sent = json.dumps(kserve.requests).encode()
    for text in phi.STRINGS:
        for form in phi.variants(text):
            assert form not in sent, "fake PHI reached the external model"
    assert disclosure.recipient == "ich-ct@1.2.0 127.0.0.1" and disclosure.items == 4
