"""OipClient against a real KServe v2 REST server on 127.0.0.1: tensors out, scores in, thresholds,
metadata checks, and every way the server can fail."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest

from engine.core.errors import PermanentError, RetryableError
from engine.inference.http import RetryLater
from engine.inference.http.errors import retry_after
from engine.inference.http.oip import OipClient
from engine.inference.models import OipModel, Preprocessing, StudyInput
from tests import phi
from tests.inference.http.servers import KServe, serve

LABELS = [
    {"system": "http://snomed.info/sct", "code": "50960005", "display": "Intracranial hemorrhage"},
    {"system": "http://snomed.info/sct", "code": "373945007", "display": "Midline shift"},
    {"system": "http://snomed.info/sct", "code": "263204007", "display": "Skull fracture"},
]
THRESHOLDS = {"50960005": {"critical": 0.8, "report": 0.1}, "373945007": {"critical": 0.9, "report": 0.5}}


def model(url: str, **options: Any) -> OipModel:
    declared = {"kind": "oip", "name": "ich-ct", "version": "1.2.0", "url": url, "model_name": "ich-ct",
                "output_name": "scores", "labels": LABELS, "thresholds": THRESHOLDS,
                "preprocessing": {"shape": [4, 8, 8], "dtype": "float32"}, "timeout_s": 5}  # fmt: skip
    return OipModel.model_validate({**declared, **options})


def prepare(instances: list[bytes], pre: Preprocessing) -> numpy.ndarray:
    """Stands in for engine.inference.pixels: a tensor of the declared shape, one value per instance count."""
    assert pre.shape is not None
    return numpy.full(pre.shape, len(instances) / 10, dtype=pre.dtype)


STUDY = StudyInput(job_id="job-0001", instances=[b"i1", b"i2", b"i3", b"i4", b"i5"])


@pytest.fixture
def kserve() -> KServe:
    return KServe()


@pytest.fixture
def url(kserve: KServe) -> Iterator[str]:
    with serve(kserve.app()) as base:
        yield base


async def run(config: OipModel, study: StudyInput = STUDY, *, times: int = 1):  # type: ignore[no-untyped-def]
    client = OipClient(config, prepare, root=Path("/"))
    try:
        outputs = [await client.infer(study) for _ in range(times)]
    finally:
        await client.close()
    return outputs[-1]


async def test_scores_become_findings_thresholds_and_priority(kserve: KServe, url: str) -> None:
    output = await run(model(url), times=2)
    result = output.result
    assert (result.model, result.version) == ("ich-ct", "1.2.0")
    # 0.93 >= critical 0.8: critical; 0.41 < report 0.5: dropped; 0.07: no threshold, kept, not critical
    assert [(f.code, f.display, f.score, f.critical) for f in result.findings] == [
        ("50960005", "Intracranial hemorrhage", 0.93, True),
        ("263204007", "Skull fracture", 0.07, False),
    ]
    assert result.findings[0].system == "http://snomed.info/sct"
    assert result.suggested_priority == "stat"
    assert result.summary == "Findings: Intracranial hemorrhage (score 0.93, critical); Skull fracture (score 0.07)."
    assert output.raw == kserve.answers[-1]
    assert kserve.metadata_calls == 1  # checked on first use only
    sent = kserve.requests[-1]
    assert sent["id"] == "job-0001"
    assert sent["outputs"] == [{"name": "scores"}]
    [tensor] = sent["inputs"]
    assert (tensor["name"], tensor["shape"], tensor["datatype"]) == ("input", [1, 4, 8, 8], "FP32")
    assert tensor["data"] == [0.5] * 256


async def test_no_critical_finding_stays_routine(kserve: KServe, url: str) -> None:
    kserve.scores = [0.79, 0.95, 0.0]
    result = (await run(model(url))).result
    assert [(f.code, f.critical) for f in result.findings] == [
        ("50960005", False),
        ("373945007", True),
        ("263204007", False),
    ]
    assert result.suggested_priority == "stat"  # midline shift 0.95 >= 0.9
    kserve.scores = [0.79, 0.5, 0.0]
    result = (await run(model(url))).result
    assert [f.critical for f in result.findings] == [False, False, False]
    assert result.suggested_priority == "routine"


async def test_first_output_and_uint8_without_batch_dimension(kserve: KServe) -> None:
    kserve.datatype, kserve.shape, kserve.outputs = "UINT8", [4, -1, 8], ("probabilities", "logits")
    with serve(kserve.app()) as base:
        config = model(base, output_name=None, preprocessing={"shape": [4, 8, 8], "dtype": "uint8"})
        result = (await run(config)).result
    tensor = kserve.requests[-1]["inputs"][0]
    assert (tensor["shape"], tensor["datatype"], tensor["data"][:2]) == ([4, 8, 8], "UINT8", [0, 0])
    assert "outputs" not in kserve.requests[-1]
    assert [f.score for f in result.findings] == [0.93, 0.07]


@pytest.mark.parametrize(
    ("server", "declared", "named"),
    [
        ({"input_name": "image"}, {}, "input_name"),
        ({"datatype": "FP16"}, {}, "preprocessing.dtype"),
        ({"shape": [-1, 4, 16, 16]}, {}, "preprocessing.shape"),
        ({"shape": [2, 4, 8, 8]}, {}, "preprocessing.shape"),
        ({"outputs": ("logits",)}, {}, "output_name"),
        ({}, {"model_name": "other"}, "metadata: server refused: 404"),
    ],
)
async def test_metadata_mismatch_is_permanent(server: dict[str, Any], declared: dict[str, Any], named: str) -> None:
    kserve = KServe(**server)
    with serve(kserve.app()) as base, pytest.raises(PermanentError) as caught:
        await run(model(base, **declared))
    assert named in str(caught.value)
    assert kserve.requests == []  # nothing sent to a model that does not fit


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_server_error_is_retryable(kserve: KServe, url: str, status: int) -> None:
    kserve.status = status
    with pytest.raises(RetryLater) as caught:
        await run(model(url))
    assert isinstance(caught.value, RetryableError)
    assert caught.value.retry_after is None
    assert str(caught.value) == f"model ich-ct 1.2.0: infer: server answered {status}"


async def test_429_carries_retry_after(kserve: KServe, url: str) -> None:
    kserve.status, kserve.headers = 429, {"Retry-After": "7"}
    with pytest.raises(RetryLater) as caught:
        await run(model(url))
    assert caught.value.retry_after == 7.0
    kserve.status, kserve.headers = 503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}  # in the past: now
    with pytest.raises(RetryLater) as caught:
        await run(model(url))
    assert caught.value.retry_after == 0.0


def test_retry_after_forms() -> None:
    assert retry_after(None) is None
    assert retry_after("120") == 120.0
    assert retry_after("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= (retry_after(future) or 0) <= 60


async def test_refusal_is_permanent_and_carries_no_body(kserve: KServe, url: str) -> None:
    kserve.status = 400
    study = StudyInput(job_id=phi.MRN, instances=[b"x"] * 5)  # the server echoes the id in its error body
    with pytest.raises(PermanentError) as caught:
        await run(model(url), study)
    assert str(caught.value) == "model ich-ct 1.2.0: infer: server refused: 400"


def _answer(data: Any, shape: list[int] | None = None, datatype: str = "FP32", **extra: Any) -> bytes:
    output = {"name": "scores", "datatype": datatype, "shape": shape or [1, 3], "data": data}
    return json.dumps({"model_name": "ich-ct", "model_version": "1.2.0", "outputs": [output], **extra}).encode()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (_answer([0.9, 0.1, 0.2]).replace(b"0.1", b"NaN"), "answer is not JSON"),
        (_answer([0.9, 0.1]), "2 scores for 3 labels"),
        (_answer([0.9, "0.1", 0.2]), "score 1 is not a number"),
        (_answer([0.9, True, 0.2]), "score 1 is not a number"),
        (_answer([0.9, 1.5, 0.2]), "score 1 is not within 0..1"),
        (_answer([0.9, -0.1, 0.2]), "score 1 is not within 0..1"),
        (_answer([[0.9, 0.1, 0.2]], [1, 4]), "scores shape"),
        (_answer(["a", "b", "c"], datatype="BYTES"), "scores datatype"),
        (json.dumps({"outputs": []}).encode(), "outputs"),
        (b"<html>oops</html>", "answer is not JSON"),
        (b"[1, 2]", "answer is not a JSON object"),
    ],
)
async def test_garbage_is_permanent(kserve: KServe, url: str, body: bytes, says: str) -> None:
    kserve.body = body
    with pytest.raises(PermanentError) as caught:
        await run(model(url))
    assert str(caught.value).startswith("model ich-ct 1.2.0: infer: model returned garbage: ")
    assert says in str(caught.value)


async def test_nested_scores_are_accepted(kserve: KServe, url: str) -> None:
    kserve.body = _answer([[0.9, 0.6, 0.2]])
    result = (await run(model(url))).result
    assert [f.score for f in result.findings] == [0.9, 0.6, 0.2]


async def test_wrong_model_version_or_id_is_refused(kserve: KServe, url: str) -> None:
    kserve.model_version = "1.3.0"
    with pytest.raises(PermanentError, match="another model version than the configured one"):
        await run(model(url))
    kserve.model_version = None  # no model_version in the answer: nothing to contradict
    assert (await run(model(url))).result.version == "1.2.0"
    kserve.body = _answer([0.9, 0.1, 0.2], id="job-9999")
    with pytest.raises(PermanentError, match="another request id"):
        await run(model(url))


async def test_slow_server_times_out_retryably(kserve: KServe, url: str) -> None:
    kserve.delay = 0.8
    started = time.monotonic()
    with pytest.raises(RetryableError) as caught:
        await run(model(url, timeout_s=0.3))
    assert time.monotonic() - started < 0.7
    assert "timed out" in str(caught.value) or "no answer within 0.3 s" in str(caught.value)


async def test_no_server_is_retryable(kserve: KServe) -> None:
    with serve(kserve.app()) as base:
        pass  # the port is free again
    with pytest.raises(RetryableError, match="connection failed"):
        await run(model(base))


async def test_tensor_with_nan_is_refused_before_sending(kserve: KServe, url: str) -> None:
    def broken(instances: list[bytes], pre: Preprocessing) -> numpy.ndarray:
        return numpy.full((4, 8, 8), numpy.nan, dtype=numpy.float32)

    client = OipClient(model(url), broken, root=Path("/"))
    with pytest.raises(PermanentError, match="NaN or infinite"):
        await client.infer(STUDY)
    await client.close()
    assert kserve.requests == []
