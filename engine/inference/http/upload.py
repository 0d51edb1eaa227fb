"""Upload client: the (de-identified, for an external model) study posted to a model server as DICOM,
the result answered in JSON (format: engine.inference.http.answer).

Sending (`mode`):
- multipart: POST {url}, `Content-Type: multipart/related; type="application/dicom"`, one part per
  instance; `Accept: application/json`.
- stow: POST {url}/studies per DICOMweb STOW-RS (PS3.18 §10.5), `Accept: application/dicom+json`.
  Failed SOP Sequence (0008,1198) in the response: refused out of resources (A7xx), processing
  failure (0110) or resource limitation (0213) are transient, other reasons permanent. A STOW-RS
  store answers no result, so stow goes with result poll (Location header) or callback.

Every request carries `X-Radbridge-Job-Id: <job_id>`.

Receiving (`result`):
- sync: the response (200) is the result.
- poll: the response names the result URL (Location header, or JSON {"result_url"}), on the model
  server's own origin (a credential must not travel elsewhere); it is polled every poll_s: 200 is the
  result, any other 2xx means pending; transient errors while polling are polled through.
- callback: `X-Radbridge-Callback-Id: <job_id>` is sent and the result awaited from
  engine.inference.http.callbacks.

The whole inference (upload, waiting, polling) is bounded by timeout_s → RetryableError.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from engine.core.errors import ConfigError, PermanentError, RetryableError
from engine.inference.http.answer import load_json, parse_result
from engine.inference.http.callbacks import CallbackRegistry, callbacks
from engine.inference.http.multipart import RelatedBody
from engine.inference.http.transport import Answer, ModelHttp
from engine.inference.models import ModelOutput, StudyInput, UploadModel

_FAILED_SOP_SEQUENCE = "00081198"
_FAILURE_REASON = "00081197"


def _transient_failure(reason: int) -> bool:
    return reason >> 8 == 0xA7 or reason in (0x0110, 0x0213)


def _reason(item: Any) -> int:
    """Failure Reason (0008,1197) of a Failed SOP Sequence item; 0xC000 (cannot understand) when unreadable."""
    element = item.get(_FAILURE_REASON) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    reason = values[0] if isinstance(values, list) and values else None
    return reason if isinstance(reason, int) and not isinstance(reason, bool) else 0xC000


class UploadClient:
    """A model reached by uploading the study. `root`: the project root TLS paths are relative to;
    `registry`: where callback results are delivered (the module's `callbacks` by default)."""

    def __init__(self, config: UploadModel, *, root: Path, registry: CallbackRegistry = callbacks) -> None:
        if config.mode == "stow" and config.result == "sync":
            raise ConfigError(f"model {config.name}: a STOW-RS store answers no result: use result poll or callback")
        self.config = config
        self._http = ModelHttp(config, root)
        self._what = self._http.what
        self._registry = registry
        base = config.url.rstrip("/")
        self._url = f"{base}/studies" if config.mode == "stow" else base
        self._origin = httpx.URL(base).copy_with(path="/", query=None, fragment=None)

    async def infer(self, study: StudyInput) -> ModelOutput:
        future = None
        if self.config.result == "callback":
            future = self._registry.expect(study.job_id, lambda body: self._output(body, study.job_id, "callback"))
        try:
            async with asyncio.timeout(self.config.timeout_s):
                answer = await self._send(study)
                if self.config.result == "sync":
                    if answer.status != 200:
                        raise PermanentError(f"{self._what}: upload answered {answer.status}, not a result (sync)")
                    return self._output(answer.body, study.job_id, "upload")
                if self.config.result == "poll":
                    return await self._poll(self._result_url(answer), study.job_id)
                assert future is not None
                return await future
        except TimeoutError:
            raise RetryableError(f"{self._what}: no result within {self.config.timeout_s} s") from None
        finally:
            if future is not None:
                self._registry.forget(study.job_id, future)
                if not future.done():
                    future.cancel()

    async def close(self) -> None:
        await self._http.close()

    def _output(self, body: bytes, job_id: str, step: str) -> ModelOutput:
        return ModelOutput(result=parse_result(body, self.config, job_id, f"{self._what}: {step}"), raw=body)

    async def _send(self, study: StudyInput) -> Answer:
        body = RelatedBody(study.instances)
        headers = {
            "Content-Type": body.content_type,
            "Content-Length": str(body.length),
            "Accept": "application/dicom+json" if self.config.mode == "stow" else "application/json",
            "X-Radbridge-Job-Id": study.job_id,
        }
        if self.config.result == "callback":
            headers["X-Radbridge-Callback-Id"] = study.job_id
            headers["X-Radbridge-Callback-Token"] = self._registry.token(study.job_id)
        if self.config.mode == "multipart":
            return await self._http.request("POST", self._url, step="upload", body=body.stream, headers=headers)
        answer = await self._http.request(
            "POST", self._url, step="stow", body=body.stream, headers=headers, also=(409,)
        )
        self._check_stow(answer, len(study.instances))
        return answer

    def _check_stow(self, answer: Answer, sent: int) -> None:
        """200: all stored. 202 (some failed, or warnings) and 409 (none stored): read the failures."""
        if answer.status not in (202, 409):
            return
        where = f"{self._what}: stow"
        document: Any = load_json(answer.body, where) if answer.body else {}
        failed = document.get(_FAILED_SOP_SEQUENCE) if isinstance(document, dict) else None
        items = failed.get("Value") if isinstance(failed, dict) else None
        reasons = [_reason(item) for item in items] if isinstance(items, list) else []
        if answer.status == 409 and not reasons:
            raise PermanentError(f"{where}: store refused the study (409)")
        if reasons:
            permanent = [r for r in reasons if not _transient_failure(r)]
            reason = (permanent or reasons)[0]
            message = f"{where}: {len(reasons)} of {sent} instances not stored (reason {reason:#06x})"
            raise (PermanentError if permanent else RetryableError)(message)

    def _result_url(self, answer: Answer) -> httpx.URL:
        named = answer.headers.get("location")
        if named is None and answer.body:
            document = load_json(answer.body, f"{self._what}: upload")
            named = document.get("result_url") if isinstance(document, dict) else None
        if not isinstance(named, str) or not named:
            raise PermanentError(f"{self._what}: upload answer names no result URL (Location or result_url)")
        url = answer.url.join(named)
        if url.copy_with(path="/", query=None, fragment=None) != self._origin:
            raise PermanentError(f"{self._what}: result URL is on another origin than the model server")
        return url

    async def _poll(self, url: httpx.URL, job_id: str) -> ModelOutput:
        headers = {"Accept": "application/json", "X-Radbridge-Job-Id": job_id}
        while True:
            await asyncio.sleep(self.config.poll_s)
            try:
                answer = await self._http.request("GET", str(url), step="poll", headers=headers)
            except RetryableError:
                continue  # the model server is busy or restarting: keep polling until timeout_s
            if answer.status == 200:
                return self._output(answer.body, job_id, "poll")
