"""Open Inference Protocol (KServe v2 REST) client: the study's chosen series as one tensor in, a
score per label out.

First use: GET {url}/v2/models/{model_name} (metadata) checks that the input tensor exists with our
datatype and a compatible shape (-1 is a free dimension; one leading batch dimension is accepted and
sent as 1), and that the named output exists. Then each study: POST {url}/v2/models/{model_name}/infer
with {"id": job_id, "inputs": [{"name", "shape", "datatype", "data": flat row-major list}],
"outputs": [{"name"}]}. JSON only: the binary tensor extension is not spoken (simpler to check and
to keep as the sealed raw answer; fine for the tensor sizes radiology triage models take).

The scores tensor (output_name, or the first output) holds one number in 0..1 per configured label,
in order; anything else is garbage (PermanentError). An answer naming another model_version than the
configured one is refused: a result must be attributed to the version that produced it.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy

from engine.core.errors import PermanentError, RetryableError
from engine.core.result import Finding, Result
from engine.inference.http.answer import garbage, load_json
from engine.inference.http.transport import ModelHttp
from engine.inference.models import ModelOutput, OipModel, Preprocessing, StudyInput
from engine.inference.thresholds import apply_thresholds, summarize

DATATYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8", "int16": "INT16"}
_SCORE_TYPES = {"FP16", "FP32", "FP64", "BF16"}

Prepare = Callable[[list[bytes], Preprocessing], numpy.ndarray]


class OipClient:
    """A model served over the Open Inference Protocol. `prepare` turns the study's instances into
    the input tensor per the model's preprocessing (engine.inference.pixels); it runs in a thread."""

    def __init__(self, config: OipModel, prepare: Prepare, *, root: Path) -> None:
        self.config = config
        self._prepare = prepare
        self._http = ModelHttp(config, root)
        self._what = self._http.what
        base = f"{config.url.rstrip('/')}/v2/models/{config.model_name}"
        self._metadata_url, self._infer_url = base, f"{base}/infer"
        self._input_shape: list[int] | None = None  # the server's declared input shape, once checked
        self._checked = asyncio.Lock()

    async def infer(self, study: StudyInput) -> ModelOutput:
        try:
            async with asyncio.timeout(self.config.timeout_s):
                return await self._infer(study)
        except TimeoutError:
            raise RetryableError(f"{self._what}: no answer within {self.config.timeout_s} s") from None

    async def close(self) -> None:
        await self._http.close()

    async def _infer(self, study: StudyInput) -> ModelOutput:
        server_shape = await self._metadata()
        pre = self.config.preprocessing
        tensor = await asyncio.to_thread(self._prepare, study.instances, pre)
        if str(tensor.dtype) != pre.dtype:
            raise PermanentError(
                f"{self._what}: prepared tensor is {tensor.dtype}, preprocessing.dtype says {pre.dtype}"
            )
        shape = _fit(server_shape, list(tensor.shape), self._what)
        request: dict[str, Any] = {
            "id": study.job_id,
            "inputs": [{"name": self.config.input_name, "shape": shape, "datatype": DATATYPES[pre.dtype],
                        "data": tensor.ravel().tolist()}],
        }  # fmt: skip
        if self.config.output_name:
            request["outputs"] = [{"name": self.config.output_name}]
        try:
            payload = json.dumps(request, allow_nan=False, separators=(",", ":")).encode()
        except ValueError:
            raise PermanentError(f"{self._what}: prepared tensor holds NaN or infinite values") from None
        answer = await self._http.request(
            "POST", self._infer_url, step="infer", body=lambda: payload,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )  # fmt: skip
        result = self._result(load_json(answer.body, f"{self._what}: infer"), study.job_id)
        return ModelOutput(result=result, raw=answer.body)

    async def _metadata(self) -> list[int]:
        async with self._checked:
            if self._input_shape is None:
                answer = await self._http.request(
                    "GET", self._metadata_url, step="metadata", headers={"Accept": "application/json"}
                )
                self._input_shape = self._check_metadata(load_json(answer.body, f"{self._what}: metadata"))
            return self._input_shape

    def _check_metadata(self, meta: Any) -> list[int]:
        where = f"{self._what}: metadata"
        config, pre = self.config, self.config.preprocessing
        inputs = meta.get("inputs") if isinstance(meta, dict) else None
        if not isinstance(inputs, list):
            raise garbage(where, "inputs")
        spec = next((i for i in inputs if isinstance(i, dict) and i.get("name") == config.input_name), None)
        if spec is None:
            raise PermanentError(f"{where}: the server has no input named by input_name")
        if spec.get("datatype") != DATATYPES[pre.dtype]:
            raise PermanentError(f"{where}: input datatype does not match preprocessing.dtype ({DATATYPES[pre.dtype]})")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise garbage(where, "inputs.shape")
        if pre.shape is not None:
            _fit(shape, list(pre.shape), where, field="preprocessing.shape")
        outputs = meta.get("outputs")
        if config.output_name and isinstance(outputs, list):
            if not any(isinstance(o, dict) and o.get("name") == config.output_name for o in outputs):
                raise PermanentError(f"{where}: the server has no output named by output_name")
        return shape

    def _result(self, answer: Any, job_id: str) -> Result:
        where = f"{self._what}: infer"
        config = self.config
        if not isinstance(answer, dict):
            raise garbage(where, "answer is not a JSON object")
        if "model_version" in answer and answer["model_version"] != config.version:
            raise PermanentError(f"{where}: answer is for another model version than the configured one")
        if "id" in answer and answer["id"] != job_id:
            raise PermanentError(f"{where}: answer names another request id")
        outputs = answer.get("outputs")
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise garbage(where, "outputs")
        if config.output_name:
            output = next((o for o in outputs if o.get("name") == config.output_name), None)
            if output is None:
                raise garbage(where, "outputs (no output named by output_name)")
        else:
            output = outputs[0]
        scores = _scores(output, len(config.labels), where)
        findings = [
            Finding(system=label.system, code=label.code, display=label.display, score=score)
            for label, score in zip(config.labels, scores, strict=True)
        ]
        result = apply_thresholds(Result(model=config.name, version=config.version, findings=findings),
                                  config.thresholds)  # fmt: skip
        return result.model_copy(update={"summary": summarize(result.findings)})


def _fit(server: list[int], ours: list[int], where: str, field: str = "input shape") -> list[int]:
    """The shape to send: ours, or ours behind a batch dimension of 1 when the server declares one."""
    if len(server) == len(ours) + 1 and server[0] in (-1, 1):
        server, batch = server[1:], [1]
    else:
        batch = []
    if len(server) != len(ours) or any(s not in (-1, o) for s, o in zip(server, ours, strict=True)):
        raise PermanentError(f"{where}: {field} {ours} does not fit the server's input shape {server}")
    return batch + ours


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    return [item for part in data for item in _flatten(part)]


def _scores(output: dict[str, Any], labels: int, where: str) -> list[float]:
    if output.get("datatype") not in _SCORE_TYPES:
        raise garbage(where, "scores datatype is not floating point")
    data = output.get("data")
    if not isinstance(data, list):
        raise garbage(where, "scores data")
    values = _flatten(data)
    if len(values) != labels:
        raise garbage(where, f"{len(values)} scores for {labels} labels")
    shape = output.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape) or math.prod(shape) != labels:
        raise garbage(where, "scores shape")
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise garbage(where, f"score {index} is not a number")
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise garbage(where, f"score {index} is not within 0..1")
    return [float(v) for v in values]
