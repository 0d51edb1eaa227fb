"""UploadClient against a real study-upload server on 127.0.0.1: multipart/related and STOW-RS,
results sync, polled and called back, the JSON result format, and the server receiving exactly the
instances given."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from engine.core.errors import ConfigError, PermanentError, RetryableError
from engine.inference.http.callbacks import CallbackRegistry, UnknownCallback
from engine.inference.http.upload import UploadClient
from engine.inference.models import StudyInput, UploadModel
from tests import phi
from tests.dicomdata import KB, make_instance, part10_bytes
from tests.inference.http.servers import UploadServer, serve

HEMORRHAGE = {"system": "http://snomed.info/sct", "code": "50960005", "display": "Intracranial hemorrhage",
              "score": 0.91, "body_site": "brain",
              "measurements": [{"name": "volume", "value": 12.5, "unit": "mL"}]}  # fmt: skip
FRACTURE = {"system": "http://snomed.info/sct", "code": "263204007", "display": "Skull fracture", "score": 0.04}
RESULT = {"model": "ich-upload", "version": "2.0.1", "job_id": "job-0042", "findings": [HEMORRHAGE, FRACTURE],
          "summary": "Acute hemorrhage, 12.5 mL.", "suggested_priority": "urgent",
          "disclaimer": "Research use only."}  # fmt: skip
THRESHOLDS = {"50960005": {"critical": 0.9, "report": 0.2}, "263204007": {"critical": 0.9, "report": 0.05}}


def instances(count: int = 3, job_id: str = "job-0042") -> StudyInput:
    """Real Part 10 CT instances of one series (carrying tests/phi.py's fake PHI, as identified input)."""
    study, series = generate_uid(), generate_uid()
    data = [part10_bytes(make_instance(study_uid=study, series_uid=series, number=n + 1, pixel_bytes=4 * KB))
            for n in range(count)]  # fmt: skip
    return StudyInput(job_id=job_id, instances=data, facts={"modality": "CT"})


def uids(study: StudyInput) -> list[str]:
    return [str(pydicom.dcmread(io.BytesIO(i)).SOPInstanceUID) for i in study.instances]


async def delivered(server: UploadServer) -> list[object]:
    """What the server's deliver call returned or raised (it records after the job is settled)."""
    deadline = time.monotonic() + 5
    while not server.delivered and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return server.delivered


def config(url: str, **options: Any) -> UploadModel:
    declared = {"kind": "upload", "name": "ich-upload", "version": "2.0.1", "url": url, "thresholds": THRESHOLDS,
                "timeout_s": 5, "poll_s": 0.02}  # fmt: skip
    return UploadModel.model_validate({**declared, **options})


@pytest.fixture
def server() -> UploadServer:
    up = UploadServer()
    up.result = dict(RESULT)
    return up


@pytest.fixture
def url(server: UploadServer) -> Iterator[str]:
    with serve(server.app()) as base:
        yield base


async def run(cfg: UploadModel, study: StudyInput, registry: CallbackRegistry | None = None):  # type: ignore[no-untyped-def]
    client = UploadClient(cfg, root=Path("/"), **({"registry": registry} if registry else {}))
    try:
        return await client.infer(study)
    finally:
        await client.close()


def assert_expected(result: Any) -> None:
    assert (result.model, result.version) == ("ich-upload", "2.0.1")
    assert [(f.code, f.score, f.critical) for f in result.findings] == [("50960005", 0.91, True)]  # fracture < 0.05
    finding = result.findings[0]
    assert (finding.body_site, finding.measurements[0].value, finding.measurements[0].unit) == ("brain", 12.5, "mL")
    assert result.suggested_priority == "stat"  # raised from the model's "urgent" by the critical finding
    assert result.summary == "Acute hemorrhage, 12.5 mL."
    assert result.disclaimer == "Research use only."


async def test_sync_multipart(server: UploadServer, url: str) -> None:
    study = instances(3)
    output = await run(config(f"{url}/sync"), study)
    assert_expected(output.result)
    assert output.raw == json.dumps(RESULT).encode()
    [got] = server.received
    assert got.parts == study.instances  # byte for byte, in order
    assert got.sop_instance_uids == uids(study)
    assert got.headers["content-type"].startswith('multipart/related; type="application/dicom"; boundary=')
    assert got.headers["content-length"] == str(len(got.body))
    assert got.headers["x-radbridge-job-id"] == "job-0042"
    assert got.headers["accept"] == "application/json"
    assert "x-radbridge-callback-id" not in got.headers


async def test_server_records_exactly_the_bytes_sent(server: UploadServer, url: str) -> None:
    """What the lead's end-to-end PHI test reads: identified input here, so the fake PHI is there."""
    await run(config(f"{url}/sync"), instances(2))
    assert set(phi.leaks_in_bytes(server.received[0].body)) == {phi.NAME_FAMILY, phi.NAME_GIVEN, phi.MRN, phi.DOB,
                                                                phi.ACCESSION}  # fmt: skip


@pytest.mark.parametrize("named_in", ["location", "json"])
async def test_poll(server: UploadServer, url: str, named_in: str) -> None:
    server.pending, server.result_url_in = 3, named_in
    study = instances(2)
    output = await run(config(f"{url}/poll", result="poll"), study)
    assert_expected(output.result)
    assert server.polls == 4  # three "running", then the result
    assert server.received[0].sop_instance_uids == uids(study)


async def test_poll_times_out_retryably(server: UploadServer, url: str) -> None:
    server.pending = None  # never ready
    started = time.monotonic()
    with pytest.raises(RetryableError, match=r"^model ich-upload 2.0.1: no result within 0.3 s$"):
        await run(config(f"{url}/poll", result="poll", timeout_s=0.3), instances(1))
    assert 0.3 <= time.monotonic() - started < 1.0
    assert server.polls >= 5


async def test_poll_refuses_a_result_url_elsewhere(server: UploadServer, url: str) -> None:
    server.result_url = "https://collector.example.test/results/1"
    with pytest.raises(PermanentError, match="result URL is on another origin"):
        await run(config(f"{url}/poll", result="poll"), instances(1))
    assert server.polls == 0


async def test_callback_delivered_from_another_thread(server: UploadServer, url: str) -> None:
    registry = CallbackRegistry()
    server.deliver = registry.deliver  # the server's thread plays the engine's callback route
    study = instances(3)
    output = await run(config(f"{url}/callback", result="callback"), study, registry)
    assert_expected(output.result)
    assert server.received[0].headers["x-radbridge-callback-id"] == "job-0042"
    assert server.received[0].sop_instance_uids == uids(study)
    assert await delivered(server) == [output]  # deliver returned the same output the job got
    assert registry.pending() == set()


async def test_callback_delivered_in_the_same_loop(server: UploadServer, url: str) -> None:
    registry = CallbackRegistry()
    job = asyncio.create_task(run(config(f"{url}/callback", result="callback"), instances(1), registry))
    while not server.received:
        await asyncio.sleep(0.01)
    assert registry.pending() == {"job-0042"}
    token = registry.token("job-0042")
    assert server.received[0].headers["x-radbridge-callback-token"] == token
    with pytest.raises(UnknownCallback):  # only the model that got the study can answer it
        registry.deliver("job-0042", json.dumps(RESULT).encode(), "guessed-token")
    assert registry.pending() == {"job-0042"}
    delivered = registry.deliver("job-0042", json.dumps(RESULT).encode(), token)
    output = await job
    assert output is delivered
    with pytest.raises(UnknownCallback):  # a repeated callback finds no job waiting
        registry.deliver("job-0042", json.dumps(RESULT).encode(), token)


async def test_callback_times_out_retryably(server: UploadServer, url: str) -> None:
    registry = CallbackRegistry()
    with pytest.raises(RetryableError, match="no result within 0.3 s"):
        await run(config(f"{url}/callback", result="callback", timeout_s=0.3), instances(1), registry)
    assert registry.pending() == set()
    with pytest.raises(UnknownCallback, match="^job job-0042: no result awaited$"):
        registry.deliver("job-0042", json.dumps(RESULT).encode(), "any")


async def test_callback_with_garbage_fails_the_job(server: UploadServer, url: str) -> None:
    registry = CallbackRegistry()
    server.deliver = registry.deliver
    server.result = {"findings": [{**HEMORRHAGE, "score": "high"}]}
    with pytest.raises(PermanentError, match=r"callback: model returned garbage: findings\.0\.score"):
        await run(config(f"{url}/callback", result="callback"), instances(1), registry)
    assert isinstance((await delivered(server))[0], PermanentError)  # the route answers 422


async def test_same_job_awaited_twice_is_refused() -> None:
    registry = CallbackRegistry()
    future = registry.expect("job-7", lambda body: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(RetryableError, match="already awaits"):
        registry.expect("job-7", lambda body: None)  # type: ignore[arg-type,return-value]
    registry.forget("job-7", future)
    assert registry.pending() == set()


@pytest.mark.parametrize("result", ["poll", "callback"])
async def test_stow(server: UploadServer, url: str, result: str) -> None:
    registry = CallbackRegistry()
    server.deliver = registry.deliver
    study = instances(3)
    output = await run(config(f"{url}/stow", mode="stow", result=result), study, registry)
    assert_expected(output.result)
    [got] = server.received
    assert got.path == "/stow/studies"
    assert got.headers["accept"] == "application/dicom+json"
    assert got.parts == study.instances and got.sop_instance_uids == uids(study)


@pytest.mark.parametrize(
    ("failures", "error", "says"),
    [
        ([0xA700], RetryableError, "1 of 3 instances not stored (reason 0xa700)"),
        ([0x0110, 0xA701], RetryableError, "2 of 3 instances not stored (reason 0x0110)"),
        ([0xA700, 0xC000], PermanentError, "2 of 3 instances not stored (reason 0xc000)"),
        ([0x0122] * 3, PermanentError, "3 of 3 instances not stored (reason 0x0122)"),  # 409: none stored
    ],
)
async def test_stow_failures(server: UploadServer, url: str, failures: list[int], error: type, says: str) -> None:
    server.stow_failures = failures
    with pytest.raises(error) as caught:
        await run(config(f"{url}/stow", mode="stow", result="poll"), instances(3))
    assert str(caught.value) == f"model ich-upload 2.0.1: stow: {says}"
    assert not isinstance(caught.value, PermanentError if error is RetryableError else RetryableError)


async def test_stow_conflict_without_body_and_busy(server: UploadServer, url: str) -> None:
    server.stow_status = 409
    with pytest.raises(PermanentError, match=r"stow: store refused the study \(409\)"):
        await run(config(f"{url}/stow", mode="stow", result="poll"), instances(1))
    server.stow_status = 503
    with pytest.raises(RetryableError, match="stow: server answered 503"):
        await run(config(f"{url}/stow", mode="stow", result="poll"), instances(1))


def test_stow_needs_poll_or_callback() -> None:
    with pytest.raises(ConfigError, match="a STOW-RS store answers no result"):
        UploadClient(config("http://127.0.0.1:1", mode="stow"), root=Path("/"))


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ({"findings": [{**HEMORRHAGE, "score": "0.91"}]}, "garbage: findings.0.score (float_type)"),
        ({"findings": [{**HEMORRHAGE, "score": 1.2}]}, "garbage: findings.0.score (less_than_equal)"),
        ({"findings": [{k: v for k, v in HEMORRHAGE.items() if k != "code"}]}, "garbage: findings.0.code (missing)"),
        ({"findings": [], "patient_name": phi.NAME_FAMILY}, "garbage: patient_name (extra_forbidden)"),
        ({"suggested_priority": "now"}, "garbage: suggested_priority (literal_error)"),
        ({"findings": {"a": 1}}, "garbage: findings (list_type)"),
        (b'{"findings": [{"score": NaN}]}', "garbage: answer is not JSON"),
        (b"[]", "garbage: answer is not a JSON object"),
        ({"version": "2.0.0"}, "answer is for another model version"),
        ({"job_id": "job-0043"}, "answer names another job"),
    ],
)
async def test_result_garbage(server: UploadServer, url: str, answer: dict[str, Any] | bytes, says: str) -> None:
    server.result = answer
    with pytest.raises(PermanentError) as caught:
        await run(config(f"{url}/sync"), instances(1))
    assert str(caught.value) == f"model ich-upload 2.0.1: upload: {says}" or says in str(caught.value)
    assert phi.NAME_FAMILY not in str(caught.value) and "0.91" not in str(caught.value)


async def test_minimal_result_gets_a_summary_and_model_critical_is_ignored(server: UploadServer, url: str) -> None:
    server.result = {"findings": [{**FRACTURE, "score": 0.5, "critical": True}]}
    result = (await run(config(f"{url}/sync"), instances(1))).result
    assert [(f.code, f.critical) for f in result.findings] == [("263204007", False)]  # 0.5 < critical 0.9
    assert result.suggested_priority == "routine"
    assert result.summary == "Findings: Skull fracture (score 0.50)."


async def test_sync_answered_202_is_permanent(server: UploadServer, url: str) -> None:
    server.sync_status = 202
    with pytest.raises(PermanentError, match=r"upload answered 202, not a result \(sync\)"):
        await run(config(f"{url}/sync"), instances(1))


async def test_refusals_and_outages(server: UploadServer, url: str) -> None:
    server.sync_status = 422
    with pytest.raises(PermanentError, match=r"^model ich-upload 2.0.1: upload: server refused: 422$"):
        await run(config(f"{url}/sync"), instances(1))
    with pytest.raises(PermanentError, match="server refused: 404"):
        await run(config(f"{url}/nowhere"), instances(1))
    with serve(UploadServer().app()) as gone:
        pass
    with pytest.raises(RetryableError, match="upload: connection failed"):
        await run(config(f"{gone}/sync"), instances(1))
